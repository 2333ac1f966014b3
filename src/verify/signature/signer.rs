//! Who made a verified signature, independent of which authority accepted
//! it: thresholds count signers, so two authorities that accept the same
//! key or the same keyless identity must not let one signature count twice.

use std::fmt;

use crate::oci::Digest;

/// The identity of a signer, comparable across authorities. Serialized
/// with the verdicts that name it (promotion's separation of roles reads it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignerId {
    /// A public key, by the sha256 of its canonical DER SubjectPublicKeyInfo
    /// ([`super::PublicKey::fingerprint`]).
    Key(Digest),
    /// A Fulcio certificate identity: the subject (SAN: email, URI, …) and
    /// the OIDC issuer that vouched for it. Certificates are short-lived, so
    /// the certificate itself is not the identity.
    Keyless { subject: String, issuer: String },
}

impl fmt::Display for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerId::Key(fingerprint) => write!(f, "key {fingerprint}"),
            SignerId::Keyless { subject, issuer } => write!(f, "{subject} ({issuer})"),
        }
    }
}
