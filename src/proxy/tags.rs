//! Tag listing, passed through with the client-visible name and paginated
//! by the proxy when the upstream ignores `n`.

use bytes::Bytes;

use super::{Error, Proxy, Target};

/// A page of tags for the client.
#[derive(Debug, Clone)]
pub struct TagsServed {
    /// `{"name": <client name>, "tags": [...]}`.
    pub body: Bytes,
    /// The last tag of this page when more follow (for the `Link` header).
    pub next_last: Option<String>,
}

#[derive(serde::Deserialize)]
struct UpstreamTags {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(serde::Serialize)]
struct ClientTags<'a> {
    name: &'a str,
    tags: &'a [String],
}

impl Proxy {
    /// `GET /v2/<name>/tags/list[?n=&last=]`.
    pub async fn tags(&self, target: &Target, n: Option<usize>, last: Option<&str>) -> Result<TagsServed, Error> {
        let page = target.registry.tags(&target.repo, n, last).await?;
        let parsed: UpstreamTags = serde_json::from_slice(&page.body).map_err(|e| Error::BadListing {
            what: "tag list",
            message: e.to_string(),
        })?;
        let mut tags = parsed.tags.unwrap_or_default();
        // The spec orders tags lexically; an upstream that does not is fixed
        // here so that `last` pagination stays consistent.
        tags.sort_unstable();
        if let Some(last) = last {
            tags.retain(|t| t.as_str() > last);
        }
        let mut more = page.link.is_some();
        if let Some(n) = n
            && tags.len() > n
        {
            tags.truncate(n);
            more = true;
        }
        let next_last = if more && n.is_some() {
            tags.last().cloned()
        } else {
            None
        };
        let body = serde_json::to_vec(&ClientTags {
            name: &target.client_name,
            tags: &tags,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(TagsServed {
            body: body.into(),
            next_last,
        })
    }
}
