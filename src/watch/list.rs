//! The tags of an `allTags` target: the upstream's `tags/list`, followed
//! page by page (`n`, `last`), bounded by the target's `maxTags`.

use super::WatchError;
use crate::oci::Tag;
use crate::proxy::Target;
use crate::upstream;

/// Tags asked for per page.
const PAGE: usize = 1_000;

#[derive(serde::Deserialize)]
struct Listing {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// At most `max` tags of `target`, sorted, without cosign's material tags.
/// A repository the upstream does not know has none. Names that are not valid tags are skipped (logged);
/// tags past `max` are left unwatched (logged).
pub(super) async fn all_tags(target: &Target, max: usize) -> Result<Vec<Tag>, WatchError> {
    let mut out: Vec<Tag> = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = match target.registry.tags(&target.repo, Some(PAGE), last.as_deref()).await {
            Ok(p) => p,
            Err(upstream::Error::NotFound { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let names = serde_json::from_slice::<Listing>(&page.body)
            .map_err(|e| WatchError::BadListing(e.to_string()))?
            .tags
            .unwrap_or_default();
        let next = names.iter().max().cloned();
        for name in names {
            if crate::oci::material::legacy_tag(&name).is_some() {
                // cosign's `sha256-<hex>.sig|.att|.sbom` (and the referrers
                // fallback): verification material, judged with its subject.
                continue;
            }
            let Ok(tag) = name.parse::<Tag>() else {
                tracing::warn!(repo = %target.repo, tag = %name.escape_debug(), "upstream listed an invalid tag; not watched");
                continue;
            };
            out.push(tag);
        }
        out.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        if out.len() > max {
            tracing::warn!(repo = %target.repo, max, "more tags than watch maxTags; watching the first in lexical order");
            out.truncate(max);
            break;
        }
        // Stop without a next page, or when the upstream ignores `last`.
        if page.link.is_none() || next.is_none() || next <= last {
            break;
        }
        last = next;
    }
    Ok(out)
}
