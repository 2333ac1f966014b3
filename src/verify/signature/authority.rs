//! What an authority accepts: keys, or keyless identities under a trust
//! root, with its transparency-log and SCT requirements. The policy decides
//! which authorities a rule needs; this module decides whether a signature
//! satisfies one.

use std::sync::Arc;

use sigstore_verify::crypto::FulcioCiClaims;

use super::{PublicKey, TrustRoot};

/// Whether a transparency-log entry is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tlog {
    /// A verified Rekor entry (SET or inclusion proof) must be present.
    Required,
    /// A present entry must verify (fail closed); a signature without one
    /// still counts.
    Optional,
    /// Not consulted (air-gapped key signing).
    Ignore,
}

/// Whether the Fulcio certificate's embedded SCT must verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sct {
    Required,
    Ignore,
}

/// Whether a Sigstore bundle holding a `messageSignature` (what `cosign
/// sign-blob` writes) counts as a signature of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlobSignatures {
    /// Such a bundle does not count (the default): `cosign sign` signs an
    /// in-toto statement naming the image; a blob signature only says that
    /// some bytes were signed, for whatever purpose the signer had.
    #[default]
    Refuse,
    /// A weakening the policy asks for explicitly (`acceptBlobSignatures:
    /// true`): counts when the bundle's message digest is the manifest
    /// digest, i.e. the signer signed exactly these manifest bytes.
    AcceptOverManifest,
}

/// A named authority.
#[derive(Debug)]
pub struct Authority {
    pub name: String,
    pub kind: AuthorityKind,
    pub tlog: Tlog,
    pub sct: Sct,
    pub trust_root: Option<Arc<TrustRoot>>,
    pub blob_signatures: BlobSignatures,
}

#[derive(Debug)]
pub enum AuthorityKind {
    /// Any key of the list satisfies the authority (rotation).
    Key { keys: Vec<(String, Arc<PublicKey>)> },
    /// A Fulcio certificate whose identity matches one of these.
    Keyless { identities: Vec<Identity> },
}

/// An acceptable keyless identity: issuer, subject and optional CI claims.
#[derive(Debug)]
pub struct Identity {
    pub issuer: Matcher,
    pub subject: Matcher,
    pub claims: Vec<(CiClaim, Matcher)>,
}

impl Identity {
    /// Whether a verified certificate's identity satisfies this one.
    pub fn accepts(&self, subject: &str, issuer: &str, claims: &FulcioCiClaims) -> bool {
        self.subject.matches(subject)
            && self.issuer.matches(issuer)
            && self
                .claims
                .iter()
                .all(|(claim, m)| claim.value(claims).is_some_and(|v| m.matches(v)))
    }
}

/// Fulcio certificate extensions a policy can constrain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CiClaim {
    BuildSignerUri,
    BuildSignerDigest,
    RunnerEnvironment,
    SourceRepository,
    SourceRepositoryDigest,
    SourceRepositoryRef,
    SourceRepositoryOwnerUri,
    BuildConfigUri,
    BuildTrigger,
}

impl CiClaim {
    fn value(self, c: &FulcioCiClaims) -> Option<&str> {
        let v = match self {
            CiClaim::BuildSignerUri => &c.build_signer_uri,
            CiClaim::BuildSignerDigest => &c.build_signer_digest,
            CiClaim::RunnerEnvironment => &c.runner_environment,
            CiClaim::SourceRepository => &c.source_repository_uri,
            CiClaim::SourceRepositoryDigest => &c.source_repository_digest,
            CiClaim::SourceRepositoryRef => &c.source_repository_ref,
            CiClaim::SourceRepositoryOwnerUri => &c.source_repository_owner_uri,
            CiClaim::BuildConfigUri => &c.build_config_uri,
            CiClaim::BuildTrigger => &c.build_trigger,
        };
        v.as_deref()
    }
}

/// An exact string or an implicitly anchored regular expression.
#[derive(Debug)]
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// Compile `^(?:pattern)$`: cosign's regexps are unanchored, a frequent
    /// footgun (`.*@example.com` would accept `x@example.com.evil`).
    pub fn anchored(pattern: &str) -> Result<Matcher, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(Matcher::Regex)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}
