//! Pure evaluation: a rule plus the evidence verified for one manifest
//! digest → a [`Decision`] with reasons. No I/O; cryptography happened
//! before, in `verify`, and produced the [`Evidence`].

use std::collections::{BTreeMap, BTreeSet};

use super::{AttestationRequirement, Mode, NoMatch, PolicySet, Rule, RuleAction, SignatureRequirement, StaticVerdict};
use crate::verify::signature::SignerId;

/// What verified for one manifest digest: each signature and attestation
/// with the authority that accepted it and who signed it.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub signatures: Vec<VerifiedSignature>,
    pub attestations: Vec<VerifiedAttestation>,
}

impl Evidence {
    /// The distinct signers of the signatures `authority` accepted.
    fn signature_signers(&self, authority: &str) -> Vec<&SignerId> {
        let signers: BTreeSet<&SignerId> = self
            .signatures
            .iter()
            .filter(|s| s.authority == authority)
            .map(|s| &s.signer)
            .collect();
        signers.into_iter().collect()
    }
}

/// A signature that verified under `authority` for the image digest.
#[derive(Clone, Debug)]
pub struct VerifiedSignature {
    pub authority: String,
    pub signer: SignerId,
    /// Where it was found (e.g. "sha256-….sig layer 0 signed by release-2026").
    pub source: String,
}

/// An attestation whose signature verified under `authority` and whose
/// statement subject names the image digest.
#[derive(Clone, Debug)]
pub struct VerifiedAttestation {
    pub authority: String,
    pub signer: SignerId,
    pub predicate_type: String,
    pub statement: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The outcome of evaluating a policy for one digest. Fields are private:
/// a decision is made by [`evaluate`] or by one of the named constructors,
/// each of which says what kind of decision it is, and is then only read
/// (or given more reasons).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    verdict: Verdict,
    mode: Mode,
    /// The rule that decided (`None`: no rule matched).
    rule: Option<String>,
    /// Authorities whose requirement was met.
    satisfied: Vec<String>,
    /// The distinct signers whose signatures or attestations verified under
    /// those authorities (what separation of roles compares: two
    /// authorities may accept the same key or keyless identity). Verdicts
    /// cached before this field existed read as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signers: Vec<SignerId>,
    /// Why (for a denial: what was missing or wrong).
    reasons: Vec<String>,
}

impl Decision {
    /// Integrity-only mode: no policy, content served when it matches its
    /// digests (and every audit event says so).
    pub fn integrity_only() -> Decision {
        Decision {
            verdict: Verdict::Allow,
            mode: Mode::Enforce,
            rule: None,
            satisfied: Vec::new(),
            signers: Vec::new(),
            reasons: vec!["integrity-only mode: no signature policy; bytes verified by digest".into()],
        }
    }

