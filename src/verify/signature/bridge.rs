//! Legacy cosign signatures as Sigstore v0.1 bundles.
//!
//! A legacy `.sig`/`.att` layer carries the same material as a v0.1 bundle:
//! the signed payload (or DSSE envelope), an optional Fulcio leaf, and the
//! Rekor entry with its signed entry timestamp (`dev.sigstore.cosign/bundle`).
//! Converting it lets `sigstore-verify` do the certificate chain at the
//! integrated time, the SCT, the SET with the log key chosen by log id, and
//! the log-entry consistency checks (CVE-2022-36056 class) — the same
//! conversion cosign v3 performs internally.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

/// The `dev.sigstore.cosign/bundle` annotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekorSet {
    #[serde(rename = "SignedEntryTimestamp")]
    pub signed_entry_timestamp: String,
    #[serde(rename = "Payload")]
    pub payload: RekorSetPayload,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekorSetPayload {
    pub body: String,
    #[serde(rename = "integratedTime")]
    pub integrated_time: i64,
    #[serde(rename = "logIndex")]
    pub log_index: i64,
    #[serde(rename = "logID")]
    pub log_id: String,
}

/// What was signed, in bundle terms.
pub enum Content<'a> {
    /// A signature over `payload` (the simple-signing blob).
    Message { payload: &'a [u8], signature: &'a [u8] },
    /// A DSSE envelope, passed through as JSON.
    Dsse(&'a serde_json::Value),
}

/// The key material of the bundle.
pub enum Material<'a> {
    /// A Fulcio leaf certificate (DER).
    Certificate(&'a [u8]),
    /// A public key (verified against the policy's key).
    PublicKey,
}

fn hex_to_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Build the v0.1 bundle JSON for a legacy signature with a Rekor SET.
pub fn v01_bundle(content: Content<'_>, material: Material<'_>, set: &RekorSet) -> Result<String, String> {
    let body = STANDARD
        .decode(&set.payload.body)
        .map_err(|e| format!("Rekor body is not base64: {e}"))?;
    let entry: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("Rekor body is not JSON: {e}"))?;
    let kind = entry
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or("Rekor body has no kind")?;
    let version = entry
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .ok_or("Rekor body has no apiVersion")?;
    let log_id = hex_to_bytes(&set.payload.log_id).ok_or("Rekor logID is not hex")?;
    let material = match material {
        Material::Certificate(der) => {
            json!({ "x509CertificateChain": { "certificates": [ { "rawBytes": STANDARD.encode(der) } ] } })
        }
        Material::PublicKey => json!({ "publicKey": { "hint": "" } }),
    };
    let mut bundle = json!({
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": material,
    });
    bundle["verificationMaterial"]["tlogEntries"] = json!([{
        "logIndex": set.payload.log_index.to_string(),
        "logId": { "keyId": STANDARD.encode(log_id) },
        "kindVersion": { "kind": kind, "version": version },
        "integratedTime": set.payload.integrated_time.to_string(),
        "inclusionPromise": { "signedEntryTimestamp": set.signed_entry_timestamp },
        "canonicalizedBody": set.payload.body,
    }]);
    match content {
        Content::Message { payload, signature } => {
            let digest = crate::oci::Digest::of(crate::oci::Algorithm::Sha256, payload);
            bundle["messageSignature"] = json!({
                "messageDigest": { "algorithm": "SHA2_256", "digest": STANDARD.encode(digest.as_bytes()) },
                "signature": STANDARD.encode(signature),
            });
        }
        Content::Dsse(envelope) => bundle["dsseEnvelope"] = envelope.clone(),
    }
    serde_json::to_string(&bundle).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(hex_to_bytes("c0d2"), Some(vec![0xc0, 0xd2]));
        assert_eq!(hex_to_bytes("c0d"), None);
        assert_eq!(hex_to_bytes("zz"), None);
    }
}
