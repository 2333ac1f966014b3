//! The export record: an in-toto Statement v1 naming every exported image
//! digest as a subject, with what was exported (references, manifests,
//! material, byte counts), the exporting policy revision and the time.
//! With `--sign-key` it is DSSE-signed inside a key-based Sigstore bundle
//! by the promotion record's own signer (`promote::record::bundle`), and
//! the far side checks it with the export station's public key through
//! the same bundle verification as image attestations.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::oci::Digest;
use crate::promote::record::{self as signing, PromoterKey, RecordError};
use crate::verify::signature::authority::{Authority, AuthorityKind, BlobSignatures, Sct, Tlog};
use crate::verify::signature::check;
use crate::verify::signature::{PublicKey, SignatureHash};

/// `predicateType` of export records.
pub const EXPORT_PREDICATE: &str = "https://portcullis.dev/export/v1";
const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";

/// One exported image as the record states it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedImage {
    pub reference: String,
    pub digest: Digest,
    /// Child manifests exported with it (an index's platforms).
    pub manifests: Vec<Digest>,
    /// Verification material manifests (tags and referrers).
    pub material: Vec<Digest>,
}

/// The statement for `images`, exported under `policy_revision` at `time`.
pub fn statement(
    images: &[ExportedImage],
    policy_revision: Option<&str>,
    blobs: usize,
    bytes: u64,
    time: &str,
) -> Value {
    let subject: Vec<Value> = images
        .iter()
        .map(|i| json!({ "name": i.reference, "digest": { i.digest.algorithm().as_str(): i.digest.hex() } }))
        .collect();
    json!({
        "_type": STATEMENT_V1,
        "subject": subject,
        "predicateType": EXPORT_PREDICATE,
        "predicate": {
            "exporter": { "portcullis": env!("CARGO_PKG_VERSION") },
            "exportedAt": time,
            "policyRevision": policy_revision,
            "images": images,
            "blobs": blobs,
            "bytes": bytes,
        }
    })
}

/// Sign `statement` (its exact bytes) with the export station's key.
pub fn sign(key: &PromoterKey, statement: &[u8]) -> Result<Vec<u8>, RecordError> {
    signing::bundle(key, statement)
}

/// Why an archive's export signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("export station key {path}: {message}")]
    Key { path: String, message: String },
    #[error("the archive carries no signed export record")]
    Missing,
    #[error("the export record's signature does not verify for {digest}: {reason}")]
    Invalid { digest: Digest, reason: String },
}

/// The export station's public key, as an authority of its own.
#[derive(Debug, Clone)]
pub struct ExportStation(Arc<Authority>);

impl ExportStation {
    /// A PEM public key file (what `cosign generate-key-pair` writes as `.pub`).
    pub fn load(path: &Path) -> Result<ExportStation, SignatureError> {
        let error = |message: String| SignatureError::Key {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let key = PublicKey::from_pem(&pem, SignatureHash::Sha256).map_err(|e| error(e.to_string()))?;
        Ok(ExportStation(Arc::new(Authority {
            name: "export-station".into(),
            kind: AuthorityKind::Key {
                keys: vec![("export-station".into(), Arc::new(key))],
            },
            // Signed at the export station, offline: no log to consult.
            tlog: Tlog::Ignore,
            sct: Sct::Ignore,
            trust_root: None,
            blob_signatures: BlobSignatures::Refuse,
        })))
    }

    /// Whether `bundle` is this station's signature over a record naming
    /// `digest` among its subjects.
    pub fn check(&self, bundle: Option<&[u8]>, digest: &Digest) -> Result<(), SignatureError> {
        let bundle = bundle.ok_or(SignatureError::Missing)?;
        let proof = check::verify_bundle(bundle, digest, &self.0).map_err(|e| SignatureError::Invalid {
            digest: digest.clone(),
            reason: e.to_string(),
        })?;
        match proof.statement {
            Some((predicate, _)) if predicate == EXPORT_PREDICATE => Ok(()),
            _ => Err(SignatureError::Invalid {
                digest: digest.clone(),
                reason: "the signed statement is not an export record".into(),
            }),
        }
    }
}
