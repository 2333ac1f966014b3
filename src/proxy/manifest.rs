//! Manifests: a tag is resolved upstream once per request to a digest; from
//! then on everything is by digest.
//!
//! ```text
//! by tag:    HEAD upstream (tag) ──► digest ──► record observation ─┐
//!            (upstream down: last verified digest, with a warning)  │
//! by digest: ───────────────────────────────────────────────────────┤
//!                                                                   ▼
//!            memory cache ─► disk store (re-verified) ─► GET upstream by digest
//!                                                        └► verify::manifest::check ─► store
//!                                                                   ▼
//!            serve VerifiedManifest bytes verbatim
//! ```
//! Concurrent requests for one digest share a single load (moka).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderValue;

use super::admission::Admitted;
use super::{Error, Proxy, Target, blocking};
use crate::oci::manifest::{DEFAULT_ACCEPT, MAX_MANIFEST_BYTES, accepts};
use crate::oci::{Digest, ManifestMediaType, Reference, Tag};
use crate::policy::Mutability;
use crate::telemetry::{CacheOutcome, Requester};
use crate::upstream;
use crate::verify::{self, VerifiedManifest, manifest::check_computed};

/// A manifest ready to serve, and how it was obtained. Only an
/// [`Admitted`] manifest can be served.
#[derive(Debug, Clone)]
pub struct ManifestServed {
    pub manifest: Admitted,
    pub cache: CacheOutcome,
    /// Set when the upstream could not be asked and the last verified
    /// digest for the tag was served instead.
    pub stale_warning: Option<String>,
}

/// A verified manifest, not admitted: for the proxy's own use (signature
/// discovery, the referrers fallback) and as the input of admission.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub manifest: VerifiedManifest,
    pub cache: CacheOutcome,
    pub stale_warning: Option<String>,
}

/// Whether a tag whose upstream is unreachable may be answered with its
/// last admitted digest. Signature discovery never may: an upstream error
/// there is a denial, not an old answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Staleness {
    AllowLastKnown,
    FreshOnly,
}

