//! Authorities that could accept the same signer.
//!
//! Thresholds count distinct signers ([`super::eval`]), so a shared signer
//! never counts twice. A policy whose authorities share one still does not
//! say what its author meant (a 2-of-2 that one key satisfies): two
//! authorities naming the same key are refused, and keyless identities that
//! may match the same certificate are reported as warnings.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex_syntax::hir::literal::{ExtractKind, Extractor};

use super::{Authority, AuthorityKind, Identity, Matcher};
use crate::oci::Digest;

/// Two authorities that accept one key: (authority, key name) each.
pub(super) struct SharedKey {
    pub first: (String, String),
    pub second: (String, String),
    pub fingerprint: Digest,
}

/// The first pair of authorities (in name order) whose key lists share a
/// key, compared by fingerprint, whatever the key names, files or PEM
/// encodings.
pub(super) fn shared_key(authorities: &BTreeMap<String, Arc<Authority>>) -> Option<SharedKey> {
    let mut seen: BTreeMap<Digest, (String, String)> = BTreeMap::new();
    for (authority, a) in authorities {
        let AuthorityKind::Key { keys } = &a.kind else {
            continue;
        };
        for (key_name, key) in keys {
            let fingerprint = key.fingerprint();
            match seen.get(&fingerprint) {
                Some(first) if first.0 != *authority => {
                    return Some(SharedKey {
                        first: first.clone(),
                        second: (authority.clone(), key_name.clone()),
                        fingerprint,
                    });
                }
                Some(_) => {}
                None => {
                    seen.insert(fingerprint, (authority.clone(), key_name.clone()));
                }
            }
        }
    }
    None
}

/// Whether two matchers can accept the same string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Overlap {
    /// Provably never.
    Disjoint,
    /// Not proven either way (two regular expressions).
    Possible,
    /// Some string is accepted by both.
    Certain,
}

/// One warning per pair of keyless authorities with identities that may
/// accept the same subject and issuer (CI-claim constraints are not
/// compared: the signer is the subject and issuer, claims only narrow).
pub(super) fn keyless_overlaps(authorities: &BTreeMap<String, Arc<Authority>>) -> Vec<String> {
    let keyless: Vec<(&String, &[Identity])> = authorities
        .iter()
        .filter_map(|(name, a)| match &a.kind {
            AuthorityKind::Keyless { identities } => Some((name, identities.as_slice())),
            AuthorityKind::Key { .. } => None,
        })
        .collect();
    let mut out = Vec::new();
    for (i, (first, first_ids)) in keyless.iter().enumerate() {
        for (second, second_ids) in &keyless[i + 1..] {
            let worst = first_ids
                .iter()
                .flat_map(|x| second_ids.iter().map(move |y| (identities(x, y), x, y)))
                .max_by_key(|(overlap, _, _)| *overlap);
            match worst {
                Some((Overlap::Certain, x, y)) => out.push(format!(
                    "authorities `{first}` and `{second}` both accept the keyless identity {} ({}): \
                     one signature satisfies both and counts once toward a threshold",
                    describe(witness(&x.subject, &y.subject)),
                    describe(witness(&x.issuer, &y.issuer))
                )),
                Some((Overlap::Possible, x, y)) => out.push(format!(
                    "authorities `{first}` and `{second}` have keyless identities that may overlap \
                     (subject {} vs {}, issuer {} vs {}); Portcullis cannot prove them disjoint. \
                     A signer matching both counts once toward a threshold",
                    describe(&x.subject),
                    describe(&y.subject),
                    describe(&x.issuer),
                    describe(&y.issuer)
                )),
                Some((Overlap::Disjoint, _, _)) | None => {}
            }
        }
    }
    out
}

fn identities(x: &Identity, y: &Identity) -> Overlap {
    matchers(&x.subject, &y.subject).min(matchers(&x.issuer, &y.issuer))
}

fn matchers(x: &Matcher, y: &Matcher) -> Overlap {
    let certain_if = |b: bool| if b { Overlap::Certain } else { Overlap::Disjoint };
    match (x, y) {
        (Matcher::Exact(a), Matcher::Exact(b)) => certain_if(a == b),
        (Matcher::Exact(s), Matcher::Regex(r)) | (Matcher::Regex(r), Matcher::Exact(s)) => certain_if(r.is_match(s)),
        (Matcher::Regex(a), Matcher::Regex(b)) if a.as_str() == b.as_str() => Overlap::Certain,
        (Matcher::Regex(a), Matcher::Regex(b)) => {
            if literals_disjoint(ExtractKind::Prefix, a.as_str(), b.as_str())
                || literals_disjoint(ExtractKind::Suffix, a.as_str(), b.as_str())
            {
                Overlap::Disjoint
            } else {
                Overlap::Possible
            }
        }
    }
}

/// Every match of an (anchored) pattern starts (or ends) with one of its
/// extracted literals. When no prefix of one pattern is compatible with any
/// prefix of the other (neither starts with the other), no string matches
/// both: e.g. `https://github\.com/acme/.*` and `https://github\.com/other/.*`.
/// An infinite literal set proves nothing.
fn literals_disjoint(kind: ExtractKind, a: &str, b: &str) -> bool {
    let (Some(xs), Some(ys)) = (literals(&kind, a), literals(&kind, b)) else {
        return false;
    };
    let compatible = |x: &[u8], y: &[u8]| {
        if kind.is_suffix() {
            x.ends_with(y) || y.ends_with(x)
        } else {
            x.starts_with(y) || y.starts_with(x)
        }
    };
    xs.iter().all(|x| ys.iter().all(|y| !compatible(x, y)))
}

fn literals(kind: &ExtractKind, pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::parse(pattern).ok()?;
    let mut extractor = Extractor::new();
    extractor.kind(kind.clone());
    let seq = extractor.extract(&hir);
    seq.literals()
        .map(|ls| ls.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// Of two matchers that certainly overlap, the one that names a value both
/// accept (an exact one, when there is one).
fn witness<'a>(x: &'a Matcher, y: &'a Matcher) -> &'a Matcher {
    match (x, y) {
        (Matcher::Regex(_), Matcher::Exact(_)) => y,
        _ => x,
    }
}

fn describe(m: &Matcher) -> String {
    match m {
        Matcher::Exact(s) => format!("`{s}`"),
        Matcher::Regex(r) => format!("/{}/", r.as_str()),
    }
}