    /// A denial by `rule` for a reason found before any evidence was
    /// weighed (a tag where the rule wants digests; verification material
    /// that could not be fetched). Denials in audit mode still serve.
    pub fn denied_by(rule: &Rule, reason: String) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            mode: rule.mode,
            rule: Some(rule.name.clone()),
            satisfied: Vec::new(),
            signers: Vec::new(),
            reasons: vec![reason],
        }
    }

    /// Whether the content may be served: allowed, or denied only in audit.
    pub fn serves(&self) -> bool {
        self.verdict == Verdict::Allow || self.mode == Mode::Audit
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rule that decided (`None`: no rule matched, or integrity-only).
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// Authorities whose requirement was met.
    pub fn satisfied(&self) -> &[String] {
        &self.satisfied
    }

    /// Who signed for the satisfied authorities.
    pub fn signers(&self) -> &[SignerId] {
        &self.signers
    }

    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// The same decision, with `why` (how it came to apply here) first.
    pub fn explained(mut self, why: String) -> Decision {
        self.reasons.insert(0, why);
        self
    }

    /// The same decision with further notes (what was found but did not
    /// verify) after its reasons.
    pub fn with_notes(mut self, notes: impl IntoIterator<Item = String>) -> Decision {
        self.reasons.extend(notes);
        self
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
            signers: Vec::new(),
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
    let signers = signers_of(evidence, &satisfied);
    Decision {
        verdict,
        mode: rule.mode,
        rule: Some(rule.name.clone()),
        satisfied,
        signers,
        reasons,
    }
}

/// The distinct signers of the verified signatures and attestations under
/// `authorities`.
fn signers_of(evidence: &Evidence, authorities: &[String]) -> Vec<SignerId> {
    let signatures = evidence.signatures.iter().map(|s| (&s.authority, &s.signer));
    let attestations = evidence.attestations.iter().map(|a| (&a.authority, &a.signer));
    let signers: BTreeSet<&SignerId> = signatures
        .chain(attestations)
        .filter(|(authority, _)| authorities.contains(authority))
        .map(|(_, signer)| signer)
        .collect();
    signers.into_iter().cloned().collect()
}

fn signatures(
    req: &SignatureRequirement,
    evidence: &Evidence,
    satisfied: &mut BTreeSet<String>,
    reasons: &mut Vec<String>,
) -> bool {
    // Required authorities first: the assignment keeps the signers it gave
    // to earlier authorities, so a required one loses its signer only when
    // no assignment can give every required authority its own.
    let order: Vec<&String> = req
        .required
        .iter()
        .chain(req.any_of.iter().filter(|a| !req.required.contains(a)))
        .collect();
    let verified: Vec<(&String, Vec<&SignerId>)> = order
        .into_iter()
        .map(|a| (a, evidence.signature_signers(a)))
        .filter(|(_, signers)| !signers.is_empty())
        .collect();
    let signers: Vec<Vec<&SignerId>> = verified.iter().map(|(_, s)| s.clone()).collect();
    let counts = distinct_signers(&signers);
    // Reported in `anyOf` order, as written in the policy.
    let counted: Vec<&String> = req
        .any_of
        .iter()
        .filter(|a| verified.iter().zip(&counts).any(|((v, _), c)| *c && v == a))
        .collect();
    let uncounted: Vec<&String> = req
        .any_of
        .iter()
        .filter(|a| verified.iter().any(|(v, _)| v == a) && !counted.contains(a))
        .collect();
    satisfied.extend(verified.iter().map(|(a, _)| (*a).clone()));
    let mut ok = true;
    if counted.len() < req.threshold {
        ok = false;
        reasons.push(format!(
            "signatures: {} of {} required authorities verified ({}; needed {} of [{}]){}",
            counted.len(),
            req.threshold,
            if counted.is_empty() {
                "none".to_owned()
            } else {
                join(counted.iter().copied())
            },
            req.threshold,
            join(req.any_of.iter()),
            shared_signer_note(&uncounted)
        ));
    }
    for r in &req.required {
        if uncounted.contains(&r) {
            ok = false;
            reasons.push(format!(
                "signatures: required authority `{r}` verified only by a signer already counted for another authority"
            ));
        } else if !counted.contains(&r) {
            ok = false;
            reasons.push(format!("signatures: required authority `{r}` did not verify"));
        }
    }
    if ok {
        reasons.push(format!("signatures verified by {}", join(counted.iter().copied())));
    }
    ok
}

/// Why authorities that verified were not counted.
fn shared_signer_note(uncounted: &[&String]) -> String {
    if uncounted.is_empty() {
        String::new()
    } else {
        format!(
            "; {} verified only by signers already counted (a signer counts once)",
            join(uncounted.iter().copied())
        )
    }
}

/// Which authorities count toward a threshold when each signer may count
/// for one authority only: a maximum matching between authorities and the
/// signers they verified (augmenting paths; a handful of authorities).
/// `signers[i]` are the distinct signers authority `i` verified; the result
/// says whether authority `i` counts. Earlier authorities keep their signer
/// when later ones are placed.
fn distinct_signers(signers: &[Vec<&SignerId>]) -> Vec<bool> {
    let mut owner: BTreeMap<&SignerId, usize> = BTreeMap::new();
    for authority in 0..signers.len() {
        let mut visited = BTreeSet::new();
        assign(authority, signers, &mut owner, &mut visited);
    }
    let owners: BTreeSet<usize> = owner.into_values().collect();
    (0..signers.len()).map(|a| owners.contains(&a)).collect()
}

/// Give `authority` a signer, moving other authorities to other signers of
/// theirs where needed. Whether it got one.
fn assign<'a>(
    authority: usize,
    signers: &[Vec<&'a SignerId>],
    owner: &mut BTreeMap<&'a SignerId, usize>,
    visited: &mut BTreeSet<&'a SignerId>,
) -> bool {
    for &signer in &signers[authority] {
        if !visited.insert(signer) {
            continue;
        }
        let free = match owner.get(signer) {
            None => true,
            Some(&other) => assign(other, signers, owner, visited),
        };
        if free {
            owner.insert(signer, authority);
            return true;
        }
    }
    false
}

fn attestation(
    req: &AttestationRequirement,
    evidence: &Evidence,
    satisfied: &mut BTreeSet<String>,
    reasons: &mut Vec<String>,
) -> bool {
    let mut passed: Vec<(&String, Vec<&SignerId>)> = Vec::new();
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
        let passing: BTreeSet<&SignerId> = candidates
            .iter()
            .filter(|a| req.checks.iter().all(|c| c.evaluate(&a.statement).is_ok()))
            .map(|a| &a.signer)
            .collect();
        if passing.is_empty() {
            let first_failure = candidates
                .iter()
                .flat_map(|a| req.checks.iter().filter_map(|c| c.evaluate(&a.statement).err()))
                .next()
                .unwrap_or_default();
            failures.push(format!("`{authority}`: {first_failure}"));
        } else {
            passed.push((authority, passing.into_iter().collect()));
        }
    }
    let signers: Vec<Vec<&SignerId>> = passed.iter().map(|(_, s)| s.clone()).collect();
    let counts = distinct_signers(&signers);
    let mut met = Vec::new();
    for ((authority, _), counted) in passed.iter().zip(counts) {
        if counted {
            met.push((*authority).clone());
        } else {
            failures.push(format!("`{authority}`: verified only by signers already counted"));
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
