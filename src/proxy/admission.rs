//! Admission: before any byte of a manifest is served, its digest must
//! satisfy the signature policy. The only way to obtain servable manifest
//! bytes is an [`Admitted`] value, which only this module constructs.
//!
//! ```text
//! manifest (verified by digest, read once: oci::json)
//!   ├─ integrity-only mode ──────────────────────────────────► Admitted (said in the audit event)
//!   ├─ listed by an index that was *allowed* under the same
//!   │  rule this manifest's own pull matches ────────────────► the index's decision
//!   ├─ verification material by exact shape (oci::material)
//!   │  with a `subject`, or at its `sha256-<hex>[.sig|.att|.sbom]` tag ► the subject's decision
//!   └─ rule = first match (registry, repository, tag)
//!        requireDigest and a tag ──────────────────────────► deny
//!        static / no rule ─────────────────────────────────► policy.evaluate
//!        verify: verdict cache (digest, revision, rule, registry, repository), one at a time
//!                 └─ proxy::evidence: discover (referrers + fallback, .sig, .att; bounded)
//!                    → verify each candidate per authority (blocking pool)
//!                    → Evidence → policy.evaluate → Decision (allows persisted with their key)
//! serve ⇔ decision.serves() → Admitted { registry, repository, digest, revision, rule }
//!   → grants its own blobs (memory + store, bound to the revision) and, for an
//!     allowed index with indexCoversChildren, vouches for its children.
//! ```
//! Transient failures (upstream errors, timeouts) are never cached and never
//! allow; a poisoned policy lock refuses.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Error, Proxy, Target, blocking};
use crate::oci::material::{self, MaterialKind};
use crate::oci::{Digest, ManifestInfo, ManifestMediaType, RegistryHost, RepoName, Tag};
use crate::policy::{self, Decision, Evidence, Mode, Mutability, PolicySet, Rule, RuleAction, SignerId, Verdict};
use crate::store::verdicts::{VerdictKey, VerdictStore};
use crate::store::{Grant, GrantKey, GrantScope};
use crate::telemetry::Requester;
use crate::telemetry::audit::{self, AuditEvent, AuditSink};
use crate::telemetry::metrics::{AdmissionMode, AdmissionOutcome};
use crate::verify::VerifiedManifest;

/// How long a denial is remembered (so a newly signed image is admitted soon).
const DENIAL_TTL: Duration = Duration::from_secs(30);
/// At most this many admissions discover and verify signatures at once;
/// more wait (bounded) for a slot: anonymous clients cannot make the proxy
/// open unbounded upstream requests by asking for many unverified digests.
const MAX_CONCURRENT_DISCOVERIES: usize = 32;
/// How long an admission waits for a discovery slot before answering busy.
const DISCOVERY_SLOT_WAIT: Duration = Duration::from_secs(20);

/// A manifest the gate admitted for one (registry, repository) under one
/// policy revision and rule. Fields are private and only this module builds
/// one, so holding an `Admitted` proves the admission happened; the manifest
/// endpoint can obtain bytes from nothing else.
#[derive(Clone, Debug)]
pub struct Admitted {
    manifest: VerifiedManifest,
    registry: RegistryHost,
    repository: RepoName,
    /// `None` in integrity-only mode.
    revision: Option<String>,
    rule: Option<String>,
    /// `Some(subject)` when admitted as verification material of `subject`.
    material_of: Option<Digest>,
    /// The authorities whose requirement the decision found met.
    satisfied: Vec<String>,
    /// Who signed for them ([`Decision::signers`]).
    signers: Vec<SignerId>,
}

impl Admitted {
    pub fn digest(&self) -> &Digest {
        self.manifest.digest()
    }

    /// The exact bytes that hash to [`Self::digest`]; serve these verbatim.
    pub fn bytes(&self) -> &Bytes {
        self.manifest.bytes()
    }

    pub fn media_type(&self) -> ManifestMediaType {
        self.manifest.media_type()
    }

    pub fn info(&self) -> &ManifestInfo {
        self.manifest.info()
    }

    pub fn registry(&self) -> &RegistryHost {
        &self.registry
    }

