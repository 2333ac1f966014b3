//! Assessment of a digest a watched tag points to: the gate's own decision
//! (same policy in force, same rule lookup, same signature discovery and
//! verification), computed afresh — never from a cached verdict, so a
//! removed signature or revoked key shows up — and audited (client
//! `portcullis watch`; not counted as an admission), but nothing is
//! admitted, cached or served.

use super::admission::{Ask, audit_event};
use super::manifest::Staleness;
use super::{Error, Proxy, Target, blocking};
use crate::oci::{Digest, Reference, Tag};
use crate::policy::{self, Decision, Evidence, Mode, Mutability, PolicySet, Rule, RuleAction, Verdict};
use crate::telemetry::Requester;

/// The policy's answer for a digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    Allowed,
    /// Denied by the policy (served anyway when the rule only audits).
    Denied,
    /// No definitive answer: verification material could not be fetched.
    Undecided,
}

impl Judgement {
    pub fn as_str(self) -> &'static str {
        match self {
            Judgement::Allowed => "allowed",
            Judgement::Denied => "denied",
            Judgement::Undecided => "undecided",
        }
    }
}

/// What the gate says about a digest now, with everything an event needs.
#[derive(Clone, Debug)]
pub struct Assessment {
    pub judgement: Judgement,
    /// Whether the rule only audits (a denial is then served anyway).
    pub audit_only: bool,
    pub rule: Option<String>,
    /// `None` in integrity-only mode.
    pub revision: Option<String>,
    pub satisfied: Vec<String>,
    /// Authorities the rule names that no verified signature satisfied.
    pub missing: Vec<String>,
    pub reasons: Vec<String>,
    /// How the rule treats a move of this tag.
    pub mutability: Mutability,
}

impl Proxy {
    /// Fetch and verify `digest`'s manifest from `target`, then decide it
    /// for `tag` under the policy in force, bypassing the verdict caches.
    /// Errors: the manifest could not be fetched or failed verification.
    pub async fn assess(&self, target: &Target, tag: &Tag, digest: &Digest) -> Result<Assessment, Error> {
        let who = Requester {
            client: "portcullis watch".to_owned(),
            identity: "portcullis watch".to_owned(),
        };
        self.assess_for(&who, target, tag, digest).await
    }

    /// [`Self::assess`] on behalf of `who` (the audit event's client).
    pub async fn assess_for(
        &self,
        who: &Requester,
        target: &Target,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Assessment, Error> {
        let reference = Reference::Digest(digest.clone());
        self.fetch_manifest(target, &reference, None, Staleness::FreshOnly)
            .await?;
        let ask = Ask {
            target,
            tag: Some(tag),
            who,
        };
        let Some(policy) = self.gate.policy() else {
            let d = Decision::integrity_only();
            self.audit_assessment(&ask, digest, &d, None);
            return Ok(assessment(&d, None, None, Judgement::Allowed, Mutability::Allow));
        };
        let rule = policy.rule_for(
            target.registry.host().as_str(),
            target.repo.as_str(),
            Some(tag.as_str()),
        );
        let (d, undecided) = self.fresh_decision(target, tag, digest, rule, &policy).await;
        self.audit_assessment(&ask, digest, &d, Some(&policy.revision));
        let judgement = match (undecided, d.verdict()) {
            (true, _) => Judgement::Undecided,
            (false, Verdict::Allow) => Judgement::Allowed,
            (false, Verdict::Deny) => Judgement::Denied,
        };
        let mutability = rule.map_or(Mutability::Allow, |r| r.mutable_tags);
        Ok(assessment(&d, Some(&policy), rule, judgement, mutability))
    }

    /// The decision, and whether it is only a denial for want of material.
    async fn fresh_decision(
        &self,
        target: &Target,
        tag: &Tag,
        digest: &Digest,
        rule: Option<&Rule>,
        policy: &PolicySet,
    ) -> (Decision, bool) {
        if let Some(r) = rule.filter(|r| r.require_digest) {
            return (
                Decision::denied_by(r, format!("rule requires pulls by digest; `{tag}` is a tag")),
                false,
            );
        }
        let Some(rule) = rule.filter(|r| matches!(r.action, RuleAction::Verify(_))) else {
            return (policy::eval::evaluate(policy, rule, &Evidence::default()), false);
        };
        match Box::pin(self.verify_now(target, digest, rule, policy)).await {
            Ok(d) => (d, false),
            Err(e) => (
                Decision::denied_by(rule, format!("verification material could not be fetched ({e})")),
                true,
            ),
        }
    }

    /// The audit event of an assessment. Not counted in the admission
    /// metrics: nothing was admitted or refused to a client.
    fn audit_assessment(&self, ask: &Ask<'_>, digest: &Digest, d: &Decision, revision: Option<&str>) {
        let (event, _, _) = audit_event(ask, digest, d, revision, false);
        self.gate.audit_sink().emit(&event);
    }

    /// The digest the proxy serves for `tag` (its last admitted one), which
    /// a `mutable: deny` rule pins.
    pub async fn served_digest(&self, target: &Target, tag: &Tag) -> Result<Option<Digest>, Error> {
        let (host, repo, t) = (target.registry.host().clone(), target.repo.clone(), tag.clone());
        let store = self.store.clone();
        blocking(move || store.tags.last(&host, &repo, &t)).await
    }
}

fn assessment(
    d: &Decision,
    policy: Option<&PolicySet>,
    rule: Option<&Rule>,
    judgement: Judgement,
    mutability: Mutability,
) -> Assessment {
    let satisfied = d.satisfied().to_vec();
    let missing = rule
        .map(required_authorities)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !satisfied.contains(a))
        .collect();
    Assessment {
        judgement,
        audit_only: d.mode() == Mode::Audit,
        rule: d.rule().map(str::to_owned),
        revision: policy.map(|p| p.revision.clone()),
        satisfied,
        missing,
        reasons: d.reasons().to_vec(),
        mutability,
    }
}

/// Every authority a rule names, in order, once each.
fn required_authorities(rule: &Rule) -> Vec<String> {
    let RuleAction::Verify(req) = &rule.action else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let signatures = req.signatures.iter().flat_map(|s| s.required.iter().chain(&s.any_of));
    let attestations = req.attestations.iter().flat_map(|a| &a.authorities);
    for n in signatures.chain(attestations) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}
