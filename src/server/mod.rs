//! The registry HTTP surface: accept (plain or TLS), route, dispatch to the
//! proxy, render errors as OCI JSON, and log one line per request.
//!
//! Imports: `oci`, `config`, `telemetry`, `proxy` (and the error enums it
//! re-exports).

mod admin;
mod blobs;
pub mod body;
mod conn_limit;
mod error;
mod listen;
mod manifests;
mod preface_deadline;
mod referrers;
mod reload;
pub mod route;
mod tags;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

pub use error::ApiError;
pub use listen::{ListenError, Server};

use body::{Logged, ResponseBody, empty, full};
use route::{Endpoint, Route};

use crate::proxy::Proxy;
use crate::telemetry::metrics::RouteKind;
use crate::telemetry::{AccessRecord, CacheOutcome};

pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const API_VERSION: &str = "docker-distribution-api-version";

/// Handle one request. Never fails: every error becomes an OCI error body.
/// `client` is the peer address, for audit events.
pub async fn handle<B>(proxy: Arc<Proxy>, req: Request<B>, client: String) -> Result<Response<Logged>, Infallible> {
    let started = Instant::now();
    let mut record = AccessRecord {
        method: req.method().clone(),
        path: req.uri().path().chars().take(512).collect(),
        route: RouteKind::Unrouted,
        upstream: None,
        digest: None,
        cache: CacheOutcome::None,
        status: 0,
        error: None,
    };
    let head = req.method() == Method::HEAD;
    let mut resp = match dispatch(&proxy, &req, &client, &mut record).await {
        Ok(r) => r,
        Err(e) => {
            if e.is_warning() {
                tracing::warn!(path = %record.path, code = e.code(), status = e.status().as_u16(), error = e.message(), "request failed");
            }
            record.error = Some(e.message().to_owned());
            render_error(&e, head)
        }
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    record.status = resp.status().as_u16();
    let metrics = proxy.metrics().clone();
    Ok(resp.map(|b| Logged::new(b, record, metrics, started)))
}

async fn dispatch<B>(
    proxy: &Proxy,
    req: &Request<B>,
    client: &str,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    let query = req.uri().query();
    match route::parse(
        req.method(),
        req.uri().path(),
        query,
        proxy.config(),
        proxy.registries(),
    )? {
        Route::Base => {
            record.route = RouteKind::Base;
            Ok(simple(
                StatusCode::OK,
                "application/json",
                "{}",
                req.method() == Method::HEAD,
            ))
        }
        Route::Repo {
            endpoint,
            target,
            namespace,
        } => {
            record.route = endpoint.kind();
            record.upstream = Some(target.registry.host().to_string());
            let mut resp = match &endpoint {
                Endpoint::Manifest(reference) => {
                    manifests::serve(proxy, req, &target, reference, client, record).await?
                }
                Endpoint::Blob(digest) => blobs::serve(proxy, req, &target, digest, record).await?,
                Endpoint::TagsList => tags::serve(proxy, query, &target, namespace.as_ref()).await?,
                Endpoint::Referrers(digest) => referrers::serve(proxy, query, &target, digest, record).await?,
            };
            if let Some(ns) = namespace {
                resp.headers_mut().insert("oci-namespace", header_value(ns.as_str())?);
            }
            Ok(resp)
        }
    }
}

fn simple(status: StatusCode, content_type: &'static str, body: &'static str, head: bool) -> Response<ResponseBody> {
    let mut resp = Response::new(if head { empty() } else { full(body) });
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

/// An OCI error response. HEAD responses carry the headers only.
pub(crate) fn render_error(e: &ApiError, head: bool) -> Response<ResponseBody> {
    let body = e.body();
    let len = body.len();
    let mut resp = Response::new(if head { empty() } else { full(body) });
    *resp.status_mut() = e.status();
    let (name, value) = ApiError::content_type();
    resp.headers_mut().insert(name, value);
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((name, value)) = e.retry_after_header() {
        resp.headers_mut().insert(name, value);
    }
    resp
}

pub(crate) fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|_| ApiError::internal(format!("not a valid header value: {s}")))
}
