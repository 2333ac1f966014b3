//! Does this signature or attestation satisfy this authority for this image?
//!
//! Three formats, one answer ([`Proof`] or [`SigError`]):
//! - legacy `.sig` layers (simple-signing payload + annotations),
//! - legacy `.att` layers (DSSE envelope + annotations),
//! - Sigstore bundles (v0.3, from referrers).
//!
//! Every path binds the content to the image digest (payload digest or
//! statement subject) before it can count, and all payloads are decoded
//! strictly. The work is synchronous CPU; callers run it off async workers.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sigstore_types::bundle::MessageSignature;
use sigstore_types::{Bundle, DerPublicKey, Sha256Hash, SignatureContent};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, VerificationResult};

use super::authority::{Authority, AuthorityKind, BlobSignatures, Sct, Tlog};
use super::bridge::{self, Content, Material, RekorSet};
use super::payload::{self, IN_TOTO_PAYLOAD_TYPE};
use super::{PublicKey, SignerId, TrustRoot};
use crate::oci::{Algorithm, Digest};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// The predicate type `cosign sign` (v3) uses for image signatures.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// What verified: which signer of the authority, whether a transparency log
/// vouched for it, and for attestations the statement. Only this module
/// builds one (the private field forbids it elsewhere), and never with
/// `tlog_verified: false` for an authority that requires the log.
#[derive(Debug, Clone)]
pub struct Proof {
    pub authority: String,
    /// The key name, or `subject (issuer)` for keyless.
    pub signer: String,
    /// Who signed, comparable across authorities (thresholds count these).
    pub signer_id: SignerId,
    pub tlog_verified: bool,
    /// `Some` for in-toto statements (bundles and `.att`): predicate type
    /// and the statement JSON.
    pub statement: Option<(String, serde_json::Value)>,
    _sealed: Sealed,
}

/// Keeps [`Proof`] constructible only in this module (unlike
/// `#[non_exhaustive]`, which only stops other crates).
#[derive(Debug, Clone)]
struct Sealed;

impl Proof {
    /// A signature (as opposed to an attestation): simple-signing payloads
    /// and statements with cosign's signing predicate.
    pub fn is_signature(&self) -> bool {
        match &self.statement {
            None => true,
            Some((pt, _)) => pt == COSIGN_SIGN_PREDICATE,
        }
    }
}