    pub fn repository(&self) -> &RepoName {
        &self.repository
    }

    /// The policy revision it was admitted under (`None`: integrity-only).
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// The image this manifest is verification material of, if admitted as such.
    pub fn material_of(&self) -> Option<&Digest> {
        self.material_of.as_ref()
    }

    /// The authorities whose requirement was met (empty: integrity-only, a
    /// static rule, or no rule).
    pub fn satisfied(&self) -> &[String] {
        &self.satisfied
    }

    /// Who signed for the satisfied authorities ([`Decision::signers`]).
    pub fn signers(&self) -> &[SignerId] {
        &self.signers
    }

    /// The verified manifest (for storing it; serving goes through `self`).
    pub(super) fn verified(&self) -> &VerifiedManifest {
        &self.manifest
    }
}

/// What the gate enforces right now.
enum Enforcement {
    IntegrityOnly,
    Policy(Arc<PolicySet>),
}

/// An admitted index's word for a child: valid only for a child whose own
/// pull matches the same rule, under the same revision.
struct Vouch {
    rule: String,
    decision: Decision,
    index: Digest,
}

/// (registry, repository, child digest, revision).
type VouchKey = (RegistryHost, RepoName, Digest, String);

/// The admission state: the current policy, verdict cache, vouched-for
/// manifests, blob grants and the per-repository presence of manifests.
pub struct Gate {
    policy: Option<RwLock<Arc<PolicySet>>>,
    policy_dir: Option<PathBuf>,
    verdicts: moka::future::Cache<VerdictKey, Arc<CachedVerdict>>,
    persisted: Option<Arc<VerdictStore>>,
    vouched: moka::sync::Cache<VouchKey, Arc<Vouch>>,
    grants: moka::sync::Cache<GrantKey, Grant>,
    /// (registry, repository, blob) → the admitted manifest that last
    /// granted it, so a grant revoked by a policy reload can be derived
    /// again by admitting that manifest under the new revision.
    granted_by: moka::sync::Cache<(RegistryHost, RepoName, Digest), Digest>,
    /// (registry, repository, manifest digest) known to exist upstream there.
    presence: moka::sync::Cache<(RegistryHost, RepoName, Digest), ()>,
    discoveries: tokio::sync::Semaphore,
    audit: AuditSink,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("policy_dir", &self.policy_dir)
            .finish_non_exhaustive()
    }
}

struct VerdictExpiry;

impl moka::Expiry<VerdictKey, Arc<CachedVerdict>> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _k: &VerdictKey,
        v: &Arc<CachedVerdict>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        (v.decision.verdict() == Verdict::Deny).then_some(DENIAL_TTL)
    }
}

/// A verdict in the memory cache. One computed by speculation (while the
/// manifest was still being fetched) is unclaimed until an admission uses
/// it: that admission reports it as fresh, not cached, and persists it.
struct CachedVerdict {
    decision: Decision,
    unclaimed: std::sync::atomic::AtomicBool,
}

impl CachedVerdict {
    fn new(decision: Decision, unclaimed: bool) -> Arc<CachedVerdict> {
        Arc::new(CachedVerdict {
            decision,
            unclaimed: std::sync::atomic::AtomicBool::new(unclaimed),
        })
    }

