//! Admission: before any byte of a manifest is served, its digest must
//! satisfy the signature policy.
//!
//! ```text
//! manifest (verified by digest)
//!   ├─ integrity-only mode ───────────────────────────────► allow (said in the audit event)
//!   ├─ listed by an admitted index (indexCoversChildren) ──► the index's decision
//!   ├─ `sha256-<hex>[.sig|.att|.sbom]` tag or a referrer ──► the subject's decision
//!   │  (never for runnable images; such an index vouches for nothing)
//!   └─ rule = first match (registry, repository, tag)
//!        requireDigest and a tag ──────────────────────────► deny
//!        static / no rule ─────────────────────────────────► policy.evaluate
//!        verify: verdict cache (digest, revision, rule + repository), one at a time
//!                 └─ proxy::evidence: discover (referrers + fallback, .sig, .att; bounded)
//!                    → verify each candidate per authority (blocking pool)
//!                    → Evidence → policy.evaluate → Decision (allows persisted)
//! serve ⇔ decision.serves(); then blobs it references are granted for this
//! repository and, for an index with indexCoversChildren, its children.
//! ```
//! Transient failures (upstream errors, timeouts) are never cached and
//! never allow.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{Error, Proxy, Target};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};
use crate::policy::{self, Decision, Evidence, Mode, Mutability, PolicySet, Rule, RuleAction, Verdict};
use crate::store::verdicts::VerdictStore;
use crate::telemetry::audit::{self, AuditEvent, AuditSink};
use crate::telemetry::metrics::{self, AdmissionOutcome};
use crate::verify::VerifiedManifest;

/// How long a denial is remembered (so a newly signed image is admitted soon).
const DENIAL_TTL: Duration = Duration::from_secs(30);

/// (digest, policy revision, "rule registry/repository").
type VerdictKey = (Digest, String, String);
type RepoKey = (RegistryHost, RepoName, Digest);
/// A vouched-for manifest: repository, digest and the policy revision
/// under which its parent was admitted (a reload invalidates it).
type VouchKey = (RegistryHost, RepoName, Digest, String);

/// The admission state: the current policy, verdict cache, vouched-for
/// manifests and the blobs each repository may serve.
pub struct Gate {
    policy: Option<RwLock<Arc<PolicySet>>>,
    policy_dir: Option<PathBuf>,
    verdicts: moka::future::Cache<VerdictKey, Arc<Decision>>,
    persisted: Option<VerdictStore>,
    vouched: moka::sync::Cache<VouchKey, Arc<(Decision, String)>>,
    /// Granted blobs, with the size their descriptor states.
    grants: moka::sync::Cache<RepoKey, u64>,
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

impl moka::Expiry<VerdictKey, Arc<Decision>> for VerdictExpiry {
    fn expire_after_create(&self, _k: &VerdictKey, v: &Arc<Decision>, _now: std::time::Instant) -> Option<Duration> {
        (v.verdict == Verdict::Deny).then_some(DENIAL_TTL)
    }
}

impl Gate {
    /// `policy: None` is integrity-only mode.
    pub fn new(policy: Option<(PolicySet, PathBuf)>, verdict_dir: PathBuf, audit: AuditSink) -> Gate {
        let (policy, policy_dir) = match policy {
            Some((p, dir)) => (Some(RwLock::new(Arc::new(p))), Some(dir)),
            None => (None, None),
        };
        Gate {
            persisted: policy.as_ref().map(|_| VerdictStore::new(verdict_dir)),
            policy,
            policy_dir,
            verdicts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(VerdictExpiry)
                .build(),
            vouched: moka::sync::Cache::new(200_000),
            grants: moka::sync::Cache::new(2_000_000),
            audit,
        }
    }

    /// The policy in force (`None` in integrity-only mode).
    pub fn policy(&self) -> Option<Arc<PolicySet>> {
        self.policy.as_ref().and_then(|p| p.read().ok().map(|g| g.clone()))
    }

    /// The audit sink (the `verify` command reads its events back).
    pub fn audit_sink(&self) -> &AuditSink {
        &self.audit
    }

    pub fn policy_dir(&self) -> Option<&PathBuf> {
        self.policy_dir.as_ref()
    }

    /// Swap in a new, fully compiled policy. Cached verdicts of the old
    /// revision no longer match (the revision is part of every key).
    pub fn replace_policy(&self, new: PolicySet) {
        if let Some(lock) = &self.policy
            && let Ok(mut p) = lock.write()
        {
            *p = Arc::new(new);
        }
    }

    fn grant(&self, host: &RegistryHost, repo: &RepoName, m: &VerifiedManifest) {
        if m.media_type().is_index() {
            return;
        }
        for d in &m.info().references {
            self.grants
                .insert((host.clone(), repo.clone(), d.digest.clone()), d.size);
        }
    }

