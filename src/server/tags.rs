//! `GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`
//!
//! Spec: tags in lexical order; with `n`, at most `n` tags and a
//! `Link: <…>; rel="next"` header when more follow. `n` must be a decimal
//! number and `last` a tag, otherwise `400`: nothing else is forwarded.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderValue, Response, StatusCode};

use super::body::{ResponseBody, full};
use super::error::ApiError;
use super::header_value;
use super::route::query_param;
use crate::oci::{NameError, RegistryHost, Tag};
use crate::proxy::{PageSize, Proxy, Target};

/// Why a tag listing's query was refused.
#[derive(Debug, thiserror::Error)]
pub enum TagsQueryError {
    #[error("`n` must be a decimal number of tags, not `{0}`")]
    PageSize(String),
    #[error("`last` must be a tag: {0}")]
    Last(NameError),
}

/// The validated `n` and `last` of a listing.
#[derive(Debug, PartialEq, Eq)]
struct TagsQuery {
    n: Option<PageSize>,
    last: Option<Tag>,
}

impl TagsQuery {
    fn parse(query: Option<&str>) -> Result<TagsQuery, TagsQueryError> {
        let n = query_param(query, "n")
            .map(|n| PageSize::parse(&n).ok_or_else(|| TagsQueryError::PageSize(shown(&n))))
            .transpose()?;
        let last = query_param(query, "last")
            .map(|t| t.parse::<Tag>().map_err(TagsQueryError::Last))
            .transpose()?;
        Ok(TagsQuery { n, last })
    }
}

/// Client text in an error message, bounded.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

pub async fn serve(
    proxy: &Proxy,
    query: Option<&str>,
    target: &Target,
    namespace: Option<&RegistryHost>,
) -> Result<Response<ResponseBody>, ApiError> {
    let TagsQuery { n, last } = TagsQuery::parse(query)?;
    let served = proxy.tags(target, n, last.as_ref()).await?;
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(CONTENT_LENGTH, served.body.len());
    if let (Some(n), Some(next_last)) = (n, &served.next_last) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("n", &n.get().to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_validated() {
        let q = TagsQuery::parse(Some("n=5&last=v1.2")).expect("valid");
        assert_eq!(q.n.map(PageSize::get), Some(5));
        assert_eq!(q.last.as_ref().map(Tag::as_str), Some("v1.2"));
        assert_eq!(TagsQuery::parse(None).expect("none"), TagsQuery { n: None, last: None });
        assert!(matches!(
            TagsQuery::parse(Some("n=-1")),
            Err(TagsQueryError::PageSize(_))
        ));
        assert!(matches!(TagsQuery::parse(Some("n=")), Err(TagsQueryError::PageSize(_))));
        assert!(matches!(
            TagsQuery::parse(Some("n=ten")),
            Err(TagsQueryError::PageSize(_))
        ));
        // Percent-decoding must not smuggle anything past the tag grammar:
        // invalid UTF-8 decodes lossily to U+FFFD, which no tag contains.
        for last in [
            "last=%FF",
            "last=a%2Fb",
            "last=",
            "last=.hidden",
            "last=a%20b",
            "last=%2E%2E",
        ] {
            assert!(
                matches!(TagsQuery::parse(Some(last)), Err(TagsQueryError::Last(_))),
                "{last}"
            );
        }
    }
}