    /// Whether this call is the first admission to use a speculative verdict.
    fn claim(&self) -> bool {
        self.unclaimed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

impl Gate {
    /// `policy: None` is integrity-only mode.
    /// `verdicts`: where allow verdicts persist (the store's).
    pub fn new(policy: Option<(PolicySet, PathBuf)>, verdicts: Arc<VerdictStore>, audit: AuditSink) -> Gate {
        let (policy, policy_dir) = match policy {
            Some((p, dir)) => (Some(RwLock::new(Arc::new(p))), Some(dir)),
            None => (None, None),
        };
        Gate {
            persisted: policy.as_ref().map(|_| verdicts),
            policy,
            policy_dir,
            verdicts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(VerdictExpiry)
                .build(),
            vouched: moka::sync::Cache::new(200_000),
            grants: moka::sync::Cache::new(2_000_000),
            granted_by: moka::sync::Cache::new(2_000_000),
            presence: moka::sync::Cache::new(500_000),
            discoveries: tokio::sync::Semaphore::new(MAX_CONCURRENT_DISCOVERIES),
            audit,
        }
    }

    /// The policy in force (`None` in integrity-only mode, or if the lock
    /// is poisoned — admission itself refuses in that case).
    pub fn policy(&self) -> Option<Arc<PolicySet>> {
        self.policy.as_ref().and_then(|p| p.read().ok().map(|g| g.clone()))
    }

    /// What to enforce. A poisoned lock is an error, never integrity-only.
    fn enforcement(&self) -> Result<Enforcement, Error> {
        match &self.policy {
            None => Ok(Enforcement::IntegrityOnly),
            Some(lock) => lock
                .read()
                .map(|p| Enforcement::Policy(p.clone()))
                .map_err(|_| Error::Internal("the policy lock is poisoned; refusing to admit".into())),
        }
    }

    /// The audit sink (the `verify` command reads its events back).
    pub fn audit_sink(&self) -> &AuditSink {
        &self.audit
    }

    pub fn policy_dir(&self) -> Option<&PathBuf> {
        self.policy_dir.as_ref()
    }

    /// Swap in a new, fully compiled policy. Cached verdicts, vouches and
    /// grants of the old revision no longer match (the revision is part of
    /// every key).
    pub fn replace_policy(&self, new: PolicySet) {
        if let Some(lock) = &self.policy {
            let mut guard = match lock.write() {
                Ok(guard) => guard,
                // The new policy is complete: replacing the value makes
                // the lock sound again.
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Arc::new(new);
            drop(guard);
            lock.clear_poison();
        }
    }
}

/// Who asked and for what, for the audit event.
pub(super) struct Ask<'a> {
    pub(super) target: &'a Target,
    pub(super) tag: Option<&'a Tag>,
    pub(super) who: &'a Requester,
}

/// How an admitted manifest relates to what it references.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Admitted on its own (or vouched by an index): grants its blobs, and
    /// an allowed index vouches for its children.
    Own,
    /// Verification material: grants its own (material-typed) blobs only,
    /// vouches for nothing.
    Material,
}

/// Whether a grant holds under the current revision; if not, the key it
/// would have.
pub(super) enum Granted {
    Yes(Grant),
    /// Integrity-only mode: no grants; any content matching its digest.
    AnyContent,
    No(GrantKey),
}

/// Whether a fresh allow verdict is written to the store: by admission,
/// not by speculation (whose manifest may yet be refused, and then nothing
/// of it may be stored).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Persist {
    Allows,
    No,
}

/// Why a manifest is verification material of another image.
struct MaterialOf {
    subject: Digest,
    why: &'static str,
}

impl Proxy {
    /// How a tag's moves are treated for this repository.
    pub(super) fn tag_mutability(&self, target: &Target, tag: &Tag) -> Mutability {
        self.gate
            .policy()
            .and_then(|p| {
                p.rule_for(
                    target.registry.host().as_str(),
                    target.repo.as_str(),
                    Some(tag.as_str()),
                )
                .map(|r| r.mutable_tags)
            })
            .unwrap_or(Mutability::Allow)
    }

    /// The decision of the first `promotion.rules` entry matching the
    /// destination (`registry`, `repository`, `tag`) for `digest` as found
    /// at `source` (its signatures, discovered and verified as for an
    /// admission; audited, not cached). `None`: no policy or no such rule.
    pub async fn decide_promotion(
        &self,
        source: &Target,
        digest: &Digest,
        destination: (&str, &str, &Tag),
        who: &Requester,
    ) -> Result<Option<(Decision, String)>, Error> {
        let Enforcement::Policy(policy) = self.gate.enforcement()? else {
            return Ok(None);
        };
        let (registry, repository, tag) = destination;
        let Some(rule) = policy
            .promotion_rules
            .iter()
            .find(|r| r.matches(registry, repository, Some(tag.as_str())))
        else {
            return Ok(None);
        };
        let (d, cached) = self.decide(source, digest, Some(rule), &policy, Persist::No).await?;
        let ask = Ask {
            target: source,
            tag: None,
            who,
        };
        self.audit(&ask, digest, &d, Some(&policy.revision), cached);
        let message = denial_message(&d, &policy);
        Ok(Some((d, message)))
    }

