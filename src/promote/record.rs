//! The signed promotion record: an in-toto Statement v1 whose predicate is
//! a SLSA Verification Summary (`https://slsa.dev/verification_summary/v1`),
//! DSSE-signed by the promoter's key inside a key-based Sigstore bundle
//! (v0.3, no transparency log), attached at the destination as a referrer
//! of the promoted digest, in the layout cosign v3 writes (so the proxy's
//! discovery and a pull rule's `require.attestations` read it like any
//! bundle attestation).

use std::path::Path;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::fallback;
use crate::oci::manifest::OCI_MANIFEST;
use crate::oci::material::OCI_EMPTY;
use crate::oci::{Algorithm, Digest, Reference};
use crate::proxy::Target;
use crate::upstream;

pub const VSA_PREDICATE: &str = "https://slsa.dev/verification_summary/v1";
/// `verifier.id` of the records Portcullis signs.
pub const VERIFIER_ID: &str = "https://portcullis.dev/promote/v1";
/// The level a record states: the source satisfied the policy's rules
/// (a custom value; `SLSA_` prefixes are reserved).
pub const VERIFIED_LEVEL: &str = "PORTCULLIS_POLICY_SATISFIED";
const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Why a record could not be made or attached.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("promoter key {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing the promotion record failed")]
    Sign,
    #[error(transparent)]
    FallbackIndex(#[from] super::fallback::FallbackError),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
}

/// The promoter's signing key: ECDSA P-256 (what `cosign generate-key-pair`
/// makes), read from an unencrypted PKCS#8 PEM file. `Debug` shows only the hint.
pub struct PromoterKey {
    pair: EcdsaKeyPair,
    hint: String,
    fingerprint: Digest,
}

impl std::fmt::Debug for PromoterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PromoterKey(hint {})", self.hint)
    }
}

impl PromoterKey {
    pub fn load(path: &Path) -> Result<PromoterKey, RecordError> {
        let error = |message: String| RecordError::Key {
            path: path.display().to_string(),
            message,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| error(format!("not a PKCS#8 PEM key: {e}")))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der())
            .map_err(|e| error(format!("not an ECDSA P-256 key: {e}")))?;
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|e| error(format!("no public key: {e}")))?;
        let fingerprint = Digest::of(Algorithm::Sha256, spki.as_ref());
        let hint = STANDARD.encode(fingerprint.as_bytes());
        Ok(PromoterKey {
            pair,
            hint,
            fingerprint,
        })
    }

    /// The sha256 of the public key's SPKI (as policy keys are fingerprinted).
    pub fn fingerprint(&self) -> &Digest {
        &self.fingerprint
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RecordError> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), message)
            .map_err(|_| RecordError::Sign)?;
        Ok(sig.as_ref().to_vec())
    }
}

/// What the record states.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Where consumers fetch the artifact (`prod.example/apps/web@sha256:…`).
    pub resource_uri: String,
    pub digest: Digest,
    /// The policy revision the source was admitted under (sha256 hex), and
    /// where the policy lives.
    pub policy_uri: String,
    pub policy_revision: Option<String>,
    /// The verification material copied with the image.
    pub inputs: Vec<Digest>,
}

fn digest_map(d: &Digest) -> Value {
    json!({ d.algorithm().as_str(): d.hex() })
}

/// The in-toto Statement v1 with the VSA predicate.
pub fn statement(summary: &Summary, time: &str) -> Value {
    let mut policy = json!({ "uri": summary.policy_uri });
    if let Some(rev) = &summary.policy_revision {
        policy["digest"] = json!({ "sha256": rev });
    }
    let inputs: Vec<Value> = summary
        .inputs
        .iter()
        .map(|d| json!({ "digest": digest_map(d) }))
        .collect();
    json!({
        "_type": STATEMENT_V1,
        "subject": [{ "name": summary.resource_uri, "digest": digest_map(&summary.digest) }],
        "predicateType": VSA_PREDICATE,
        "predicate": {
            "verifier": { "id": VERIFIER_ID, "version": { "portcullis": env!("CARGO_PKG_VERSION") } },
            "timeVerified": time,
            "resourceUri": summary.resource_uri,
            "policy": policy,
            "inputAttestations": inputs,
            "verificationResult": "PASSED",
            "verifiedLevels": [VERIFIED_LEVEL],
        }
    })
}

