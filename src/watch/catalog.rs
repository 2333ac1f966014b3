//! The repositories of a glob target: the upstream's `/v2/_catalog`,
//! followed page by page, filtered by the glob, bounded by
//! `maxRepositories`.

use super::WatchError;
use crate::oci::RepoName;
use crate::policy::glob::Glob;
use crate::upstream::Registry;

/// Repository names asked for per page.
const PAGE: usize = 1_000;
/// Catalog pages read per round at most (the catalog of a large registry
/// is not walked to the end for one glob).
const MAX_PAGES: usize = 100;

#[derive(serde::Deserialize)]
struct Listing {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

/// At most `max` repositories of `registry` whose name matches `glob`.
pub(super) async fn matching(registry: &Registry, glob: &Glob, max: usize) -> Result<Vec<RepoName>, WatchError> {
    let mut out: Vec<RepoName> = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = registry.catalog(Some(PAGE), last.as_deref()).await?;
        let names = serde_json::from_slice::<Listing>(&page.body)
            .map_err(|e| WatchError::BadListing(e.to_string()))?
            .repositories
            .unwrap_or_default();
        let next = names.iter().max().cloned();
        for name in names.iter().filter(|n| glob.matches(n)) {
            match name.parse::<RepoName>() {
                Ok(repo) if !out.contains(&repo) => out.push(repo),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(repository = %name.escape_debug(), "catalog listed an invalid repository name")
                }
            }
            if out.len() >= max {
                tracing::warn!(
                    glob = glob.as_str(),
                    max,
                    "more repositories than watch maxRepositories; watching the first"
                );
                return Ok(out);
            }
        }
        if page.link.is_none() || next.is_none() || next <= last {
            break;
        }
        last = next;
    }
    Ok(out)
}