    /// Admit `manifest` for serving, or refuse with `Error::Denied`.
    pub(super) async fn admit(
        &self,
        target: &Target,
        tag: Option<&Tag>,
        manifest: VerifiedManifest,
        who: &Requester,
    ) -> Result<Admitted, Error> {
        let ask = Ask { target, tag, who };
        let policy = match self.gate.enforcement()? {
            Enforcement::IntegrityOnly => return Ok(self.admit_integrity_only(&ask, manifest)),
            Enforcement::Policy(p) => p,
        };
        let host = target.registry.host();
        let own_rule = policy.rule_for(host.as_str(), target.repo.as_str(), tag.map(Tag::as_str));
        if let Some(d) = self.vouched_decision(target, manifest.digest(), own_rule, &policy) {
            return self.conclude(&ask, manifest, &d, &policy, true, Role::Own).await;
        }
        if let Some(m) = material_of(tag, manifest.info()) {
            let rule = policy.rule_for(host.as_str(), target.repo.as_str(), None);
            let (d, cached) = self.decide(target, &m.subject, rule, &policy, Persist::Allows).await?;
            let d = d.explained(format!("{} {}", m.why, m.subject));
            return self.conclude(&ask, manifest, &d, &policy, cached, Role::Material).await;
        }
        if let (Some(r), Some(t)) = (own_rule, tag)
            && r.require_digest
        {
            let d = Decision::denied_by(r, format!("rule requires pulls by digest; `{t}` is a tag"));
            return self.conclude(&ask, manifest, &d, &policy, false, Role::Own).await;
        }
        let (d, cached) = self
            .decide(target, manifest.digest(), own_rule, &policy, Persist::Allows)
            .await?;
        self.conclude(&ask, manifest, &d, &policy, cached, Role::Own).await
    }

    fn admit_integrity_only(&self, ask: &Ask<'_>, manifest: VerifiedManifest) -> Admitted {
        let d = Decision::integrity_only();
        self.audit(ask, manifest.digest(), &d, None, false);
        Admitted {
            manifest,
            registry: ask.target.registry.host().clone(),
            repository: ask.target.repo.clone(),
            revision: None,
            rule: None,
            material_of: None,
            satisfied: Vec::new(),
            signers: Vec::new(),
        }
    }

    /// The decision of an index that vouched for `digest`, if the index was
    /// allowed (not merely served in audit) under the very rule this pull
    /// matches: an index admitted under a tag-scoped or other rule says
    /// nothing about a child pulled by digest under another.
    fn vouched_decision(
        &self,
        target: &Target,
        digest: &Digest,
        own_rule: Option<&Rule>,
        policy: &PolicySet,
    ) -> Option<Decision> {
        let key = (
            target.registry.host().clone(),
            target.repo.clone(),
            digest.clone(),
            policy.revision.clone(),
        );
        let vouch = self.gate.vouched.get(&key)?;
        if own_rule.is_none_or(|r| r.name != vouch.rule) {
            return None;
        }
        Some(
            vouch
                .decision
                .clone()
                .explained(format!("listed by admitted index {}", vouch.index)),
        )
    }

    /// Audit, then serve or refuse. What is served grants its blobs; an
    /// allowed index with `indexCoversChildren` vouches for its children.
    async fn conclude(
        &self,
        ask: &Ask<'_>,
        manifest: VerifiedManifest,
        d: &Decision,
        policy: &PolicySet,
        cached: bool,
        role: Role,
    ) -> Result<Admitted, Error> {
        self.audit(ask, manifest.digest(), d, Some(&policy.revision), cached);
        if !d.serves() {
            return Err(Error::Denied {
                message: denial_message(d, policy),
            });
        }
        let admitted = Admitted {
            registry: ask.target.registry.host().clone(),
            repository: ask.target.repo.clone(),
            revision: Some(policy.revision.clone()),
            rule: d.rule().map(str::to_owned),
            material_of: match role {
                Role::Material => material_of(ask.tag, manifest.info()).map(|m| m.subject),
                Role::Own => None,
            },
            satisfied: d.satisfied().to_vec(),
            signers: d.signers().to_vec(),
            manifest,
        };
        self.grant_blobs(&admitted).await;
        if role == Role::Own {
            self.vouch_for_children(&admitted, d, policy);
        }
        Ok(admitted)
    }

