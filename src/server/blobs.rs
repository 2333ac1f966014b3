//! `GET`/`HEAD /v2/<name>/blobs/<digest>`
//!
//! Spec: "A registry SHOULD support the Range request header" (single
//! ranges: 206 with `Content-Range`, 416 with `Content-Range: bytes */size`).
//! The body streams while hashed and is aborted, never completed, if the
//! upstream bytes do not match the digest.

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::body::{BoxError, ResponseBody, empty};
use super::error::ApiError;
use super::{DOCKER_CONTENT_DIGEST, header_value};
use crate::oci::Digest;
use crate::proxy::{self, ByteRange, Proxy, Target};
use crate::telemetry::AccessRecord;

pub async fn serve<B>(
    proxy: &Proxy,
    req: &Request<B>,
    target: &Target,
    digest: &Digest,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    record.digest = Some(digest.clone());
    let head = req.method() == http::Method::HEAD;
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse);
    let served = match proxy.blob(target, digest, range, head).await {
        Ok(s) => s,
        Err(proxy::Error::RangeNotSatisfiable { size }) => return Ok(unsatisfiable(size)),
        Err(e) => return Err(e.into()),
    };
    record.cache = served.cache;
    respond(digest, served)
}

/// The response for `served` (status, length, range, digest headers).
pub(super) fn respond(digest: &Digest, served: proxy::BlobServed) -> Result<Response<ResponseBody>, ApiError> {
    let (status, len) = match served.range {
        Some(slice) => (StatusCode::PARTIAL_CONTENT, slice.length()),
        None => (StatusCode::OK, served.size),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
        .header(CONTENT_LENGTH, len)
        .header(ACCEPT_RANGES, HeaderValue::from_static("bytes"))
        .header(DOCKER_CONTENT_DIGEST, header_value(&digest.to_string())?)
        .header(ETAG, header_value(&format!("\"{digest}\""))?);
    if let Some(slice) = served.range {
        let content_range = format!("bytes {}-{}/{}", slice.start(), slice.last(), served.size);
        resp = resp.header(CONTENT_RANGE, content_range);
    }
    let body = match served.body {
        Some(b) => b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync(),
        None => empty(),
    };
    resp.body(body).map_err(|e| ApiError::internal(e.to_string()))
}

fn unsatisfiable(size: u64) -> Response<ResponseBody> {
    let e = ApiError::from(proxy::Error::RangeNotSatisfiable { size });
    let mut resp = super::render_error(&e, false);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        resp.headers_mut().insert(CONTENT_RANGE, v);
    }
    resp
}
