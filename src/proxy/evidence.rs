//! Evidence for admission: find an image's signatures and attestations
//! through the proxy's own upstream client, and verify each candidate
//! against the authorities a rule names.
//!
//! Discovery reads the referrers API (or its `sha256-<hex>` fallback index)
//! for Sigstore bundles and the legacy `sha256-<hex>.sig`/`.att` tags, in
//! parallel, bounded in count, size and time; every blob must match its
//! descriptor. A 404 means "none"; any other failure aborts, and so denies
//! without caching.

use crate::telemetry::Metrics;
use crate::telemetry::metrics::SignatureFormat;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::HeaderValue;

use super::admission;
use super::manifest::Staleness;
use super::referrers::Enrich;
use super::{Error, Proxy, Target};
use crate::oci::manifest::{DEFAULT_ACCEPT, MAX_MANIFEST_BYTES};
use crate::oci::material::{MAX_MATERIAL_BYTES, MaterialKind};
use crate::oci::{Descriptor, Digest, Reference, Tag};
use crate::policy::{self, Evidence, PolicySet, Rule, RuleAction};
use crate::verify::signature::check::{self, LegacyLayer, SigError};
use crate::verify::{self, BlobVerifier, IntegrityError, VerifiedManifest};

/// Most candidate layers examined per image.
const MAX_CANDIDATES: usize = 64;
/// Most referrer manifests examined per image.
const MAX_REFERRERS: usize = 32;
/// Material blobs fetched at once per discovery.
const BLOB_CONCURRENCY: usize = 8;
/// Most discarded-candidate notes kept for a denial's reasons.
const MAX_NOTES: usize = 8;
/// Time budget for discovering verification material.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Proxy {
    /// Find and verify the signatures and attestations of `digest` for the
    /// authorities `rule` names. Returns the evidence and, for denials, notes
    /// on what was found but did not verify or was discarded.
    pub(super) async fn collect_evidence(
        &self,
        target: &Target,
        digest: &Digest,
        rule: &Rule,
        policy: &PolicySet,
    ) -> Result<(Evidence, Vec<String>), Error> {
        let RuleAction::Verify(req) = &rule.action else {
            return Ok((Evidence::default(), Vec::new()));
        };
        let want_attestations = !req.attestations.is_empty();
        let (candidates, mut discarded) = tokio::time::timeout(
            DISCOVERY_TIMEOUT,
            self.discover(target, digest, &rule.formats, want_attestations),
        )
        .await
        .map_err(|_| Error::Internal(format!("discovering signatures took longer than {DISCOVERY_TIMEOUT:?}")))??;
        let mut names: BTreeSet<&String> = BTreeSet::new();
        if let Some(s) = &req.signatures {
            names.extend(s.any_of.iter());
        }
        for a in &req.attestations {
            names.extend(a.authorities.iter());
        }
        let authorities: Vec<_> = names
            .iter()
            .filter_map(|n| policy.authorities.get(*n).cloned())
            .collect();
        let image = digest.clone();
        let found = candidates.len();
        let metrics = self.metrics.clone();
        let (evidence, mut notes) =
            tokio::task::spawn_blocking(move || verify_all(&candidates, &image, &authorities, &metrics))
                .await
                .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?;
        if found == 0 {
            notes.insert(0, "no signatures or attestations found".into());
        }
        discarded.truncate(MAX_NOTES);
        notes.extend(discarded);
        Ok((evidence, notes))
    }

    /// Collect candidate signatures/attestations through the proxy's own
    /// upstream client: referrers (API or `sha256-<hex>` index) for bundles,
    /// `sha256-<hex>.sig`/`.att` for the legacy scheme, all at once (cold
    /// admission is bound by upstream round trips). A 404 means "none"; a
    /// candidate that fails verification or is ambiguous is discarded with
    /// a note (a pusher must not get a signed image refused by adding one bad
    /// document beside it); an upstream failure aborts, and so denies,
    /// uncached, with no stale fallback.
    async fn discover(
        &self,
        target: &Target,
        digest: &Digest,
        formats: &[policy::Format],
        attestations: bool,
    ) -> Result<(Vec<Candidate>, Vec<String>), Error> {
        let bundles = async {
            if formats.contains(&policy::Format::Bundle) {
                self.discover_bundles(target, digest).await
            } else {
                Ok(Found::default())
            }
        };
        let legacy = |suffix: &'static str, wanted: bool| async move {
            if wanted && formats.contains(&policy::Format::Legacy) {
                self.discover_legacy(target, digest, suffix).await
            } else {
                Ok(Found::default())
            }
        };
        let (bundles, sig, att) = tokio::join!(bundles, legacy("sig", true), legacy("att", attestations));
        let mut found = bundles?;
        found.merge(sig?);
        found.merge(att?);
        found.candidates.truncate(MAX_CANDIDATES);
        Ok((found.candidates, found.discarded))
    }

    /// Sigstore bundles attached as referrers (API or fallback index).
    async fn discover_bundles(&self, target: &Target, digest: &Digest) -> Result<Found, Error> {
        let mut found = Found::default();
        let listed = match self.list_referrers(target, digest, Enrich::No).await {
            Ok(listed) => listed,
            // The fallback index is pushed like any manifest: an ambiguous
            // or broken one is discarded, not a reason to refuse.
            Err(e @ (Error::Integrity { .. } | Error::BadListing { .. })) => {
                found.discard(format!("referrers of {digest}"), &e);
                return Ok(found);
            }
            Err(e) => return Err(e),
        };
        let referrers: Vec<Digest> = listed
            .iter()
            .filter_map(|d| d.get("digest")?.as_str()?.parse().ok())
            .take(MAX_REFERRERS)
            .collect();
        let fetched = futures_util::future::join_all(referrers.iter().map(|r| async move {
            let reference = Reference::Digest(r.clone());
            (
                r,
                self.fetch_manifest(target, &reference, None, Staleness::FreshOnly)
                    .await,
            )
        }))
        .await;
        let mut layers = Vec::new();
        for (r, result) in fetched {
            match result {
                Ok(m) if admission::is_kind(m.manifest.info(), MaterialKind::SigstoreBundle) => {
                    let source = format!("bundle in referrer {r}");
                    layers.extend(m.manifest.info().layers().iter().map(|l| (source.clone(), l.clone())));
                }
                // Other referrers (SBOMs, attestations of other formats, or
                // look-alikes that are not material by shape) carry no bundle.
                Ok(_) => {}
                Err(e @ Error::Integrity { .. }) => found.discard(format!("referrer {r}"), &e),
                Err(e) => return Err(e),
            }
        }
        let blobs = self.material_blobs(target, layers).await?;
        for (source, _, result) in blobs {
            match result {
                Ok(json) => found.candidates.push(Candidate::Bundle { source, json }),
                Err(e) => found.discard(source, &e),
            }
        }
        Ok(found)
    }

    /// Legacy cosign `sha256-<hex>.<suffix>` layers (`sig`: simple-signing
    /// payloads, `att`: DSSE envelopes). The tag is read with one `GET` (no
    /// `HEAD` first): the bytes are hashed, and any digest the upstream
    /// claims must agree.
    async fn discover_legacy(&self, target: &Target, digest: &Digest, suffix: &'static str) -> Result<Found, Error> {
        let mut found = Found::default();
        let Ok(tag) = format!("{}.{suffix}", digest.tag_form()).parse::<Tag>() else {
            return Ok(found);
        };
        let m = match self.material_by_tag(target, &tag).await {
            Ok(m) => m,
            Err(Error::Upstream(e)) if e.is_not_found() => return Ok(found),
            Err(e @ Error::Integrity { .. }) => {
                found.discard(tag.to_string(), &e);
                return Ok(found);
            }
            Err(e) => return Err(e),
        };
        let kind = if suffix == "sig" {
            MaterialKind::LegacySignature
        } else {
            MaterialKind::LegacyAttestation
        };
        if !admission::is_kind(m.info(), kind) {
            found
                .discarded
                .push(format!("{tag}: not a cosign {suffix} manifest by shape; ignored"));
            return Ok(found);
        }
        let layers = m
            .info()
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("{tag} layer {i}"), l.clone()))
            .collect();
        for (source, layer, result) in self.material_blobs(target, layers).await? {
            match result {
                Ok(blob) => found.candidates.push(Candidate::Legacy {
                    source,
                    media_type: layer.media_type,
                    blob,
                    annotations: layer.annotations,
                }),
                Err(e) => found.discard(source, &e),
            }
        }
        Ok(found)
    }

    /// A legacy material tag, fetched fresh with one GET and verified by
    /// the digest of its bytes. Never stored: it is not admitted.
    async fn material_by_tag(&self, target: &Target, tag: &Tag) -> Result<VerifiedManifest, Error> {
        let _slot = self.manifest_load_slot().await?;
        let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
        let unverified = target
            .registry
            .get_manifest(&target.repo, &Reference::Tag(tag.clone()), &accept, MAX_MANIFEST_BYTES)
            .await?;
        let named = unverified.claimed_digest.clone();
        verify::manifest::check_computed(unverified).map_err(|source| Error::Integrity {
            digest: named.unwrap_or_else(|| Digest::of(crate::oci::Algorithm::Sha256, tag.as_str().as_bytes())),
            source,
        })
    }

    /// Fetch material blobs concurrently (bounded). Per blob, an integrity
    /// failure is that candidate's result; an upstream failure aborts.
    async fn material_blobs(
        &self,
        target: &Target,
        layers: Vec<(String, Descriptor)>,
    ) -> Result<Vec<(String, Descriptor, Result<Bytes, Error>)>, Error> {
        let results = futures_util::stream::iter(layers.into_iter().take(MAX_CANDIDATES))
            .map(|(source, layer)| async move {
                let result = self.material_blob(target, &layer).await;
                (source, layer, result)
            })
            .buffered(BLOB_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for (source, layer, result) in results {
            match result {
                Err(e @ Error::Upstream(_)) => return Err(e),
                other => out.push((source, layer, other)),
            }
        }
        Ok(out)
    }

    /// A small blob, read whole and checked against its descriptor.
    async fn material_blob(&self, target: &Target, layer: &Descriptor) -> Result<Bytes, Error> {
        if layer.size > MAX_MATERIAL_BYTES {
            return Err(Error::Integrity {
                digest: layer.digest.clone(),
                source: IntegrityError::TooLarge {
                    limit: MAX_MATERIAL_BYTES,
                },
            });
        }
        let mut resp = target.registry.get_blob(&target.repo, &layer.digest).await?;
        let mut verifier = BlobVerifier::new(layer.digest.clone(), Some(layer.size));
        let mut buf = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0));
        while let Some(chunk) = resp.next_chunk().await? {
            verifier.update(&chunk).map_err(|source| Error::Integrity {
                digest: layer.digest.clone(),
                source,
            })?;
            buf.extend_from_slice(&chunk);
        }
        verifier.finish().map_err(|source| Error::Integrity {
            digest: layer.digest.clone(),
            source,
        })?;
        Ok(buf.into())
    }
}