    /// Whether a blob may be served from this repository.
    pub fn blob_allowed(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> bool {
        self.policy.is_none() || self.grants.contains_key(&(host.clone(), repo.clone(), digest.clone()))
    }

    /// The size an admitted manifest's descriptor states for a granted blob
    /// (verified: the manifest's digest covers it).
    pub fn granted_size(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.grants.get(&(host.clone(), repo.clone(), digest.clone()))
    }
}

/// Who asked and for what, for the audit event.
struct Ask<'a> {
    target: &'a Target,
    tag: Option<&'a Tag>,
    client: &'a str,
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

    /// Admit `manifest` for serving, or refuse with `Error::Denied`.
    pub(super) async fn admit(
        &self,
        target: &Target,
        tag: Option<&Tag>,
        manifest: &VerifiedManifest,
        client: &str,
    ) -> Result<(), Error> {
        let ask = Ask { target, tag, client };
        let Some(policy) = self.gate.policy() else {
            let d = Decision {
                verdict: Verdict::Allow,
                mode: Mode::Enforce,
                rule: None,
                satisfied: Vec::new(),
                reasons: vec!["integrity-only mode: no signature policy; bytes verified by digest".into()],
            };
            self.audit(&ask, manifest.digest(), &d, None, false);
            return Ok(());
        };
        let host = target.registry.host().clone();
        let key = (
            host.clone(),
            target.repo.clone(),
            manifest.digest().clone(),
            policy.revision.clone(),
        );
        if let Some(v) = self.gate.vouched.get(&key) {
            let (decision, why) = &*v;
            let mut d = decision.clone();
            d.reasons.insert(0, why.clone());
            return self.conclude(&ask, manifest, &d, &policy, true, true);
        }
        if let Some((subject, why)) = material_subject(tag, manifest) {
            let rule = policy.rule_for(host.as_str(), target.repo.as_str(), None);
            let (mut d, cached) = self.decide(target, &subject, rule, &policy).await;
            d.reasons.insert(0, format!("{why} {subject}"));
            // Material is served under its subject's decision, but an index
            // in a material tag (e.g. the referrers fallback) vouches for
            // nothing: what it lists is admitted on its own.
            return self.conclude(&ask, manifest, &d, &policy, cached, false);
        }
        let rule = policy.rule_for(host.as_str(), target.repo.as_str(), tag.map(Tag::as_str));
        if let (Some(r), Some(t)) = (rule, tag)
            && r.require_digest
        {
            let d = Decision {
                verdict: Verdict::Deny,
                mode: r.mode,
                rule: Some(r.name.clone()),
                satisfied: Vec::new(),
                reasons: vec![format!("rule requires pulls by digest; `{t}` is a tag")],
            };
            return self.conclude(&ask, manifest, &d, &policy, false, true);
        }
        let (d, cached) = self.decide(target, manifest.digest(), rule, &policy).await;
        self.conclude(&ask, manifest, &d, &policy, cached, true)
    }

    /// Audit, then serve or refuse. A served index vouches for its children
    /// when the rule says so (and `vouches`: not for verification material);
    /// a served manifest grants its blobs.
    fn conclude(
        &self,
        ask: &Ask<'_>,
        manifest: &VerifiedManifest,
        d: &Decision,
        policy: &PolicySet,
        cached: bool,
        vouches: bool,
    ) -> Result<(), Error> {
        self.audit(ask, manifest.digest(), d, Some(&policy.revision), cached);
        if !d.serves() {
            return Err(Error::Denied {
                message: denial_message(d, policy),
            });
        }
        let host = ask.target.registry.host();
        self.gate.grant(host, &ask.target.repo, manifest);
        let covers = d
            .rule
            .as_ref()
            .and_then(|name| policy.rules.iter().find(|r| &r.name == name))
            .is_none_or(|r| r.index_covers_children);
        if vouches && manifest.media_type().is_index() && covers {
            let why = format!("listed by admitted index {}", manifest.digest());
            for child in &manifest.info().references {
                let key = (
                    host.clone(),
                    ask.target.repo.clone(),
                    child.digest.clone(),
                    policy.revision.clone(),
                );
                self.gate.vouched.insert(key, Arc::new((d.clone(), why.clone())));
            }
        }
        Ok(())
    }