impl Proxy {
    /// `GET`/`HEAD /v2/<name>/manifests/<reference>`: fetch and verify by
    /// digest, confirm the repository has it, then admit by policy; only
    /// then may the bytes be served (and stored).
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<&HeaderValue>,
        who: &Requester,
    ) -> Result<ManifestServed, Error> {
        let mut fetched = self
            .fetch_manifest(target, reference, accept, Staleness::AllowLastKnown)
            .await?;
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(d) => {
                self.ensure_present(target, d).await?;
                None
            }
        };
        if let Some(tag) = tag
            && fetched.stale_warning.is_none()
        {
            fetched = self.apply_tag_mutability(target, tag, fetched).await?;
        }
        let Fetched {
            manifest,
            cache,
            stale_warning,
        } = fetched;
        // Boxed: an admission's future (discovery, verification) is large,
        // and debug builds poll it on a 2 MiB worker stack.
        let admitted = Box::pin(self.admit(target, tag, manifest, who)).await?;
        // A store that refuses writes (disk full) does not stop the pull:
        // the admitted manifest is served from memory, not kept.
        let size = u64::try_from(admitted.bytes().len()).ok();
        self.persist(&admitted)
            .await
            .or_else(|e| self.served_uncached(e, size))?;
        // Only an admitted digest may become the tag's last-known digest
        // (the outage fallback and the pin for immutable tags).
        if let Some(tag) = tag
            && stale_warning.is_none()
        {
            self.record_tag(target, tag, admitted.digest())
                .await
                .or_else(|e| self.served_uncached(e, None))?;
        }
        Ok(ManifestServed {
            manifest: admitted,
            cache,
            stale_warning,
        })
    }

    /// Admit `digest` from `target` under the rule a pull by `tag` would
    /// meet (by digest: `None`), and store it, without moving any tag: an
    /// import writes every piece of an image first and its tags last
    /// ([`Self::set_tag`]).
    pub async fn admit_digest(
        &self,
        target: &Target,
        digest: &Digest,
        tag: Option<&Tag>,
        who: &Requester,
    ) -> Result<Admitted, Error> {
        let (manifest, _) = self.manifest_by_digest(target, digest).await?;
        let admitted = Box::pin(self.admit(target, tag, manifest, who)).await?;
        self.persist(&admitted).await?;
        Ok(admitted)
    }

    /// Make `tag` of `target` name the admitted manifest (what a pull by
    /// the tag resolves to when the upstream is offline or unreachable).
    pub async fn set_tag(&self, target: &Target, tag: &Tag, admitted: &Admitted) -> Result<(), Error> {
        self.record_tag(target, tag, admitted.digest()).await
    }

    /// Content is global by digest, presence is per repository: a manifest
    /// cached from one repository (or registry) is served by digest for
    /// another only if that one has it too — fetched from there, granted
    /// there by an admission, or confirmed with an upstream `HEAD` — so
    /// private content never leaks into another route by digest.
    async fn ensure_present(&self, target: &Target, digest: &Digest) -> Result<(), Error> {
        if self.known_present(target, digest)
            || matches!(
                self.granted_now(target, digest).await?,
                super::admission::Granted::Yes(_)
            )
        {
            return Ok(());
        }
        let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
        let reference = Reference::Digest(digest.clone());
        target.registry.head_manifest(&target.repo, &reference, &accept).await?;
        self.record_presence(target, digest);
        Ok(())
    }

    /// Store an admitted manifest (once): unadmitted bytes never reach disk.
    async fn persist(&self, admitted: &Admitted) -> Result<(), Error> {
        if self.persisted.contains_key(admitted.digest()) {
            return Ok(());
        }
        let store = self.store.clone();
        let to_store = admitted.verified().clone();
        blocking(move || store.manifests.put(&to_store)).await?;
        self.persisted.insert(admitted.digest().clone(), ());
        Ok(())
    }

    /// A tag that now resolves to another digest than the last admitted one:
    /// `mutable: deny` keeps serving the first admitted digest, `alert`
    /// serves the new one with a warning.
    async fn apply_tag_mutability(&self, target: &Target, tag: &Tag, served: Fetched) -> Result<Fetched, Error> {
        let host = target.registry.host().clone();
        let (repo, t) = (target.repo.clone(), tag.clone());
        let store = self.store.clone();
        let Some(previous) = blocking(move || store.tags.last(&host, &repo, &t)).await? else {
            return Ok(served);
        };
        if &previous == served.manifest.digest() {
            return Ok(served);
        }
        let now = served.manifest.digest().clone();
        match self.tag_mutability(target, tag) {
            // `record_tag` logs the move once the new digest is admitted.
            Mutability::Allow => Ok(served),
            Mutability::Alert => {
                tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %tag, %previous, %now,
                    "tag moved upstream (policy: mutable: alert); serving the new digest");
                Ok(served)
            }
            Mutability::Deny => {
                tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %tag, %previous, refused = %now,
                    "tag moved upstream (policy: mutable: deny); keeping the first admitted digest");
                let (manifest, cache) = self.manifest_by_digest(target, &previous).await?;
                Ok(Fetched {
                    manifest,
                    cache,
                    stale_warning: None,
                })
            }
        }
    }

    /// A verified manifest, not yet admitted: for the proxy's own use
    /// (signature discovery, the referrers fallback) and for [`Self::manifest`].
    pub(super) async fn fetch_manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<&HeaderValue>,
        staleness: Staleness,
    ) -> Result<Fetched, Error> {
        match reference {
            Reference::Digest(digest) => {
                let (manifest, cache) = match staleness {
                    Staleness::AllowLastKnown => self.by_digest_speculating(target, digest, None).await?,
                    Staleness::FreshOnly => self.manifest_by_digest(target, digest).await?,
                };
                Ok(Fetched {
                    manifest,
                    cache,
                    stale_warning: None,
                })
            }
            Reference::Tag(tag) => self.manifest_by_tag(target, tag, accept, staleness).await,
        }
    }

    async fn manifest_by_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: Option<&HeaderValue>,
        staleness: Staleness,
    ) -> Result<Fetched, Error> {
        let upstream_accept = upstream_accept(accept);
        let (digest, fetched_by_tag, stale_warning) = match self.resolve_tag(target, tag, &upstream_accept).await {
            Ok((digest, fetched)) => (digest, fetched, None),
            Err(e) if e.is_upstream_unavailable() && staleness == Staleness::AllowLastKnown => {
                let host = target.registry.host().clone();
                let (repo, t) = (target.repo.clone(), tag.clone());
                let store = self.store.clone();
                match blocking(move || store.tags.last(&host, &repo, &t)).await? {
                    Some(d) if self.too_stale(target, tag).await => {
                        tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %tag, digest = %d, error = %e,
                            "upstream unavailable and the tag's last confirmation is older than cache.maxStaleness; refused");
                        return Err(e);
                    }
                    Some(d) => {
                        tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %tag, digest = %d, error = %e,
                            "upstream unavailable; serving the last verified digest for the tag");
                        let warning =
                            format!("upstream unavailable ({e}); served the last verified digest for this tag");
                        (d, None, Some(warning))
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // The tag resolved in this repository (or, stale, did so before):
        // it has the digest.
        self.record_presence(target, &digest);
        let (manifest, cache) = match fetched_by_tag {
            Some(m) => {
                self.manifests.insert(m.digest().clone(), m.clone()).await;
                (m, CacheOutcome::Miss)
            }
            None if staleness == Staleness::AllowLastKnown => {
                self.by_digest_speculating(target, &digest, Some(tag)).await?
            }
            None => self.manifest_by_digest(target, &digest).await?,
        };
        let cache = if stale_warning.is_some() {
            CacheOutcome::Stale
        } else {
            cache
        };
        let accept_values = accept.and_then(|a| a.to_str().ok());
        if !accepts(accept_values, manifest.media_type().as_str()) {
            return Err(Error::NotAcceptable {
                media_type: manifest.media_type(),
            });
        }
        Ok(Fetched {
            manifest,
            cache,
            stale_warning,
        })
    }

    /// Resolve a tag to a digest with one upstream HEAD (free under Docker
    /// Hub's pull limit), shared by the requests resolving the same tag at
    /// the same time. An upstream that omits `Docker-Content-Digest` (or
    /// refuses HEAD) is asked with GET instead, and the digest is computed
    /// from the bytes, which are then returned already verified.
    async fn resolve_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &HeaderValue,
    ) -> Result<(Digest, Option<VerifiedManifest>), Error> {
        let reference = Reference::Tag(tag.clone());
        let head = self
            .head_tag(target, tag, accept, super::blob::PeerRoute::MayRelay)
            .await;
        let (digest, fetched) = match head {
            Ok(upstream::ManifestHead { digest: Some(d), .. }) => (d, None),
            Ok(_) | Err(upstream::Error::Status { .. }) => {
                let unverified = target
                    .registry
                    .get_manifest(&target.repo, &reference, accept, MAX_MANIFEST_BYTES)
                    .await?;
                // Name the failure by the digest the upstream claimed, else by
                // the bytes received (hashed only on this error path).
                let named = unverified.claimed_digest.clone();
                let bytes = unverified.bytes.clone();
                let m = check_computed(unverified).map_err(|source| {
                    let digest = named.unwrap_or_else(|| Digest::of(crate::oci::Algorithm::Sha256, &bytes));
                    integrity_failure(&self.metrics, target, digest, source)
                })?;
                (m.digest().clone(), Some(m))
            }
            Err(e) => return Err(e.into()),
        };
        Ok((digest, fetched))
    }

    /// Whether the stale fallback may no longer serve `tag`: its last
    /// confirmation is older than `cache.maxStaleness` (or unknown).
    async fn too_stale(&self, target: &Target, tag: &Tag) -> bool {
        let Some(max) = self.config.proxy_limits.max_staleness else {
            return false;
        };
        let (host, repo, t) = (target.registry.host().clone(), target.repo.clone(), tag.clone());
        let store = self.store.clone();
        let confirmed = blocking(move || Ok(store.tags.confirmed_at(&host, &repo, &t))).await;
        let age = confirmed
            .ok()
            .flatten()
            .and_then(|at| std::time::SystemTime::now().duration_since(at).ok());
        age.is_none_or(|age| age > max)
    }

    /// Remember that `tag` resolved to the verified manifest `digest` (and,
    /// from a network upstream, when it last said so: the stale bound).
    async fn record_tag(&self, target: &Target, tag: &Tag, digest: &Digest) -> Result<(), Error> {
        let (host, repo, t, d) = (
            target.registry.host().clone(),
            target.repo.clone(),
            tag.clone(),
            digest.clone(),
        );
        let store = self.store.clone();
        let confirm = !target.registry.is_local();
        let recorded = blocking(move || {
            let previous = store.tags.record(&host, &repo, &t, &d)?;
            if confirm {
                store.tags.confirm(&host, &repo, &t, CONFIRM_EVERY);
            }
            Ok(previous)
        })
        .await?;
        if let Some(previous) = recorded {
            tracing::info!(upstream = %target.registry.host(), repo = %target.repo, %tag, %previous, now = %digest, "tag moved upstream");
        }
        Ok(())
    }

    /// [`Self::manifest_by_digest`] for a client's pull. When the manifest
    /// must come from the upstream, signature discovery for the digest
    /// starts at the same time (`admission::speculate`), so a cold
    /// admission costs the longest of the two, not their sum; it is
    /// abandoned if the manifest cannot be had.
    async fn by_digest_speculating(
        &self,
        target: &Target,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<(VerifiedManifest, CacheOutcome), Error> {
        if self.manifests.contains_key(digest) {
            return self.manifest_by_digest(target, digest).await;
        }
        let speculation = self.speculate(target, digest, tag);
        let result = self.manifest_by_digest(target, digest).await;
        if result.is_err()
            && let Some(task) = speculation
        {
            task.abort();
        }
        result
    }

    /// A manifest by digest: memory, then disk (re-verified), then upstream.
    /// Concurrent callers for the same digest share one load.
    pub(super) async fn manifest_by_digest(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<(VerifiedManifest, CacheOutcome), Error> {
        if let Some(m) = self.manifests.get(digest).await {
            return Ok((m, CacheOutcome::Hit));
        }
        let fetched = Arc::new(AtomicBool::new(false));
        let load = self.load_manifest(target, digest, fetched.clone());
        let m = self
            .manifests
            .try_get_with(digest.clone(), load)
            .await
            .map_err(|e| (*e).clone())?;
        let cache = if fetched.load(Ordering::Relaxed) {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        Ok((m, cache))
    }

    async fn load_manifest(
        &self,
        target: &Target,
        digest: &Digest,
        fetched: Arc<AtomicBool>,
    ) -> Result<VerifiedManifest, Error> {
        let store = self.store.clone();
        let d = digest.clone();
        if let Some(unverified) = blocking(move || store.manifests.get(&d)).await? {
            match verify::manifest::check(unverified, digest) {
                Ok(m) => {
                    self.persisted.insert(digest.clone(), ());
                    return Ok(m);
                }
                Err(e) => tracing::warn!(%digest, error = %e, "stored manifest failed re-verification; fetching again"),
            }
        }
        fetched.store(true, Ordering::Relaxed);
        let _slot = self.manifest_load_slot().await?;
        let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
        let reference = Reference::Digest(digest.clone());
        let unverified = target
            .registry
            .get_manifest(&target.repo, &reference, &accept, MAX_MANIFEST_BYTES)
            .await?;
        let m = verify::manifest::check(unverified, digest)
            .map_err(|source| integrity_failure(&self.metrics, target, digest.clone(), source))?;
        // Fetched from this repository: it has it. Written to disk only
        // once admitted (`persist`).
        self.record_presence(target, digest);
        Ok(m)
    }
}

/// Forward the client's `Accept` when it names manifest types. A missing or
/// wildcard-only `Accept` becomes the full supported list: registries such as
/// distribution 2.x refuse OCI manifests to clients that do not name them,
/// and would fall back to schema 1 for Docker images.
fn upstream_accept(client: Option<&HeaderValue>) -> HeaderValue {
    let names_a_type = client
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.split(',').any(|t| ManifestMediaType::parse(t).is_ok()));
    match client {
        Some(a) if names_a_type => a.clone(),
        _ => HeaderValue::from_static(DEFAULT_ACCEPT),
    }
}

impl Proxy {
    /// One of the bounded slots for upstream manifest loads (client pulls,
    /// referrer enrichment and signature discovery alike): anonymous
    /// clients asking for many unknown digests cannot open unbounded
    /// upstream requests. Waits a while, then answers busy (429).
    pub(super) async fn manifest_load_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        match tokio::time::timeout(MANIFEST_LOAD_SLOT_WAIT, self.manifest_loads.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Error::Internal("manifest load limiter closed".into())),
            Err(_) => Err(Error::Overloaded {
                what: "upstream manifest loads",
            }),
        }
    }
}

