//! Trust material from local files only: Sigstore `trusted_root.json`
//! (Fulcio CAs, Rekor and CT log keys, TSAs), optionally pinned by sha256.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::oci::{Algorithm, Digest};

/// A loaded trusted root.
pub struct TrustRoot {
    pub name: String,
    pub path: PathBuf,
    /// sha256 of the file, as loaded.
    pub sha256: String,
    pub root: sigstore_trust_root::TrustedRoot,
    /// The Sigstore verifier over this root, built once (it is Send + Sync).
    pub verifier: sigstore_verify::Verifier,
}

impl fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrustRoot({}, {}, sha256:{})",
            self.name,
            self.path.display(),
            self.sha256
        )
    }
}

/// Why trust material was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has sha256 {actual}, but the policy pins {pinned}")]
    PinMismatch {
        path: PathBuf,
        pinned: String,
        actual: String,
    },
    #[error("{path} is not a Sigstore trusted root: {message}")]
    Parse { path: PathBuf, message: String },
}

impl TrustRoot {
    /// Load `path`; when `pin` is given, the file's sha256 must equal it.
    pub fn load(name: &str, path: &Path, pin: Option<&str>) -> Result<TrustRoot, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = Digest::of(Algorithm::Sha256, &bytes).hex();
        if let Some(pinned) = pin
            && !pinned.eq_ignore_ascii_case(&sha256)
        {
            return Err(TrustError::PinMismatch {
                path: path.to_owned(),
                pinned: pinned.to_owned(),
                actual: sha256,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| TrustError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let root = sigstore_trust_root::TrustedRoot::from_json(&text).map_err(|e| TrustError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let verifier = sigstore_verify::Verifier::new(&root).map_err(|e| TrustError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(TrustRoot {
            name: name.to_owned(),
            path: path.to_owned(),
            sha256,
            root,
            verifier,
        })
    }
}