    /// The decision for `digest` under `rule`: from the cache, or verified
    /// now (one verification per key at a time). Returns whether it was cached.
    async fn decide(
        &self,
        target: &Target,
        digest: &Digest,
        rule: Option<&Rule>,
        policy: &PolicySet,
    ) -> (Decision, bool) {
        let Some(rule) = rule.filter(|r| matches!(r.action, RuleAction::Verify(_))) else {
            return (policy::eval::evaluate(policy, rule, &Evidence::default()), false);
        };
        // Signatures are discovered in the repository pulled from, so the
        // verdict is per repository: a denial where no signature is found
        // must not refuse the same digest where it is signed.
        let scope = format!("{} {}/{}", rule.name, target.registry.host(), target.repo);
        let key: VerdictKey = (digest.clone(), policy.revision.clone(), scope);
        if let Some(d) = self.gate.verdicts.get(&key).await {
            return ((*d).clone(), true);
        }
        if let Some(d) = self.gate.persisted.as_ref().and_then(|s| s.get(&key)) {
            let d = Arc::new(d);
            self.gate.verdicts.insert(key, d.clone()).await;
            return ((*d).clone(), true);
        }
        let started = Instant::now();
        let verified = self
            .gate
            .verdicts
            .try_get_with(key.clone(), async {
                let (evidence, notes) = self.collect_evidence(target, digest, rule, policy).await?;
                let mut d = policy::eval::evaluate(policy, Some(rule), &evidence);
                if d.verdict == Verdict::Deny {
                    d.reasons.extend(notes);
                }
                if d.verdict == Verdict::Allow
                    && let Some(store) = &self.gate.persisted
                {
                    store.put(&key, &d);
                }
                Ok::<_, Error>(Arc::new(d))
            })
            .await;
        match verified {
            Ok(d) => {
                tracing::debug!(%digest, rule = %rule.name, ms = started.elapsed().as_millis() as u64, verdict = ?d.verdict, "verified");
                ((*d).clone(), false)
            }
            // No definitive verdict: deny, and cache nothing.
            Err(e) => (
                Decision {
                    verdict: Verdict::Deny,
                    mode: rule.mode,
                    rule: Some(rule.name.clone()),
                    satisfied: Vec::new(),
                    reasons: vec![format!(
                        "verification material could not be fetched ({e}); not cached, retry later"
                    )],
                },
                false,
            ),
        }
    }

    fn audit(&self, ask: &Ask<'_>, digest: &Digest, d: &Decision, revision: Option<&str>, cached: bool) {
        let verdict = match (d.verdict, d.mode) {
            (Verdict::Allow, _) => "allow",
            (Verdict::Deny, Mode::Audit) => "would-deny",
            (Verdict::Deny, Mode::Enforce) => "deny",
        };
        let event = AuditEvent {
            time: audit::now(),
            client: ask.client.to_owned(),
            registry: ask.target.registry.host().to_string(),
            repository: ask.target.repo.to_string(),
            tag: ask.tag.map(|t| t.to_string()),
            digest: digest.to_string(),
            verdict,
            served: d.serves(),
            rule: d.rule.clone(),
            mode: match d.mode {
                Mode::Enforce => "enforce",
                Mode::Audit => "audit",
            },
            authorities_satisfied: d.satisfied.clone(),
            reason: d.reasons.join("; "),
            policy_revision: revision.map(str::to_owned),
            integrity_only: revision.is_none(),
            cached,
        };
        metrics::global().admission(match verdict {
            "allow" => AdmissionOutcome::Allow,
            "would-deny" => AdmissionOutcome::WouldDeny,
            _ => AdmissionOutcome::Deny,
        });
        if verdict != "allow" {
            tracing::warn!(repo = %event.repository, digest = %event.digest, verdict, rule = ?event.rule,
                revision = ?event.policy_revision, reason = %event.reason, "admission");
        }
        self.gate.audit.emit(&event);
    }
}

/// Whether `manifest` is verification material of another image: a
/// `sha256-<hex>[.sig|.att|.sbom]` tag, or a manifest with a `subject`.
/// A runnable image (container image layers) is never material, whatever
/// its tag or `subject` say: it must be admitted on its own.
fn material_subject(tag: Option<&Tag>, manifest: &VerifiedManifest) -> Option<(Digest, &'static str)> {
    let image_layer = |t: &str| {
        t.starts_with("application/vnd.oci.image.layer.") || t.starts_with("application/vnd.docker.image.rootfs.")
    };
    if manifest.info().references.iter().any(|d| image_layer(&d.media_type)) {
        return None;
    }
    if let Some(subject) = &manifest.info().subject {
        return Some((subject.digest.clone(), "referrer of"));
    }
    let t = tag?.as_str();
    let base = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| t.strip_suffix(s))
        .unwrap_or(t);
    let (alg, hex) = base.split_once('-')?;
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some((digest, "verification material of"))
}

fn denial_message(d: &Decision, policy: &PolicySet) -> String {
    let rule = d
        .rule
        .as_deref()
        .map_or("no rule matched".to_owned(), |r| format!("rule `{r}`"));
    format!(
        "denied by policy ({rule}, revision {}): {}",
        policy.short_revision(),
        d.reasons.join("; ")
    )
}