/// Why a candidate did not satisfy an authority.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    #[error("signed payload names {named}, not this image ({image})")]
    NotForThisImage { named: String, image: String },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("signature does not verify with {0}")]
    BadSignature(String),
    #[error("no transparency-log entry, and the authority requires one")]
    MissingTlog,
    #[error("transparency-log inclusion was not verified, and the authority requires it")]
    TlogNotVerified,
    #[error(
        "a blob signature (`cosign sign-blob`, messageSignature bundle) is not an image signature \
         unless the authority sets `acceptBlobSignatures: true`"
    )]
    BlobSignatureNotAccepted,
    #[error("keyless signature without a certificate")]
    MissingCertificate,
    #[error("certificate identity {subject} ({issuer}) is not accepted by the authority")]
    Identity { subject: String, issuer: String },
    #[error("sigstore verification failed: {0}")]
    Sigstore(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A legacy cosign layer: media type, blob (already checked against its
/// descriptor digest) and descriptor annotations.
#[derive(Debug, Clone, Copy)]
pub struct LegacyLayer<'a> {
    pub media_type: &'a str,
    pub blob: &'a [u8],
    pub annotations: &'a BTreeMap<String, String>,
}

/// Verify a legacy `.sig` or `.att` layer for `image` under `authority`.
pub fn verify_legacy(layer: &LegacyLayer<'_>, image: &Digest, authority: &Authority) -> Result<Proof, SigError> {
    let rekor = layer
        .annotations
        .get(BUNDLE_ANNOTATION)
        .map(|s| {
            serde_json::from_str::<RekorSet>(s).map_err(|e| SigError::Malformed(format!("{BUNDLE_ANNOTATION}: {e}")))
        })
        .transpose()?;
    let certificate = layer
        .annotations
        .get(CERTIFICATE_ANNOTATION)
        .map(|pem| pem_certificate(pem))
        .transpose()?;
    match layer.media_type {
        SIMPLE_SIGNING_MEDIA_TYPE => {
            let payload = payload::simple_signing(layer.blob).map_err(SigError::Malformed)?;
            let named = &payload.critical.image.docker_manifest_digest;
            if named != image {
                return Err(SigError::NotForThisImage {
                    named: named.to_string(),
                    image: image.to_string(),
                });
            }
            let sig_text = layer
                .annotations
                .get(SIGNATURE_ANNOTATION)
                .ok_or_else(|| SigError::Malformed(format!("no {SIGNATURE_ANNOTATION} annotation")))?;
            let signature = decode_b64(sig_text)?;
            let content = Content::Message {
                payload: layer.blob,
                signature: &signature,
            };
            let check_key = |key: &PublicKey| key.verify(layer.blob, &signature).is_ok();
            let artifact = sigstore_types::Artifact::from(layer.blob);
            verify_with_authority(
                authority,
                content,
                artifact,
                check_key,
                certificate.as_deref(),
                rekor.as_ref(),
                None,
            )
        }
        DSSE_MEDIA_TYPE => {
            let (envelope_json, envelope, statement) = dsse_for(layer.blob, image)?;
            let pae = payload::pae(&envelope.payload_type, &decode_b64(&envelope.payload)?);
            let sigs = envelope
                .signatures
                .iter()
                .map(|s| decode_b64(&s.sig))
                .collect::<Result<Vec<_>, _>>()?;
            let check_key = |key: &PublicKey| sigs.iter().any(|s| key.verify(&pae, s).is_ok());
            let artifact = image_artifact(image)?;
            verify_with_authority(
                authority,
                Content::Dsse(&envelope_json),
                artifact,
                check_key,
                certificate.as_deref(),
                rekor.as_ref(),
                Some(statement),
            )
        }
        other => Err(SigError::Unsupported(format!("legacy layer media type `{other}`"))),
    }
}

/// Verify a Sigstore bundle (v0.1–v0.3 JSON) for `image` under `authority`.
pub fn verify_bundle(json: &[u8], image: &Digest, authority: &Authority) -> Result<Proof, SigError> {
    payload::one_reading(json, &crate::oci::json::SIGSTORE_BUNDLE, "bundle").map_err(SigError::Malformed)?;
    let text = std::str::from_utf8(json).map_err(|e| SigError::Malformed(e.to_string()))?;
    let bundle = Bundle::from_json(text).map_err(|e| SigError::Malformed(format!("bundle: {e}")))?;
    let statement = match &bundle.content {
        SignatureContent::DsseEnvelope(env) => {
            if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
                return Err(SigError::Unsupported(format!(
                    "DSSE payload type `{}`",
                    env.payload_type
                )));
            }
            let (st, value) = payload::statement_for(env.payload.as_bytes(), image).map_err(SigError::Malformed)?;
            Some((st.predicate_type, value))
        }
        SignatureContent::MessageSignature(message) => {
            blob_signature_for(message, image, authority)?;
            None
        }
        _ => {
            return Err(SigError::Unsupported(
                "bundle content is neither DSSE nor a message signature".into(),
            ));
        }
    };
    let artifact = image_artifact(image)?;
    let has_tlog = !bundle.verification_material.tlog_entries.is_empty();
    match &authority.kind {
        AuthorityKind::Keyless { .. } => verify_keyless(authority, artifact, &bundle, statement),
        AuthorityKind::Key { keys } => {
            let mut sigstore_error = None;
            for (name, key) in keys {
                let verified = if has_tlog && authority.tlog != Tlog::Ignore {
                    let trust = trust_root(authority)?;
                    let policy = PublicKeyVerificationPolicy::new(DerPublicKey::new(key.spki_der().to_vec()));
                    match trust.verifier.verify(artifact.clone(), &bundle, &policy) {
                        Ok(r) => Some(r.tlog_verified()),
                        Err(e) => {
                            // Kept for the denial reason if no key verifies.
                            sigstore_error = Some(e.to_string());
                            None
                        }
                    }
                } else if authority.tlog == Tlog::Required {
                    return Err(SigError::MissingTlog);
                } else {
                    // `cosign sign --key --tlog-upload=false` bundles carry no
                    // log entry and no timestamp; sigstore-verify refuses them
                    // before any cryptography, so check the signature here
                    // (the subject or message digest was bound above).
                    offline_key_check(&bundle, key, image).then_some(false)
                };
                if let Some(tlog_verified) = verified {
                    return proof(authority, key_signer(name, key), tlog_verified, statement);
                }
            }
            Err(sigstore_error.map_or_else(
                || SigError::BadSignature(format!("the keys of `{}`", authority.name)),
                SigError::Sigstore,
            ))
        }
    }
}

/// A signer as the policy names it (label) and as thresholds count it.
struct Signer {
    label: String,
    id: SignerId,
}

fn key_signer(name: &str, key: &PublicKey) -> Signer {
    Signer {
        label: name.to_owned(),
        id: SignerId::Key(key.fingerprint()),
    }
}

