//! `GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`
//!
//! Spec: tags in lexical order; with `n`, at most `n` tags and a
//! `Link: <…>; rel="next"` header when more follow.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderValue, Response, StatusCode};

use super::body::{ResponseBody, full};
use super::error::ApiError;
use super::header_value;
use super::route::query_param;
use crate::oci::RegistryHost;
use crate::proxy::{Proxy, Target};

pub async fn serve(
    proxy: &Proxy,
    query: Option<&str>,
    target: &Target,
    namespace: Option<&RegistryHost>,
) -> Result<Response<ResponseBody>, ApiError> {
    let n = query_param(query, "n").and_then(|n| n.parse::<usize>().ok());
    let last = query_param(query, "last");
    let served = proxy.tags(target, n, last.as_deref()).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(CONTENT_LENGTH, served.body.len());
    if let (Some(n), Some(next_last)) = (n, &served.next_last) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("n", &n.to_string());
        q.append_pair("last", next_last);
        if let Some(ns) = namespace {
            q.append_pair("ns", ns.as_str());
        }
        let link = format!("</v2/{}/tags/list?{}>; rel=\"next\"", target.client_name, q.finish());
        resp = resp.header(LINK, header_value(&link)?);
    }
    resp.body(full(served.body))
        .map_err(|e| ApiError::internal(e.to_string()))
}
