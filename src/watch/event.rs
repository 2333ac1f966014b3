//! A watch event as queued and audited: what was observed about one tag,
//! with the gate's verdict and everything a responder needs. Sinks render
//! it (`render`); the queued form is this JSON, so a re-sent event is
//! byte-identical.

use serde::{Deserialize, Serialize};

use crate::oci::{Algorithm, Digest};
use crate::proxy::Assessment;
use crate::telemetry::watch_metrics::{WatchEventKind, WatchVerdict};

/// One event. `id` is fixed when the event is created and never changes,
/// so receivers de-duplicate re-deliveries by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    pub id: String,
    /// `tag.moved`, `tag.created`, `tag.deleted`, `signature.lost`,
    /// `tag.pinned`, `verdict.decided` or `watch.failed`.
    pub event: String,
    pub registry: String,
    pub repository: String,
    pub tag: String,
    /// The digest the tag pointed to before (moved, deleted, pinned: the
    /// digest the proxy keeps serving).
    pub old_digest: Option<String>,
    /// The digest it points to now (moved, created, pinned: the refused
    /// move's digest; signature.lost: the digest that lost it;
    /// verdict.decided: the digest now judged).
    pub new_digest: Option<String>,
    /// The gate's verdict for `newDigest`: `allowed`, `denied` or `undecided`.
    pub verdict: Option<String>,
    /// Whether the rule only audits (a denial is served anyway).
    pub audit_only: bool,
    pub rule: Option<String>,
    pub policy_revision: Option<String>,
    pub authorities_satisfied: Vec<String>,
    pub authorities_missing: Vec<String>,
    /// Why (denial reasons, the failure for `watch.failed`).
    pub reasons: Vec<String>,
    /// RFC 3339.
    pub observed_at: String,
}

/// Where an event is about.
#[derive(Clone, Copy, Debug)]
pub struct About<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub tag: &'a str,
}

impl WatchEvent {
    /// A new event with a fresh id.
    pub fn new(
        kind: WatchEventKind,
        about: About<'_>,
        old: Option<&Digest>,
        new: Option<&Digest>,
        assessment: Option<&Assessment>,
    ) -> WatchEvent {
        let observed_at = jiff::Timestamp::now().to_string();
        let (old_digest, new_digest) = (old.map(Digest::to_string), new.map(Digest::to_string));
        let seed = format!(
            "{}\n{}\n{}\n{}\n{old_digest:?}\n{new_digest:?}\n{observed_at}\n{}",
            kind.as_str(),
            about.registry,
            about.repository,
            about.tag,
            fastrand::u64(..)
        );
        let a = assessment;
        WatchEvent {
            id: Digest::of(Algorithm::Sha256, seed.as_bytes()).hex(),
            event: kind.as_str().to_owned(),
            registry: about.registry.to_owned(),
            repository: about.repository.to_owned(),
            tag: about.tag.to_owned(),
            old_digest,
            new_digest,
            verdict: a.map(|a| a.judgement.as_str().to_owned()),
            audit_only: a.is_some_and(|a| a.audit_only),
            rule: a.and_then(|a| a.rule.clone()),
            policy_revision: a.and_then(|a| a.revision.clone()),
            authorities_satisfied: a.map(|a| a.satisfied.clone()).unwrap_or_default(),
            authorities_missing: a.map(|a| a.missing.clone()).unwrap_or_default(),
            reasons: a.map(|a| a.reasons.clone()).unwrap_or_default(),
            observed_at,
        }
    }

    /// A `watch.failed` event naming the failure.
    pub fn failed(about: About<'_>, reason: String) -> WatchEvent {
        let mut e = WatchEvent::new(WatchEventKind::WatchFailed, about, None, None, None);
        e.reasons = vec![reason];
        e
    }

    pub fn verdict_label(&self) -> WatchVerdict {
        match self.verdict.as_deref() {
            Some("allowed") => WatchVerdict::Allowed,
            Some("denied") => WatchVerdict::Denied,
            Some("undecided") => WatchVerdict::Undecided,
            _ => WatchVerdict::None,
        }
    }

    /// `registry/repository:tag`.
    pub fn subject(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// The audit log's form: the event under `"record": "watch"`.
#[derive(Serialize)]
pub struct AuditRecord<'a> {
    pub record: &'static str,
    #[serde(flatten)]
    pub event: &'a WatchEvent,
}
