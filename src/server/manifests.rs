//! `GET`/`HEAD /v2/<name>/manifests/<reference>`
//!
//! Spec: "The `Docker-Content-Digest` header MUST be returned" for manifests
//! (distribution-spec main, PR #595); `Content-Type` is the manifest's media
//! type. The bytes are a `VerifiedManifest`'s, verbatim: this handler cannot
//! obtain any others.

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ETAG, WARNING};
use http::{HeaderValue, Request, Response, StatusCode};

use super::body::{ResponseBody, empty, full};
use super::error::ApiError;
use super::{DOCKER_CONTENT_DIGEST, header_value};
use crate::oci::Reference;
use crate::proxy::{Proxy, Target};
use crate::telemetry::{AccessRecord, Requester};

pub async fn serve<B>(
    proxy: &Proxy,
    req: &Request<B>,
    target: &Target,
    reference: &Reference,
    who: &Requester,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    let accept = combined_accept(req);
    let served = proxy.manifest(target, reference, accept.as_ref(), who).await?;
    let m = &served.manifest;
    record.digest = Some(m.digest().clone());
    record.cache = served.cache;
    let digest = header_value(&m.digest().to_string())?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, HeaderValue::from_static(m.media_type().as_str()))
        .header(CONTENT_LENGTH, m.bytes().len())
        .header(DOCKER_CONTENT_DIGEST, digest)
        .header(ETAG, header_value(&format!("\"{}\"", m.digest()))?);
    if let Some(w) = &served.stale_warning {
        let text = w.replace(['"', '\\'], "'");
        resp = resp.header(WARNING, header_value(&format!("299 - \"{text}\""))?);
    }
    let body = if req.method() == http::Method::HEAD {
        empty()
    } else {
        full(m.bytes().clone())
    };
    resp.body(body).map_err(|e| ApiError::internal(e.to_string()))
}

/// Clients may send several `Accept` headers; join them into one list.
fn combined_accept<B>(req: &Request<B>) -> Option<HeaderValue> {
    let values: Vec<&str> = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    HeaderValue::from_str(&values.join(", ")).ok()
}
