//! Referrers: the native API when the upstream has it, otherwise the
//! referrers tag schema (`<alg>-<hex>` tag holding an index), so signatures
//! and SBOMs can be discovered through the proxy either way.

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::Value;

use super::manifest::Staleness;
use super::{Error, Proxy, Target};
use crate::oci::json;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, Reference};
use crate::upstream;

/// At most this many pages of an upstream referrers list are followed.
const MAX_PAGES: usize = 16;
/// At most this many descriptors are returned.
const MAX_DESCRIPTORS: usize = 4096;
/// Fallback entries whose `artifactType` is read from their manifest.
const MAX_ENRICHED: usize = 128;
/// Referrer manifests read at once while enriching a fallback listing.
const ENRICH_CONCURRENCY: usize = 8;
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Whether a fallback listing's generic `artifactType`s are read from the
/// referrers (the client endpoint) or left as listed (signature discovery,
/// which reads every referrer anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Enrich {
    ArtifactType,
    No,
}

/// The referrers index for the client.
#[derive(Debug, Clone)]
pub struct ReferrersServed {
    pub body: Bytes,
    /// Whether an `artifactType` filter was applied (`OCI-Filters-Applied`).
    pub filtered: bool,
}

impl Proxy {
    /// `GET /v2/<name>/referrers/<digest>[?artifactType=]`.
    pub async fn referrers(
        &self,
        target: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersServed, Error> {
        let mut descriptors = self.list_referrers(target, subject, Enrich::ArtifactType).await?;
        if let Some(wanted) = artifact_type {
            descriptors.retain(|d| d.get("artifactType").and_then(Value::as_str) == Some(wanted));
        }
        descriptors.truncate(MAX_DESCRIPTORS);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        });
        let body = serde_json::to_vec(&index).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(ReferrersServed {
            body: body.into(),
            filtered: artifact_type.is_some(),
        })
    }

    /// The valid descriptors of `subject`'s referrers: the native API, else
    /// the fallback index (whose generic `artifactType`s are filled in from
    /// the referrers themselves when `enrich` asks for it).
    pub(super) async fn list_referrers(
        &self,
        target: &Target,
        subject: &Digest,
        enrich: Enrich,
    ) -> Result<Vec<Value>, Error> {
        let descriptors = match target.registry.referrers(&target.repo, subject).await? {
            Some(first) => self.native_referrers(target, first).await?,
            None => self.fallback_referrers(target, subject, enrich).await?,
        };
        Ok(descriptors.into_iter().filter(valid_descriptor).collect())
    }

    async fn native_referrers(&self, target: &Target, first: upstream::TagsPage) -> Result<Vec<Value>, Error> {
        let mut all = Vec::new();
        let mut page = first;
        for _ in 0..MAX_PAGES {
            all.extend(index_manifests(&page.body)?);
            if all.len() >= MAX_DESCRIPTORS {
                break;
            }
            let Some(next) = page.link.as_deref().and_then(link_target) else {
                break;
            };
            page = target.registry.get_link(&target.repo, &next).await?;
        }
        Ok(all)
    }

    /// The tag schema: the index tagged `<alg>-<hex>`, fetched and verified
    /// through the ordinary manifest path. No such tag: no referrers.
    async fn fallback_referrers(&self, target: &Target, subject: &Digest, enrich: Enrich) -> Result<Vec<Value>, Error> {
        let Ok(tag) = subject.tag_form().parse() else {
            return Ok(Vec::new());
        };
        let listed = match self
            .fetch_manifest(target, &Reference::Tag(tag), None, Staleness::FreshOnly)
            .await
        {
            Ok(served) if served.manifest.media_type().is_index() => index_manifests(served.manifest.bytes())?,
            Ok(_) => return Ok(Vec::new()),
            Err(Error::Upstream(e)) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if enrich == Enrich::No {
            return Ok(listed);
        }
        // Enrichment reads referrer manifests (verified, never stored before
        // admission), a few at a time and at most MAX_ENRICHED per listing.
        let enriched = futures_util::stream::iter(listed.into_iter().enumerate())
            .map(|(i, d)| async move {
                if i < MAX_ENRICHED {
                    self.with_artifact_type(target, d).await
                } else {
                    Ok(d)
                }
            })
            .buffered(ENRICH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        enriched.into_iter().collect()
    }

    /// Fallback indexes written by go-containerregistry carry the config
    /// media type (`application/vnd.oci.empty.v1+json`) as every entry's
    /// `artifactType` (cosign#4641). The referrers API reports the
    /// referrer's own `artifactType`, else its config media type: read it
    /// from the (verified) manifest itself.
    async fn with_artifact_type(&self, target: &Target, mut d: Value) -> Result<Value, Error> {
        let generic = match d.get("artifactType").and_then(Value::as_str) {
            None => true,
            Some(t) => t == EMPTY_CONFIG,
        };
        let Some(Ok(digest)) = d.get("digest").and_then(Value::as_str).map(str::parse::<Digest>) else {
            return Ok(d);
        };
        if !generic {
            return Ok(d);
        }
        let m = match self
            .fetch_manifest(target, &Reference::Digest(digest.clone()), None, Staleness::FreshOnly)
            .await
        {
            Ok(m) => m,
            // A referrer that fails verification is listed as the index
            // lists it; whoever fetches it will be refused.
            Err(e @ Error::Integrity { .. }) => {
                tracing::warn!(%digest, error = %e, "referrer failed verification; listed without enrichment");
                return Ok(d);
            }
            Err(e) => return Err(e),
        };
        let info = m.manifest.info();
        let artifact_type = info.artifact_type.clone().or_else(|| {
            (!info.media_type.is_index())
                .then(|| info.references.first().map(|c| c.media_type.clone()))
                .flatten()
        });
        if let (Some(t), Some(obj)) = (artifact_type, d.as_object_mut()) {
            obj.insert("artifactType".into(), Value::String(t));
        }
        Ok(d)
    }
}

fn index_manifests(body: &[u8]) -> Result<Vec<Value>, Error> {
    let bad = |message: String| Error::BadListing {
        what: "referrers index",
        message,
    };
    // One reading: a listing a Go client could read differently is refused.
    let node = json::check(body, &json::IMAGE_DOCUMENT).map_err(|e| bad(e.to_string()))?;
    let v = json::exact_reading(&node, &json::IMAGE_DOCUMENT);
    match v.get("manifests") {
        Some(Value::Array(items)) => Ok(items.clone()),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(bad("`manifests` is not an array".into())),
    }
}

/// A descriptor must carry a media type, a valid digest and a size.
fn valid_descriptor(d: &Value) -> bool {
    let media_type = d.get("mediaType").and_then(Value::as_str).is_some();
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .is_some_and(|s| s.parse::<Digest>().is_ok());
    let size = d.get("size").and_then(Value::as_u64).is_some();
    media_type && digest && size
}

/// `</v2/...>; rel="next"` → `/v2/...`.
fn link_target(link: &str) -> Option<String> {
    let start = link.find('<')? + 1;
    let end = link[start..].find('>')? + start;
    link[end..]
        .contains("rel=\"next\"")
        .then(|| link[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        assert_eq!(
            link_target(r#"</v2/a/referrers/sha256:x?n=1&last=y>; rel="next""#),
            Some("/v2/a/referrers/sha256:x?n=1&last=y".into())
        );
        assert_eq!(link_target("<x>; rel=\"prev\""), None);
    }
}
