//! Signature and provenance policy: YAML documents in a directory, merged
//! and compiled into a [`PolicySet`] whose `revision` (sha256 over the policy
//! files and every trust file they name) keys the verdict cache and is
//! logged with every verdict. Evaluation is pure ([`eval`]).
//!
//! Imports: `oci`, `verify`.

pub mod compile;
pub mod eval;
/// The glob language lives in `oci` (pure), shared with client authorization
/// rules (`auth`); re-exported here where policies have always named it.
pub use crate::oci::glob;
pub mod schema;
mod signers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use compile::{PolicyError, load_dir};
pub use eval::{Decision, Evidence, Verdict, VerifiedAttestation, VerifiedSignature};
pub use glob::Glob;
pub use schema::{Format, Mode, Mutability, NoMatch, StaticVerdict};

pub use crate::verify::signature::SignerId;
pub use crate::verify::signature::authority::{
    Authority, AuthorityKind, BlobSignatures, CiClaim, Identity, Matcher, Sct, Tlog,
};

/// A compiled, validated policy.
#[derive(Debug)]
pub struct PolicySet {
    /// sha256 (hex) of the merged policy and trust files.
    pub revision: String,
    pub rules: Vec<Rule>,
    pub no_match: NoMatch,
    pub authorities: BTreeMap<String, Arc<Authority>>,
    /// `promotion.promoter`: the authority of the promoter's identity, which
    /// must not be among those satisfying a promoted source's requirement.
    pub promoter: Option<String>,
    /// `promotion.rules`: matched against the promotion's destination.
    pub promotion_rules: Vec<Rule>,
    /// Lint findings (shadowed rules, keyless identities that may overlap);
    /// not errors.
    pub warnings: Vec<String>,
    /// Every file the revision hashes (policy documents, keys, trusted
    /// roots), wherever it lies: what a reload must watch.
    sources: Vec<PathBuf>,
}

impl PolicySet {
    /// The short revision for logs and error messages.
    pub fn short_revision(&self) -> &str {
        &self.revision[..self.revision.len().min(12)]
    }

    /// Every file the revision hashes, as the policy named it (key and
    /// trust-root paths are resolved against their policy file's directory).
    pub fn sources(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().map(PathBuf::as_path)
    }

    /// The first rule matching `registry`/`repository` (and `tag` when the
    /// request names one). First match wins.
    pub fn rule_for(&self, registry: &str, repository: &str, tag: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(registry, repository, tag))
    }
}

/// A policy rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub registry: Option<Glob>,
    pub repositories: Vec<Glob>,
    pub tags: Vec<Glob>,
    pub mode: Mode,
    pub action: RuleAction,
    pub formats: Vec<Format>,
    pub mutable_tags: Mutability,
    pub require_digest: bool,
    pub index_covers_children: bool,
}

impl Rule {
    pub fn matches(&self, registry: &str, repository: &str, tag: Option<&str>) -> bool {
        let registry_ok = self.registry.as_ref().is_none_or(|g| g.matches(registry));
        let repo_ok = self.repositories.iter().any(|g| g.matches(repository));
        // A rule restricted to tags applies to pulls by those tags only.
        let tag_ok = self.tags.is_empty() || tag.is_some_and(|t| self.tags.iter().any(|g| g.matches(t)));
        registry_ok && repo_ok && tag_ok
    }
}

#[derive(Debug)]
pub enum RuleAction {
    Static(StaticVerdict),
    Verify(Requirements),
}

/// What a `Verify` rule requires.
#[derive(Debug, Default)]
pub struct Requirements {
    pub signatures: Option<SignatureRequirement>,
    pub attestations: Vec<AttestationRequirement>,
}

/// `anyOf` authorities, at least `threshold` of them, including `required`.
#[derive(Debug)]
pub struct SignatureRequirement {
    pub any_of: Vec<String>,
    pub threshold: usize,
    pub required: Vec<String>,
}

#[derive(Debug)]
pub struct AttestationRequirement {
    pub name: String,
    pub predicate_type: String,
    pub authorities: Vec<String>,
    pub threshold: usize,
    pub checks: Vec<Check>,
}

/// A check on a verified in-toto statement.
#[derive(Debug)]
pub struct Check {
    /// RFC 6901 JSON pointer.
    pub pointer: String,
    pub op: CheckOp,
}

#[derive(Debug)]
pub enum CheckOp {
    Equals(serde_json::Value),
    In(Vec<serde_json::Value>),
    Matches(regex::Regex),
    StartsWith(String),
    Exists(bool),
}

impl Check {
    /// Whether `statement` passes; the reason when it does not.
    pub fn evaluate(&self, statement: &serde_json::Value) -> Result<(), String> {
        let found = statement.pointer(&self.pointer);
        let ok = match (&self.op, found) {
            (CheckOp::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (CheckOp::Equals(want), Some(v)) => v == want,
            (CheckOp::In(options), Some(v)) => options.contains(v),
            (CheckOp::Matches(re), Some(v)) => v.as_str().is_some_and(|s| re.is_match(s)),
            (CheckOp::StartsWith(prefix), Some(v)) => v.as_str().is_some_and(|s| s.starts_with(prefix.as_str())),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "check {} {} failed (found {})",
                self.pointer,
                self.op_text(),
                found.map_or("nothing".to_owned(), |v| v.to_string())
            ))
        }
    }

    fn op_text(&self) -> String {
        match &self.op {
            CheckOp::Equals(v) => format!("equals {v}"),
            CheckOp::In(v) => format!("in {}", serde_json::Value::Array(v.clone())),
            CheckOp::Matches(r) => format!("matches {}", r.as_str()),
            CheckOp::StartsWith(s) => format!("startsWith {s:?}"),
            CheckOp::Exists(b) => format!("exists {b}"),
        }
    }
}

#[cfg(test)]
mod tests;
