//! `GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`
//!
//! Spec: "the registry MUST return a 200 response with an image index" —
//! empty when nothing refers to the digest — and set `OCI-Filters-Applied:
//! artifactType` when it filtered. Upstreams without the API are read
//! through the referrers tag schema.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use super::body::{ResponseBody, full};
use super::error::ApiError;
use super::route::query_param;
use crate::oci::Digest;
use crate::oci::manifest::OCI_INDEX;
use crate::proxy::{Proxy, Target};
use crate::telemetry::AccessRecord;

pub async fn serve(
    proxy: &Proxy,
    query: Option<&str>,
    target: &Target,
    subject: &Digest,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    record.digest = Some(subject.clone());
    let artifact_type = query_param(query, "artifactType");
    let served = proxy.referrers(target, subject, artifact_type.as_deref()).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX))
        .header(CONTENT_LENGTH, served.body.len());
    if served.filtered {
        resp = resp.header("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    resp.body(full(served.body))
        .map_err(|e| ApiError::internal(e.to_string()))
}
