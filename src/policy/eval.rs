//! Pure evaluation: a rule plus the evidence verified for one manifest
//! digest → a [`Decision`] with reasons. No I/O; cryptography happened
//! before, in `verify`, and produced the [`Evidence`].

use std::collections::{BTreeMap, BTreeSet};

use super::{AttestationRequirement, Mode, NoMatch, PolicySet, Rule, RuleAction, SignatureRequirement, StaticVerdict};

/// What verified, per authority, for one manifest digest.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// Authority → what it verified (e.g. "legacy .sig layer 0, key release-2026").
    pub signatures: BTreeMap<String, Vec<String>>,
    pub attestations: Vec<VerifiedAttestation>,
}

/// An attestation whose signature verified under `authority` and whose
/// statement subject names the image digest.
#[derive(Clone, Debug)]
pub struct VerifiedAttestation {
    pub authority: String,
    pub predicate_type: String,
    pub statement: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The outcome of evaluating a policy for one digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub mode: Mode,
    /// The rule that decided (`None`: no rule matched).
    pub rule: Option<String>,
    /// Authorities whose requirement was met.
    pub satisfied: Vec<String>,
    /// Why (for a denial: what was missing or wrong).
    pub reasons: Vec<String>,
}

impl Decision {
    /// Whether the content may be served: allowed, or denied only in audit.
    pub fn serves(&self) -> bool {
        self.verdict == Verdict::Allow || self.mode == Mode::Audit
    }
}

/// Decide for `rule` (the first match, or `None`) given `evidence`.
pub fn evaluate(policy: &PolicySet, rule: Option<&Rule>, evidence: &Evidence) -> Decision {
    let Some(rule) = rule else {
        let verdict = match policy.no_match {
            NoMatch::Deny => Verdict::Deny,
            NoMatch::Allow => Verdict::Allow,
        };
        return Decision {
            verdict,
            mode: Mode::Enforce,
            rule: None,
            satisfied: Vec::new(),
            reasons: vec![format!("no policy rule matches (noMatch: {verdict:?})").to_lowercase()],
        };
    };
    let (verdict, satisfied, reasons) = match &rule.action {
        RuleAction::Static(StaticVerdict::Allow) => (Verdict::Allow, Vec::new(), vec!["static allow".to_owned()]),
        RuleAction::Static(StaticVerdict::Deny) => (Verdict::Deny, Vec::new(), vec!["static deny".to_owned()]),
        RuleAction::Verify(req) => {
            let mut satisfied = BTreeSet::new();
            let mut reasons = Vec::new();
            let mut ok = true;
            if let Some(sig) = &req.signatures {
                ok &= signatures(sig, evidence, &mut satisfied, &mut reasons);
            }
            for att in &req.attestations {
                ok &= attestation(att, evidence, &mut satisfied, &mut reasons);
            }
            let verdict = if ok { Verdict::Allow } else { Verdict::Deny };
            (verdict, satisfied.into_iter().collect(), reasons)
        }
    };
    Decision {
        verdict,
        mode: rule.mode,
        rule: Some(rule.name.clone()),
        satisfied,
        reasons,
    }
}

fn signatures(
    req: &SignatureRequirement,
    evidence: &Evidence,
    satisfied: &mut BTreeSet<String>,
    reasons: &mut Vec<String>,
) -> bool {
    let met: Vec<&String> = req
        .any_of
        .iter()
        .filter(|a| evidence.signatures.get(*a).is_some_and(|v| !v.is_empty()))
        .collect();
    satisfied.extend(met.iter().map(|s| (*s).clone()));
    let mut ok = true;
    if met.len() < req.threshold {
        ok = false;
        reasons.push(format!(
            "signatures: {} of {} required authorities verified ({}; needed {} of [{}])",
            met.len(),
            req.threshold,
            if met.is_empty() {
                "none".to_owned()
            } else {
                join(met.iter().copied())
            },
            req.threshold,
            join(req.any_of.iter())
        ));
    }
    for r in &req.required {
        if !met.contains(&r) {
            ok = false;
            reasons.push(format!("signatures: required authority `{r}` did not verify"));
        }
    }
    if ok {
        reasons.push(format!("signatures verified by {}", join(met.iter().copied())));
    }
    ok
}

fn attestation(
    req: &AttestationRequirement,
    evidence: &Evidence,
    satisfied: &mut BTreeSet<String>,
    reasons: &mut Vec<String>,
) -> bool {
    let mut met = Vec::new();
    let mut failures = Vec::new();
    for authority in &req.authorities {
        let candidates: Vec<&VerifiedAttestation> = evidence
            .attestations
            .iter()
            .filter(|a| &a.authority == authority && a.predicate_type == req.predicate_type)
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let passing = candidates
            .iter()
            .find(|a| req.checks.iter().all(|c| c.evaluate(&a.statement).is_ok()));
        match passing {
            Some(_) => met.push(authority.clone()),
            None => {
                let first_failure = candidates
                    .iter()
                    .flat_map(|a| req.checks.iter().filter_map(|c| c.evaluate(&a.statement).err()))
                    .next()
                    .unwrap_or_default();
                failures.push(format!("`{authority}`: {first_failure}"));
            }
        }
    }
    let ok = met.len() >= req.threshold;
    if ok {
        reasons.push(format!(
            "attestation `{}` ({}) verified by {}",
            req.name,
            req.predicate_type,
            join(met.iter())
        ));
        satisfied.extend(met);
    } else {
        let detail = if failures.is_empty() {
            "no verified attestation of that type".to_owned()
        } else {
            failures.join("; ")
        };
        reasons.push(format!(
            "attestation `{}` ({}): {} of {} authorities satisfied: {detail}",
            req.name,
            req.predicate_type,
            met.len(),
            req.threshold
        ));
    }
    ok
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items.map(String::as_str).collect::<Vec<_>>().join(", ")
}