    /// Grant what an admitted manifest references, in memory and in the
    /// store, bound to the revision: an image's blobs, an index's child
    /// manifests, and the manifest's own digest (which also records that
    /// this repository has it). Material's layers are granted as material
    /// only: served once their bytes prove to be material of that kind.
    async fn grant_blobs(&self, admitted: &Admitted) {
        let Some(revision) = admitted.revision() else { return };
        let material = admitted.material_of().and_then(|_| material::classify(admitted.info()));
        let layers: Vec<&Digest> = admitted.info().layers().iter().map(|d| &d.digest).collect();
        let scope_of = |digest: &Digest| match material {
            Some(kind) if layers.contains(&digest) => GrantScope::Material(kind),
            _ => GrantScope::Content,
        };
        let own_size = u64::try_from(admitted.bytes().len()).ok();
        let digests = std::iter::once((admitted.digest(), own_size))
            .chain(admitted.info().references.iter().map(|d| (&d.digest, Some(d.size))));
        let mut new = Vec::new();
        for (digest, size) in digests {
            let key = GrantKey {
                registry: admitted.registry.clone(),
                repository: admitted.repository.clone(),
                blob: digest.clone(),
                revision: revision.to_owned(),
            };
            let grant = Grant {
                scope: scope_of(digest),
                size,
            };
            let existing = self.gate.grants.get(&key);
            if existing.is_some_and(|e| e.scope.wider(grant.scope) == e.scope) {
                continue;
            }
            self.gate.grants.insert(key.clone(), grant);
            self.gate.granted_by.insert(
                (key.registry.clone(), key.repository.clone(), key.blob.clone()),
                admitted.digest().clone(),
            );
            new.push((key, grant));
        }
        if new.is_empty() {
            return;
        }
        // Written before the manifest is served, so a client resuming a
        // layer download after a restart still finds its grant.
        let store = self.store.clone();
        let manifest = admitted.digest().clone();
        let written = tokio::task::spawn_blocking(move || {
            new.iter()
                .try_for_each(|(key, grant)| store.grants.put(key, &manifest, *grant))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.caching.best_effort(&e, "cannot persist a blob grant"),
            Err(e) => tracing::warn!(error = %e, "persisting blob grants failed"),
        }
    }

    fn vouch_for_children(&self, admitted: &Admitted, d: &Decision, policy: &PolicySet) {
        if !admitted.media_type().is_index() || d.verdict() != Verdict::Allow {
            return;
        }
        let Some(rule) = d.rule().and_then(|name| policy.rules.iter().find(|r| r.name == name)) else {
            return;
        };
        if !rule.index_covers_children {
            return;
        }
        let vouch = Arc::new(Vouch {
            rule: rule.name.clone(),
            decision: d.clone(),
            index: admitted.digest().clone(),
        });
        for child in &admitted.info().references {
            let key = (
                admitted.registry.clone(),
                admitted.repository.clone(),
                child.digest.clone(),
                policy.revision.clone(),
            );
            self.gate.vouched.insert(key, vouch.clone());
        }
    }

    /// Whether, and how, a blob may be served from this repository: an
    /// admitted manifest of this repository granted it under the current
    /// revision (in memory, or persisted by an earlier run). Integrity-only
    /// mode serves any blob that matches its digest.
    pub(super) async fn blob_grant(&self, target: &Target, digest: &Digest) -> Result<Option<Grant>, Error> {
        match self.granted_now(target, digest).await? {
            Granted::Yes(grant) => Ok(Some(grant)),
            Granted::AnyContent => Ok(Some(Grant {
                scope: GrantScope::Content,
                size: None,
            })),
            Granted::No(key) => Ok(self.regrant(target, key).await),
        }
    }

    /// The grant under the current revision (memory or store), if any.
    pub(super) async fn granted_now(&self, target: &Target, digest: &Digest) -> Result<Granted, Error> {
        let policy = match self.gate.enforcement()? {
            Enforcement::IntegrityOnly => return Ok(Granted::AnyContent),
            Enforcement::Policy(p) => p,
        };
        let key = GrantKey {
            registry: target.registry.host().clone(),
            repository: target.repo.clone(),
            blob: digest.clone(),
            revision: policy.revision.clone(),
        };
        if let Some(grant) = self.gate.grants.get(&key) {
            return Ok(Granted::Yes(grant));
        }
        let store = self.store.clone();
        let probe = key.clone();
        if let Some(grant) = blocking(move || Ok(store.grants.get(&probe))).await? {
            self.gate.grants.insert(key, grant);
            return Ok(Granted::Yes(grant));
        }
        Ok(Granted::No(key))
    }

    /// A grant of an earlier revision is never used as such: the manifest
    /// that granted it is admitted again under the policy now in force, and
    /// only if that admission serves does the blob become servable again.
    /// A client in the middle of a pull keeps going across a reload that
    /// does not concern its image, and one that does is refused.
    async fn regrant(&self, target: &Target, key: GrantKey) -> Option<Grant> {
        let manifest = self
            .gate
            .granted_by
            .get(&(key.registry.clone(), key.repository.clone(), key.blob.clone()))?;
        let proxy = self.me.upgrade()?;
        // A whole admission in its own task: inline, it would make every
        // blob request's future (and its stack) as large as an admission's.
        let (target_owned, manifest_digest) = (target.clone(), manifest.clone());
        let readmission = tokio::spawn(async move {
            let (verified, _) = proxy.manifest_by_digest(&target_owned, &manifest_digest).await?;
            let who = Requester {
                client: "portcullis (re-admission after a policy change)".to_owned(),
                identity: "-".to_owned(),
            };
            proxy.admit(&target_owned, None, verified, &who).await.map(drop)
        });
        match readmission.await {
            Ok(Ok(())) => self.gate.grants.get(&key),
            Ok(Err(e)) => {
                tracing::info!(blob = %key.blob, %manifest, error = %e, "blob grant not renewed under the new policy");
                None
            }
            Err(e) => {
                tracing::warn!(blob = %key.blob, %manifest, error = %e, "re-admission task failed");
                None
            }
        }
    }

    /// Start verifying `digest` for the rule a pull of it matches, in the
    /// background, while its manifest is still being fetched: admission then
    /// joins the same verification (the verdict cache runs one per key).
    /// Not for legacy material tags (their subject is what gets verified)
    /// or digests an admitted index already vouched for.
    pub(super) fn speculate(
        &self,
        target: &Target,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if tag.is_some_and(|t| material::legacy_tag(t.as_str()).is_some()) {
            return None;
        }
        let Ok(Enforcement::Policy(policy)) = self.gate.enforcement() else {
            return None;
        };
        let host = target.registry.host();
        let rule = policy.rule_for(host.as_str(), target.repo.as_str(), tag.map(Tag::as_str))?;
        if !matches!(rule.action, RuleAction::Verify(_))
            || (tag.is_some() && rule.require_digest)
            || self.vouched_decision(target, digest, Some(rule), &policy).is_some()
        {
            return None;
        }
        let rule_name = rule.name.clone();
        let proxy = self.me.upgrade()?;
        let (target, digest) = (target.clone(), digest.clone());
        Some(tokio::spawn(async move {
            let Some(rule) = policy.rules.iter().find(|r| r.name == rule_name) else {
                return;
            };
            // The outcome lands in the verdict cache; errors are the
            // admission's to report.
            let _ = proxy.decide(&target, &digest, Some(rule), &policy, Persist::No).await;
        }))
    }

    /// Record that (registry, repository) has `digest` upstream.
    pub(super) fn record_presence(&self, target: &Target, digest: &Digest) {
        self.gate.presence.insert(
            (target.registry.host().clone(), target.repo.clone(), digest.clone()),
            (),
        );
    }

    /// Whether the proxy runs without a policy (no grants: presence per
    /// repository is then confirmed upstream instead).
    pub(super) fn integrity_only(&self) -> bool {
        self.gate.policy.is_none()
    }

    /// Whether (registry, repository) is known to have `digest` upstream.
    pub(super) fn known_present(&self, target: &Target, digest: &Digest) -> bool {
        self.gate
            .presence
            .contains_key(&(target.registry.host().clone(), target.repo.clone(), digest.clone()))
    }

    /// The decision for `digest` under `rule`: from the cache, or verified
    /// now (one verification per key at a time). Returns whether it was
    /// cached. Only "too busy" is an error; every other failure is a
    /// denial that is not cached.
    async fn decide(
        &self,
        target: &Target,
        digest: &Digest,
        rule: Option<&Rule>,
        policy: &PolicySet,
        persist: Persist,
    ) -> Result<(Decision, bool), Error> {
        let Some(rule) = rule.filter(|r| matches!(r.action, RuleAction::Verify(_))) else {
            return Ok((policy::eval::evaluate(policy, rule, &Evidence::default()), false));
        };
        // Signatures are discovered in the repository pulled from, so the
        // verdict is per repository: a denial where no signature is found
        // must not refuse the same digest where it is signed.
        let key = VerdictKey {
            digest: digest.clone(),
            revision: policy.revision.clone(),
            rule: rule.name.clone(),
            registry: target.registry.host().clone(),
            repository: target.repo.clone(),
        };
        if let Some(entry) = self.gate.verdicts.get(&key).await {
            let fresh = persist == Persist::Allows && entry.claim();
            if fresh {
                self.persist_verdict(&key, &entry.decision);
            }
            return Ok((entry.decision.clone(), !fresh));
        }
        if let Some(d) = self.persisted_verdict(&key).await {
            self.gate
                .verdicts
                .insert(key, CachedVerdict::new(d.clone(), false))
                .await;
            return Ok((d, true));
        }
        let started = Instant::now();
        let verified = self
            .gate
            .verdicts
            .try_get_with(key.clone(), async {
                let d = self.verify_now(target, digest, rule, policy).await?;
                Ok::<_, Error>(CachedVerdict::new(d, persist == Persist::No))
            })
            .await;
        match verified {
            Ok(entry) => {
                // Computed here, or joined a speculation still running.
                if persist == Persist::Allows {
                    entry.claim();
                    self.persist_verdict(&key, &entry.decision);
                }
                tracing::debug!(%digest, rule = %rule.name, ms = started.elapsed().as_millis() as u64, verdict = ?entry.decision.verdict(), "verified");
                Ok((entry.decision.clone(), false))
            }
            Err(e) if matches!(*e, Error::Overloaded { .. }) => Err((*e).clone()),
            // No definitive verdict: deny, and cache nothing.
            Err(e) => Ok((
                Decision::denied_by(
                    rule,
                    format!("verification material could not be fetched ({e}); not cached, retry later"),
                ),
                false,
            )),
        }
    }

    /// Write an allow verdict to the store (off the workers); denials stay
    /// in memory only, briefly.
    fn persist_verdict(&self, key: &VerdictKey, decision: &Decision) {
        if decision.verdict() != Verdict::Allow {
            return;
        }
        if let Some(store) = &self.gate.persisted {
            let (store, key, decision) = (store.clone(), key.clone(), decision.clone());
            let caching = self.caching.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.put(&key, &decision) {
                    caching.best_effort(&e, "cannot persist a verdict");
                }
            });
        }
    }

    async fn persisted_verdict(&self, key: &VerdictKey) -> Option<Decision> {
        let store = self.gate.persisted.clone()?;
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.get(&key))
            .await
            .ok()
            .flatten()
    }

    /// Discover and verify now, holding one of the bounded discovery slots.
    pub(super) async fn verify_now(
        &self,
        target: &Target,
        digest: &Digest,
        rule: &Rule,
        policy: &PolicySet,
    ) -> Result<Decision, Error> {
        let _slot = tokio::time::timeout(DISCOVERY_SLOT_WAIT, self.gate.discoveries.acquire())
            .await
            .map_err(|_| Error::Overloaded {
                what: "signature verifications",
            })?
            .map_err(|_| Error::Internal("discovery limiter closed".into()))?;
        let (evidence, notes) = Box::pin(self.collect_evidence(target, digest, rule, policy)).await?;
        let d = policy::eval::evaluate(policy, Some(rule), &evidence);
        Ok(if d.verdict() == Verdict::Deny {
            d.with_notes(notes)
        } else {
            d
        })
    }

    fn audit(&self, ask: &Ask<'_>, digest: &Digest, d: &Decision, revision: Option<&str>, cached: bool) {
        let (event, outcome, mode) = audit_event(ask, digest, d, revision, cached);
        self.metrics.admission(outcome, d.rule(), mode);
        if event.verdict != "allow" {
            tracing::warn!(repo = %event.repository, digest = %event.digest, verdict = event.verdict, rule = ?event.rule,
                revision = ?event.policy_revision, reason = %event.reason, "admission");
        }
        self.gate.audit.emit(&event);
    }
}