/// Where an image's verification material lives, for copying it elsewhere
/// (`portcullis promote`): tags of the legacy and fallback schemes that
/// exist, and the referrers listed (API or fallback index). The same
/// lookups admission's discovery makes; nothing here is verified yet.
#[derive(Debug, Default, Clone)]
pub struct MaterialRefs {
    /// `sha256-<hex>.sig|.att|.sbom` and the `sha256-<hex>` fallback index,
    /// each with the digest the source names for it now.
    pub tags: Vec<(Tag, Digest)>,
    /// Referrer manifests of the image.
    pub referrers: Vec<Digest>,
}

/// The legacy cosign tag suffixes, and `None` for the referrers fallback tag.
const MATERIAL_TAG_SUFFIXES: [Option<&str>; 4] = [Some("sig"), Some("att"), Some("sbom"), None];

impl Proxy {
    /// Every piece of verification material `target` holds for `digest`:
    /// the legacy and fallback tags (a `HEAD` each; 404: absent) and the
    /// referrers as [`Self::list_referrers`] finds them for discovery.
    pub async fn material_refs(&self, target: &Target, digest: &Digest) -> Result<MaterialRefs, Error> {
        let mut refs = MaterialRefs::default();
        let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
        for suffix in MATERIAL_TAG_SUFFIXES {
            let name = match suffix {
                Some(s) => format!("{}.{s}", digest.tag_form()),
                None => digest.tag_form(),
            };
            let Ok(tag) = name.parse::<Tag>() else { continue };
            let reference = Reference::Tag(tag.clone());
            match target.registry.head_manifest(&target.repo, &reference, &accept).await {
                Ok(head) => match head.digest {
                    Some(d) => refs.tags.push((tag, d)),
                    None => {
                        return Err(Error::BadListing {
                            what: "material tag",
                            message: format!("HEAD of {tag} named no digest"),
                        });
                    }
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let listed = self.list_referrers(target, digest, Enrich::No).await?;
        refs.referrers = listed
            .iter()
            .filter_map(|d| d.get("digest")?.as_str()?.parse().ok())
            .take(MAX_REFERRERS)
            .collect();
        Ok(refs)
    }
}

/// What discovery found: candidates to verify, and what it discarded.
#[derive(Default)]
struct Found {
    candidates: Vec<Candidate>,
    discarded: Vec<String>,
}

impl Found {
    fn merge(&mut self, other: Found) {
        self.candidates.extend(other.candidates);
        self.discarded.extend(other.discarded);
    }

    fn discard(&mut self, what: String, why: &Error) {
        tracing::info!(%what, error = %why, "verification material discarded");
        self.discarded.push(format!("{what} discarded: {why}"));
    }
}

/// A signature or attestation found for an image.
enum Candidate {
    Legacy {
        source: String,
        media_type: String,
        blob: Bytes,
        annotations: BTreeMap<String, String>,
    },
    Bundle {
        source: String,
        json: Bytes,
    },
}

/// Verify every candidate against every authority (CPU work, blocking pool).
fn verify_all(
    candidates: &[Candidate],
    image: &Digest,
    authorities: &[Arc<policy::Authority>],
    metrics: &Metrics,
) -> (Evidence, Vec<String>) {
    let mut evidence = Evidence::default();
    let mut notes = Vec::new();
    for c in candidates {
        for a in authorities {
            let started = std::time::Instant::now();
            let (format, source, result) = match c {
                Candidate::Legacy {
                    source,
                    media_type,
                    blob,
                    annotations,
                } => {
                    let layer = LegacyLayer {
                        media_type,
                        blob,
                        annotations,
                    };
                    (SignatureFormat::Legacy, source, check::verify_legacy(&layer, image, a))
                }
                Candidate::Bundle { source, json } => {
                    (SignatureFormat::Bundle, source, check::verify_bundle(json, image, a))
                }
            };
            metrics.signature_checked(format, started.elapsed());
            // Each proof is recorded with its signer: thresholds count
            // distinct signers, not the authorities that accepted them.
            match result {
                Ok(proof) if proof.is_signature() => {
                    evidence.signatures.push(policy::VerifiedSignature {
                        authority: a.name.clone(),
                        source: format!("{source} signed by {}", proof.signer),
                        signer: proof.signer_id,
                    });
                }
                Ok(proof) => {
                    if let Some((predicate_type, statement)) = proof.statement {
                        evidence.attestations.push(policy::VerifiedAttestation {
                            authority: a.name.clone(),
                            signer: proof.signer_id,
                            predicate_type,
                            statement,
                        });
                    }
                }
                Err(e) => {
                    if notes.len() < 8 && !matches!(e, SigError::BadSignature(_)) {
                        notes.push(format!("{source} for `{}`: {e}", a.name));
                    }
                }
            }
        }
    }
    (evidence, notes)
}