/// The one place a [`Proof`] is made: an authority that requires the
/// transparency log gets a proof only when the verification itself reports
/// the log inclusion as verified, whatever path led here.
fn proof(
    authority: &Authority,
    signer: Signer,
    tlog_verified: bool,
    statement: Option<(String, serde_json::Value)>,
) -> Result<Proof, SigError> {
    if authority.tlog == Tlog::Required && !tlog_verified {
        return Err(SigError::TlogNotVerified);
    }
    Ok(Proof {
        authority: authority.name.clone(),
        signer: signer.label,
        signer_id: signer.id,
        tlog_verified,
        statement,
        _sealed: Sealed,
    })
}

/// A `messageSignature` bundle counts only for an authority that opted in,
/// and only when its message digest is this manifest's digest (`cosign
/// sign-blob` over the manifest bytes signs exactly that digest).
/// sigstore-verify compares the digest only when one is present, so its
/// absence is refused here.
fn blob_signature_for(message: &MessageSignature, image: &Digest, authority: &Authority) -> Result<(), SigError> {
    if authority.blob_signatures != BlobSignatures::AcceptOverManifest {
        return Err(SigError::BlobSignatureNotAccepted);
    }
    let digest = message
        .message_digest
        .as_ref()
        .ok_or_else(|| SigError::Malformed("messageSignature without messageDigest".into()))?;
    let algorithm = match digest.algorithm {
        sigstore_types::HashAlgorithm::Sha2256 => Some(Algorithm::Sha256),
        sigstore_types::HashAlgorithm::Sha2512 => Some(Algorithm::Sha512),
        _ => None,
    };
    if algorithm == Some(image.algorithm()) && digest.digest.as_bytes() == image.as_bytes() {
        return Ok(());
    }
    let hex = hex(digest.digest.as_bytes());
    Err(SigError::NotForThisImage {
        named: match algorithm {
            Some(a) => format!("{}:{hex}", a.as_str()),
            None => format!("{:?} {hex}", digest.algorithm),
        },
        image: image.to_string(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The common decision for legacy layers once content and key checks exist.
fn verify_with_authority(
    authority: &Authority,
    content: Content<'_>,
    artifact: sigstore_types::Artifact<'_>,
    check_key: impl Fn(&PublicKey) -> bool,
    certificate: Option<&[u8]>,
    rekor: Option<&RekorSet>,
    statement: Option<(String, serde_json::Value)>,
) -> Result<Proof, SigError> {
    match &authority.kind {
        AuthorityKind::Key { keys } => {
            let (name, key) = keys
                .iter()
                .find(|(_, k)| check_key(k))
                .ok_or_else(|| SigError::BadSignature(format!("the keys of `{}`", authority.name)))?;
            let signer = key_signer(name, key);
            let tlog_verified = match (authority.tlog, rekor) {
                (Tlog::Ignore, _) | (Tlog::Optional, None) => false,
                (Tlog::Required, None) => return Err(SigError::MissingTlog),
                (Tlog::Required | Tlog::Optional, Some(set)) => {
                    let trust = trust_root(authority)?;
                    let json = bridge::v01_bundle(content, Material::PublicKey, set).map_err(SigError::Malformed)?;
                    let bundle =
                        Bundle::from_json(&json).map_err(|e| SigError::Malformed(format!("Rekor bundle: {e}")))?;
                    let policy = PublicKeyVerificationPolicy::new(DerPublicKey::new(key.spki_der().to_vec()));
                    trust
                        .verifier
                        .verify(artifact, &bundle, &policy)
                        .map_err(|e| SigError::Sigstore(e.to_string()))?
                        .tlog_verified()
                }
            };
            proof(authority, signer, tlog_verified, statement)
        }
        AuthorityKind::Keyless { .. } => {
            let cert = certificate.ok_or(SigError::MissingCertificate)?;
            let set = rekor.ok_or(SigError::MissingTlog)?;
            let json = bridge::v01_bundle(content, Material::Certificate(cert), set).map_err(SigError::Malformed)?;
            let bundle = Bundle::from_json(&json).map_err(|e| SigError::Malformed(format!("Rekor bundle: {e}")))?;
            verify_keyless(authority, artifact, &bundle, statement)
        }
    }
}

/// sigstore-verify with any identity (chain at the verified time, SCT, tlog,
/// signature), then our identity matching.
fn verify_keyless(
    authority: &Authority,
    artifact: sigstore_types::Artifact<'_>,
    bundle: &Bundle,
    statement: Option<(String, serde_json::Value)>,
) -> Result<Proof, SigError> {
    let trust = trust_root(authority)?;
    let result = trust
        .verifier
        .verify(artifact, bundle, &keyless_policy(authority))
        .map_err(|e| SigError::Sigstore(e.to_string()))?;
    let signer = accept_identity(authority, &result)?;
    proof(authority, signer, result.tlog_verified(), statement)
}

fn keyless_policy(authority: &Authority) -> VerificationPolicy {
    let policy = VerificationPolicy::any_identity();
    match authority.sct {
        Sct::Required => policy,
        Sct::Ignore => policy.skip_sct(),
    }
}

/// The verified certificate's identity must match one of the authority's.
fn accept_identity(authority: &Authority, result: &VerificationResult) -> Result<Signer, SigError> {
    let AuthorityKind::Keyless { identities } = &authority.kind else {
        return Err(SigError::Unsupported("not a keyless authority".into()));
    };
    if !result.certificate_verified() {
        return Err(SigError::Sigstore("certificate chain was not verified".into()));
    }
    let subject = result.identity().map(|s| s.as_str().to_owned()).unwrap_or_default();
    let issuer = result.issuer().unwrap_or_default().to_owned();
    let default_claims = Default::default();
    let claims = result.certificate().map(|c| &c.ci_claims).unwrap_or(&default_claims);
    if identities.iter().any(|id| id.accepts(&subject, &issuer, claims)) {
        let id = SignerId::Keyless { subject, issuer };
        Ok(Signer {
            label: id.to_string(),
            id,
        })
    } else {
        Err(SigError::Identity { subject, issuer })
    }
}

fn trust_root(authority: &Authority) -> Result<&TrustRoot, SigError> {
    authority
        .trust_root
        .as_deref()
        .ok_or_else(|| SigError::Unsupported(format!("authority `{}` has no trust root", authority.name)))
}

fn image_artifact(image: &Digest) -> Result<sigstore_types::Artifact<'static>, SigError> {
    let digest = match image.algorithm() {
        Algorithm::Sha256 => {
            let hash = Sha256Hash::from_hex(&image.hex()).map_err(|e| SigError::Malformed(e.to_string()))?;
            sigstore_types::ArtifactDigest::from(hash)
        }
        Algorithm::Sha512 => {
            sigstore_types::ArtifactDigest::new(sigstore_types::HashAlgorithm::Sha2512, image.as_bytes().to_vec())
                .map_err(|e| SigError::Malformed(e.to_string()))?
        }
    };
    Ok(sigstore_types::Artifact::from_digest(digest))
}

/// A key check of a bundle without log entry: the DSSE signature over the
/// PAE, or a message signature over the image digest.
fn offline_key_check(bundle: &Bundle, key: &PublicKey, image: &Digest) -> bool {
    match &bundle.content {
        SignatureContent::DsseEnvelope(env) => {
            let pae = payload::pae(&env.payload_type, env.payload.as_bytes());
            key.verify(&pae, env.signature.sig.as_bytes()).is_ok()
        }
        SignatureContent::MessageSignature(message) => {
            key.verify_prehashed(image, message.signature.as_bytes()).is_ok()
        }
        _ => false,
    }
}

/// Parse a DSSE envelope strictly and bind its statement to `image`.
fn dsse_for(
    blob: &[u8],
    image: &Digest,
) -> Result<(serde_json::Value, payload::Envelope, (String, serde_json::Value)), SigError> {
    payload::one_reading(blob, &crate::oci::json::DSSE_ENVELOPE, "DSSE envelope").map_err(SigError::Malformed)?;
    let envelope: payload::Envelope =
        serde_json::from_slice(blob).map_err(|e| SigError::Malformed(format!("DSSE envelope: {e}")))?;
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(SigError::Unsupported(format!(
            "DSSE payload type `{}`",
            envelope.payload_type
        )));
    }
    let statement_bytes = decode_b64(&envelope.payload)?;
    let (st, value) = payload::statement_for(&statement_bytes, image).map_err(SigError::Malformed)?;
    let json: serde_json::Value = serde_json::from_slice(blob).map_err(|e| SigError::Malformed(e.to_string()))?;
    Ok((json, envelope, (st.predicate_type, value)))
}

/// Standard base64; Go's JSON decoder tolerates line breaks inside, so do we.
fn decode_b64(text: &str) -> Result<Vec<u8>, SigError> {
    let cleaned: String = text.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
    STANDARD
        .decode(cleaned.trim())
        .map_err(|e| SigError::Malformed(format!("base64: {e}")))
}

fn pem_certificate(pem: &str) -> Result<Vec<u8>, SigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| SigError::Malformed(format!("certificate PEM: {e}")))
}

#[cfg(test)]
mod tests;