/// How often a tag's confirmation time is rewritten while its upstream keeps
/// naming the same digest (the resolution of `cache.maxStaleness`).
const CONFIRM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Upstream manifest loads at once (each ≤ 4 MiB).
pub(super) const MAX_CONCURRENT_MANIFEST_LOADS: usize = 64;
/// How long a load waits for a slot before the client is told to retry.
const MANIFEST_LOAD_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn integrity_failure(
    metrics: &crate::telemetry::Metrics,
    target: &Target,
    digest: Digest,
    source: verify::IntegrityError,
) -> Error {
    use crate::telemetry::metrics::IntegrityKind;
    metrics.integrity_failure(match &source {
        verify::IntegrityError::DigestMismatch { .. } | verify::IntegrityError::ClaimedDigestMismatch { .. } => {
            IntegrityKind::Manifest
        }
        _ => IntegrityKind::Document,
    });
    match &source {
        verify::IntegrityError::DigestMismatch { expected, actual } => {
            tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %expected, %actual, "manifest integrity failure: bytes do not match the digest");
        }
        verify::IntegrityError::ClaimedDigestMismatch { claimed, actual } => {
            tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, expected = %claimed, %actual, "manifest integrity failure: Docker-Content-Digest does not match the bytes");
        }
        other => {
            tracing::warn!(upstream = %target.registry.host(), repo = %target.repo, %digest, error = %other, "manifest refused");
        }
    }
    Error::Integrity { digest, source }
}