/// DSSE pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A key-based Sigstore bundle v0.3 over `statement`.
pub fn bundle(key: &PromoterKey, statement: &[u8]) -> Result<Vec<u8>, RecordError> {
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD, statement))?;
    let bundle = json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": { "publicKey": { "hint": key.hint } },
        "dsseEnvelope": {
            "payload": STANDARD.encode(statement),
            "payloadType": IN_TOTO_PAYLOAD,
            "signatures": [{ "sig": STANDARD.encode(sig) }],
        }
    });
    serde_json::to_vec(&bundle).map_err(|_| RecordError::Sign)
}

/// The referrer manifest for `bundle` about `subject` (cosign v3's layout).
fn referrer_manifest(subject: &Value, bundle: &[u8], created: &str) -> Vec<u8> {
    let bundle_digest = Digest::of(Algorithm::Sha256, bundle);
    let config = json!({
        "mediaType": OCI_EMPTY,
        "size": 2,
        "digest": Digest::of(Algorithm::Sha256, b"{}").to_string(),
        "artifactType": BUNDLE_V03,
    });
    let layer = json!({
        "mediaType": BUNDLE_V03,
        "size": bundle.len(),
        "digest": bundle_digest.to_string(),
        "annotations": { "org.opencontainers.image.title": format!("{}.sigstore.json", bundle_digest.tag_form()) },
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer],
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": VSA_PREDICATE,
            "org.opencontainers.image.created": created,
        },
        "subject": subject,
        "artifactType": BUNDLE_V03,
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// Sign the record for `summary` and attach it at `dst` as a referrer of
/// the promoted manifest (`subject`: its media type and size). Returns the
/// referrer's digest.
pub async fn attach(
    dst: &Target,
    key: &PromoterKey,
    summary: &Summary,
    subject_media_type: &str,
    subject_size: u64,
) -> Result<Digest, RecordError> {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let time = now.to_string();
    let statement = serde_json::to_vec(&statement(summary, &time)).map_err(|_| RecordError::Sign)?;
    let bundle = bundle(key, &statement)?;
    let subject = json!({
        "mediaType": subject_media_type,
        "size": subject_size,
        "digest": summary.digest.to_string(),
    });
    let manifest = referrer_manifest(&subject, &bundle, &time);
    super::copy::push_small_blob(dst, Bytes::from_static(b"{}")).await?;
    super::copy::push_small_blob(dst, Bytes::from(bundle)).await?;
    let digest = Digest::of(Algorithm::Sha256, &manifest);
    let reference = Reference::Digest(digest.clone());
    dst.registry
        .put_manifest(
            &dst.repo,
            &reference,
            &digest,
            OCI_MANIFEST,
            Bytes::from(manifest.clone()),
        )
        .await?;
    if !fallback::api_available(dst, &summary.digest).await? {
        let entry = fallback::descriptor(OCI_MANIFEST, &digest, &manifest);
        fallback::extend(dst, &summary.digest, &[entry]).await?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_is_a_vsa_about_the_digest() {
        let digest: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .expect("digest");
        let summary = Summary {
            resource_uri: format!("prod.example/apps/web@{digest}"),
            digest: digest.clone(),
            policy_uri: "file:///etc/portcullis/policies".into(),
            policy_revision: Some("ab".repeat(32)),
            inputs: vec![digest.clone()],
        };
        let st = statement(&summary, "2026-12-05T00:00:00Z");
        assert_eq!(st["_type"], STATEMENT_V1);
        assert_eq!(st["subject"][0]["digest"]["sha256"], digest.hex());
        assert_eq!(st["predicateType"], VSA_PREDICATE);
        let p = &st["predicate"];
        assert_eq!(p["verifier"]["id"], VERIFIER_ID);
        assert_eq!(p["verificationResult"], "PASSED");
        assert_eq!(p["resourceUri"], summary.resource_uri);
        assert_eq!(p["policy"]["digest"]["sha256"], "ab".repeat(32));
        assert_eq!(p["inputAttestations"][0]["digest"]["sha256"], digest.hex());
        assert_eq!(p["verifiedLevels"][0], VERIFIED_LEVEL);
        assert_eq!(pae("t", b"xy"), b"DSSEv1 1 t 2 xy".to_vec());
    }
}