/// The audit event of a decision, and its metric labels.
pub(super) fn audit_event(
    ask: &Ask<'_>,
    digest: &Digest,
    d: &Decision,
    revision: Option<&str>,
    cached: bool,
) -> (AuditEvent, AdmissionOutcome, AdmissionMode) {
    {
        let outcome = match (d.verdict(), d.mode()) {
            (Verdict::Allow, _) => AdmissionOutcome::Allow,
            (Verdict::Deny, Mode::Audit) => AdmissionOutcome::WouldDeny,
            (Verdict::Deny, Mode::Enforce) => AdmissionOutcome::Deny,
        };
        let mode = match (revision, d.mode()) {
            (None, _) => AdmissionMode::IntegrityOnly,
            (Some(_), Mode::Enforce) => AdmissionMode::Enforce,
            (Some(_), Mode::Audit) => AdmissionMode::Audit,
        };
        let verdict = outcome.as_str();
        let event = AuditEvent {
            time: audit::now(),
            client: ask.who.client.clone(),
            identity: ask.who.identity.clone(),
            registry: ask.target.registry.host().to_string(),
            repository: ask.target.repo.to_string(),
            tag: ask.tag.map(|t| t.to_string()),
            digest: digest.to_string(),
            verdict,
            served: d.serves(),
            rule: d.rule().map(str::to_owned),
            mode: match d.mode() {
                Mode::Enforce => "enforce",
                Mode::Audit => "audit",
            },
            authorities_satisfied: d.satisfied().to_vec(),
            reason: d.reasons().join("; "),
            policy_revision: revision.map(str::to_owned),
            integrity_only: revision.is_none(),
            cached,
        };
        (event, outcome, mode)
    }
}

