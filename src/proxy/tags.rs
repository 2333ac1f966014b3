//! Tag listing, passed through with the client-visible name and paginated
//! by the proxy when the upstream ignores `n`.

use bytes::Bytes;

use super::{Error, Proxy, Target};
use crate::oci::Tag;

/// A client's `n`: a decimal number of tags, at most [`PageSize::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize(usize);

impl PageSize {
    /// Larger requests get pages of this size (with a `Link` to the rest,
    /// which the distribution spec allows): the whole listing is held in
    /// memory and serialised per request.
    pub const MAX: usize = 10_000;

    /// `1*DIGIT`; numbers above the maximum (however long) are clamped to it.
    /// Signs, spaces, hex and empty values are refused.
    pub fn parse(digits: &str) -> Option<PageSize> {
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = digits.parse::<usize>().unwrap_or(usize::MAX);
        Some(PageSize(n.min(Self::MAX)))
    }

    pub fn get(self) -> usize {
        self.0
    }
}

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
    pub async fn tags(&self, target: &Target, n: Option<PageSize>, last: Option<&Tag>) -> Result<TagsServed, Error> {
        // Both are validated, ASCII-only values: forwarding them re-encodes
        // exactly what the client asked for.
        let (n, last) = (n.map(PageSize::get), last.map(Tag::as_str));
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

#[cfg(test)]
mod tests {
    use super::PageSize;

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::parse("0").map(PageSize::get), Some(0));
        assert_eq!(PageSize::parse("25").map(PageSize::get), Some(25));
        assert_eq!(PageSize::parse("10001").map(PageSize::get), Some(PageSize::MAX));
        assert_eq!(
            PageSize::parse("99999999999999999999999999").map(PageSize::get),
            Some(PageSize::MAX)
        );
        for refused in ["", "-1", "+1", " 1", "1 ", "0x10", "1e3", "1.0", "١"] {
            assert_eq!(PageSize::parse(refused), None, "{refused:?}");
        }
    }
}
