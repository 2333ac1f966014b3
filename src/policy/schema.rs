//! The policy YAML as written (`apiVersion: portcullis.dev/v1alpha1`,
//! `kind: Policy`), one serde struct per mapping, unknown keys rejected.
//! Read with the same YAML crate as the configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub const API_VERSION: &str = "portcullis.dev/v1alpha1";
pub const KIND: &str = "Policy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub defaults: Option<Defaults>,
    #[serde(default)]
    pub trust_roots: BTreeMap<String, TrustRootSpec>,
    #[serde(default)]
    pub keys: BTreeMap<String, KeySpec>,
    #[serde(default)]
    pub authorities: BTreeMap<String, AuthoritySpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    pub promotion: Option<PromotionSpec>,
}

/// `promotion:`: how `portcullis promote` separates roles.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromotionSpec {
    /// The authority naming the promoter's own identity: its signatures never
    /// count towards the source's requirement (a promotion is refused when
    /// it is among the authorities that satisfied it).
    pub promoter: Option<String>,
    /// Rules for promotions *into* a destination (`match` names the
    /// destination registry, repositories and tags): the source must satisfy
    /// the first matching one as well as its pull rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Defaults {
    pub mode: Option<Mode>,
    pub no_match: Option<NoMatch>,
    pub formats: Option<Vec<Format>>,
    pub index_covers_children: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoMatch {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Bundle,
    Legacy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustRootSpec {
    /// A Sigstore `trusted_root.json`.
    pub trusted_root: PathBuf,
    /// Optional pin: the file's sha256 (hex).
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySpec {
    /// PEM `PUBLIC KEY` (ECDSA P-256/P-384/P-521, RSA, Ed25519).
    pub path: PathBuf,
    /// The hash signed over; cosign uses sha256 for every key type.
    pub hash_algorithm: Option<HashAlgorithm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthoritySpec {
    pub key: Option<KeyAuthoritySpec>,
    pub keyless: Option<KeylessSpec>,
    pub tlog: Option<TlogMode>,
    pub sct: Option<SctMode>,
    /// Rekor/TSA keys for key authorities that use a transparency log.
    pub trust_root: Option<String>,
    /// A weakening: also count `cosign sign-blob` signatures over the
    /// manifest bytes (messageSignature bundles) as image signatures.
    #[serde(default)]
    pub accept_blob_signatures: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyAuthoritySpec {
    /// Names from `keys`; any one of them satisfies the authority (rotation).
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessSpec {
    pub trust_root: String,
    pub identities: Vec<IdentitySpec>,
}

/// One acceptable keyless identity. Each `…RegExp` is implicitly anchored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    pub issuer: Option<String>,
    pub issuer_reg_exp: Option<String>,
    pub subject: Option<String>,
    pub subject_reg_exp: Option<String>,
    // Fulcio CI claims (OIDs 1.3.6.1.4.1.57264.1.9 and up).
    pub build_signer_uri: Option<String>,
    pub build_signer_uri_reg_exp: Option<String>,
    pub build_signer_digest: Option<String>,
    pub runner_environment: Option<String>,
    pub source_repository: Option<String>,
    pub source_repository_reg_exp: Option<String>,
    pub source_repository_digest: Option<String>,
    pub source_repository_ref: Option<String>,
    pub source_repository_ref_reg_exp: Option<String>,
    pub source_repository_owner_uri: Option<String>,
    pub build_config_uri: Option<String>,
    pub build_config_uri_reg_exp: Option<String>,
    pub build_trigger: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlogMode {
    Required,
    Optional,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SctMode {
    Required,
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: MatchSpec,
    pub mode: Option<Mode>,
    #[serde(rename = "static")]
    pub static_verdict: Option<StaticVerdict>,
    pub formats: Option<Vec<Format>>,
    pub require: Option<RequireSpec>,
    pub tags: Option<TagsSpec>,
    pub index_covers_children: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    pub registry: Option<String>,
    pub repositories: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticVerdict {
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequireSpec {
    pub signatures: Option<SignaturesSpec>,
    #[serde(default)]
    pub attestations: Vec<AttestationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignaturesSpec {
    pub any_of: Vec<String>,
    pub threshold: Option<usize>,
    #[serde(default)]
    pub required: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestationSpec {
    pub name: String,
    pub predicate_type: String,
    pub authorities: Vec<String>,
    pub threshold: Option<usize>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
}

/// A check on the verified in-toto statement: a JSON pointer and exactly one
/// operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckSpec {
    pub path: String,
    pub equals: Option<serde_json::Value>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<serde_json::Value>>,
    pub matches: Option<String>,
    pub starts_with: Option<String>,
    pub exists: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TagsSpec {
    pub mutable: Option<Mutability>,
    #[serde(default)]
    pub require_digest: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mutability {
    Allow,
    Alert,
    Deny,
}