/// Whether a manifest is verification material of another image: it has a
/// material shape (`oci::material`, by allow-list) and either a `subject`
/// or the legacy tag of that kind. Anything else, whatever its tag or
/// `subject` say, is admitted on its own.
fn material_of(tag: Option<&Tag>, info: &ManifestInfo) -> Option<MaterialOf> {
    let kind = material::classify(info);
    if let Some(subject) = &info.subject {
        return kind.map(|_| MaterialOf {
            subject: subject.digest.clone(),
            why: "referrer of",
        });
    }
    let (subject, legacy) = material::legacy_tag(tag?.as_str())?;
    legacy.holds(kind, info.media_type.is_index()).then_some(MaterialOf {
        subject,
        why: if kind.is_some() {
            "verification material of"
        } else {
            "referrers index of"
        },
    })
}

/// The kinds of material whose blobs discovery reads (for `evidence`).
pub(super) fn is_kind(info: &ManifestInfo, kind: MaterialKind) -> bool {
    material::classify(info) == Some(kind)
}

fn denial_message(d: &Decision, policy: &PolicySet) -> String {
    let rule = d.rule().map_or("no rule matched".to_owned(), |r| format!("rule `{r}`"));
    format!(
        "denied by policy ({rule}, revision {}): {}",
        policy.short_revision(),
        d.reasons().join("; ")
    )
}
