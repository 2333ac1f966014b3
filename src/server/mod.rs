//! The registry HTTP surface: accept (plain or TLS), route, authenticate and
//! authorize (`gate`, `/token`), dispatch to the proxy, render errors as OCI
//! JSON, and log one line per request.
//!
//! Imports: `oci`, `config`, `telemetry`, `auth`, `proxy` (and the error
//! enums it re-exports).

mod admin;
mod blobs;
pub mod body;
mod conn_limit;
mod error;
mod gate;
mod listen;
mod manifests;
mod peers;
mod preface_deadline;
mod referrers;
mod reload;
pub mod route;
mod tags;
mod tls;
mod token;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use rustls_pki_types::CertificateDer;

pub use error::ApiError;
pub use listen::{ListenError, Server};

use body::{BoxError, Logged, ResponseBody, empty, full};
use route::{Endpoint, Route};

use crate::auth::{Auth, Identity};
use crate::proxy::Proxy;
use crate::telemetry::metrics::RouteKind;
use crate::telemetry::{AccessRecord, CacheOutcome};

pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const API_VERSION: &str = "docker-distribution-api-version";

/// One client connection: its address, whether it is TLS, and the identity
/// of the client certificate it presented (verified against
/// `auth.clientCA` during the handshake).
#[derive(Debug)]
pub struct Peer {
    pub addr: String,
    pub tls: bool,
    pub cert: Option<Identity>,
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer {
            addr: addr.to_string(),
            tls: false,
            cert: None,
        }
    }

    /// A TLS peer; `certs` is the verified chain, end entity first.
    pub fn tls(addr: SocketAddr, certs: Option<&[CertificateDer<'_>]>) -> Peer {
        Peer {
            addr: addr.to_string(),
            tls: true,
            cert: certs
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::cert_identity(c)),
        }
    }
}

/// What a request is handled with.
struct Ctx<'a> {
    proxy: &'a Proxy,
    auth: Option<&'a Arc<Auth>>,
    peer: &'a Peer,
}

/// Handle one request. Never fails: every error becomes an OCI error body.
pub async fn handle<B>(
    proxy: Arc<Proxy>,
    auth: Option<Arc<Auth>>,
    req: Request<B>,
    peer: Arc<Peer>,
) -> Result<Response<Logged>, Infallible>
where
    B: http_body::Body + Send,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let mut record = AccessRecord {
        client: peer.addr.clone(),
        identity: "-".to_owned(),
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
    let ctx = Ctx {
        proxy: &proxy,
        auth: auth.as_ref(),
        peer: &peer,
    };
    let mut resp = match dispatch(&ctx, &req, body, &mut record).await {
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
    ctx: &Ctx<'_>,
    req: &Request<()>,
    body: B,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body + Send,
    B::Error: Into<BoxError>,
{
    let proxy = ctx.proxy;
    let query = req.uri().query();
    match route::parse(
        req.method(),
        req.uri().path(),
        query,
        proxy.config(),
        proxy.registries(),
    )? {
        Route::Peer(request) => {
            record.route = RouteKind::Peer;
            peers::serve(proxy, req, request, record).await
        }
        Route::Token => {
            record.route = RouteKind::Token;
            token::serve(ctx, req, body, record).await
        }
        Route::Base => {
            record.route = RouteKind::Base;
            gate::base(ctx, req, record).await?;
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
            let who = gate::repository(ctx, req, &target, namespace.as_ref(), record).await?;
            let mut resp = match &endpoint {
                Endpoint::Manifest(reference) => manifests::serve(proxy, req, &target, reference, &who, record).await?,
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
    if let Some((name, value)) = e.challenge_header() {
        resp.headers_mut().insert(name, value);
    }
    resp
}

pub(crate) fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|_| ApiError::internal(format!("not a valid header value: {s}")))
}
