//! Evidence for admission: find an image's signatures and attestations
//! through the proxy's own upstream client, and verify each candidate
//! against the authorities a rule names.
//!
//! Discovery reads the referrers API (or its `sha256-<hex>` fallback index)
//! for Sigstore bundles and the legacy `sha256-<hex>.sig`/`.att` tags, in
//! parallel, bounded in count, size and time; every blob must match its
//! descriptor. A 404 means "none"; any other failure aborts, and so denies
//! without caching.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Error, Proxy, Target};
use crate::oci::{Digest, Reference, Tag};
use crate::policy::{self, Evidence, PolicySet, Rule, RuleAction};
use crate::verify::signature::check::{self, LegacyLayer, SigError};
use crate::verify::{BlobVerifier, VerifiedManifest};

/// Largest signature/attestation/bundle blob fetched.
const MAX_MATERIAL_BYTES: u64 = 2 * 1024 * 1024;
/// Most candidate layers examined per image.
const MAX_CANDIDATES: usize = 64;
/// Most referrer manifests examined per image.
const MAX_REFERRERS: usize = 32;
/// Time budget for discovering verification material.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Proxy {
    /// Find and verify the signatures and attestations of `digest` for the
    /// authorities `rule` names. Returns the evidence and, for denials, notes
    /// on what was found but did not verify.
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
        let candidates = tokio::time::timeout(
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
        let (evidence, mut notes) = tokio::task::spawn_blocking(move || verify_all(&candidates, &image, &authorities))
            .await
            .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?;
        if found == 0 {
            notes.insert(0, "no signatures or attestations found".into());
        }
        Ok((evidence, notes))
    }

    /// Collect candidate signatures/attestations through the proxy's own
    /// upstream client: referrers (API or `sha256-<hex>` index) for bundles,
    /// `sha256-<hex>.sig`/`.att` for the legacy scheme. A 404 means "none";
    /// any other failure aborts (and so denies, uncached).
    async fn discover(
        &self,
        target: &Target,
        digest: &Digest,
        formats: &[policy::Format],
        attestations: bool,
    ) -> Result<Vec<Candidate>, Error> {
        // Both schemes are looked up at once: cold admission is bound by
        // upstream round trips, not by cryptography.
        let bundles = async {
            if formats.contains(&policy::Format::Bundle) {
                self.discover_bundles(target, digest).await
            } else {
                Ok(Vec::new())
            }
        };
        let legacy = async {
            if formats.contains(&policy::Format::Legacy) {
                self.discover_legacy(target, digest, attestations).await
            } else {
                Ok(Vec::new())
            }
        };
        let (bundles, legacy) = tokio::join!(bundles, legacy);
        let mut out = bundles?;
        out.extend(legacy?);
        out.truncate(MAX_CANDIDATES);
        Ok(out)
    }

    /// Sigstore bundles attached as referrers (API or fallback index).
    async fn discover_bundles(&self, target: &Target, digest: &Digest) -> Result<Vec<Candidate>, Error> {
        let mut out = Vec::new();
        let index = self.referrers(target, digest, None).await?;
        let listed: serde_json::Value =
            serde_json::from_slice(&index.body).map_err(|e| Error::Internal(e.to_string()))?;
        let manifests = listed["manifests"].as_array().cloned().unwrap_or_default();
        for d in manifests.iter().take(MAX_REFERRERS) {
            let Some(Ok(ref_digest)) = d["digest"].as_str().map(str::parse::<Digest>) else {
                continue;
            };
            let m = self
                .fetch_manifest(target, &Reference::Digest(ref_digest), None)
                .await?;
            for layer in layers(&m.manifest) {
                if layer.media_type.starts_with("application/vnd.dev.sigstore.bundle") && out.len() < MAX_CANDIDATES {
                    let blob = self.material_blob(target, &layer).await?;
                    out.push(Candidate::Bundle {
                        source: format!("bundle in referrer {}", m.manifest.digest()),
                        json: blob,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Legacy cosign `sha256-<hex>.sig` (and `.att` when attestations are
    /// required) layers.
    async fn discover_legacy(
        &self,
        target: &Target,
        digest: &Digest,
        attestations: bool,
    ) -> Result<Vec<Candidate>, Error> {
        let mut out = Vec::new();
        let suffixes: &[&str] = if attestations { &["sig", "att"] } else { &["sig"] };
        for suffix in suffixes {
            let Ok(tag) = format!("{}.{suffix}", digest.tag_form()).parse::<Tag>() else {
                continue;
            };
            let m = match self.fetch_manifest(target, &Reference::Tag(tag.clone()), None).await {
                Ok(m) => m,
                Err(Error::Upstream(e)) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for (i, layer) in layers(&m.manifest).into_iter().enumerate() {
                if out.len() >= MAX_CANDIDATES {
                    break;
                }
                if layer.media_type == check::SIMPLE_SIGNING_MEDIA_TYPE || layer.media_type == check::DSSE_MEDIA_TYPE {
                    let blob = self.material_blob(target, &layer).await?;
                    out.push(Candidate::Legacy {
                        source: format!("{tag} layer {i}"),
                        media_type: layer.media_type,
                        blob,
                        annotations: layer.annotations,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A small blob, read whole and checked against its descriptor.
    async fn material_blob(&self, target: &Target, layer: &Layer) -> Result<Bytes, Error> {
        if layer.size > MAX_MATERIAL_BYTES {
            return Err(Error::Internal(format!(
                "verification material {} is {} bytes (limit {MAX_MATERIAL_BYTES})",
                layer.digest, layer.size
            )));
        }
        let mut resp = target.registry.get_blob(&target.repo, &layer.digest).await?;
        let mut verifier = BlobVerifier::new(layer.digest.clone(), Some(layer.size));
        let mut buf = Vec::with_capacity(layer.size as usize);
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

/// A layer descriptor with its annotations (which `ManifestInfo` omits).
struct Layer {
    media_type: String,
    digest: Digest,
    size: u64,
    annotations: BTreeMap<String, String>,
}

fn layers(m: &VerifiedManifest) -> Vec<Layer> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        layers: Vec<RawLayer>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RawLayer {
        media_type: String,
        digest: Digest,
        size: u64,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    serde_json::from_slice::<Raw>(m.bytes())
        .map(|r| {
            r.layers
                .into_iter()
                .map(|l| Layer {
                    media_type: l.media_type,
                    digest: l.digest,
                    size: l.size,
                    annotations: l.annotations,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Verify every candidate against every authority (CPU work, blocking pool).
fn verify_all(
    candidates: &[Candidate],
    image: &Digest,
    authorities: &[Arc<policy::Authority>],
) -> (Evidence, Vec<String>) {
    let mut evidence = Evidence::default();
    let mut notes = Vec::new();
    for c in candidates {
        for a in authorities {
            let (source, result) = match c {
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
                    (source, check::verify_legacy(&layer, image, a))
                }
                Candidate::Bundle { source, json } => (source, check::verify_bundle(json, image, a)),
            };
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
