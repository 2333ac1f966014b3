//! Definitive "allow" verdicts on disk, keyed by (manifest digest, policy
//! revision, rule and repository — signatures are discovered per
//! repository), so a restart does not re-verify every image. Denials are
//! kept in memory only, briefly: a newly signed image should not stay
//! refused.

use std::path::PathBuf;

use super::write_atomic;
use crate::oci::{Algorithm, Digest};
use crate::policy::Decision;

#[derive(Debug)]
pub struct VerdictStore {
    root: PathBuf,
}

impl VerdictStore {
    pub fn new(root: PathBuf) -> VerdictStore {
        VerdictStore { root }
    }

    /// `verdicts/<revision>/<alg>-<hex>-<sha256(scope)[..16]>.json`, where the
    /// scope names the rule and the repository.
    fn path(&self, (digest, revision, scope): &(Digest, String, String)) -> PathBuf {
        let scope_hash = Digest::of(Algorithm::Sha256, scope.as_bytes()).hex();
        self.root.join(revision).join(format!(
            "{}-{}-{}.json",
            digest.algorithm().as_str(),
            digest.hex(),
            &scope_hash[..16]
        ))
    }

    pub fn get(&self, key: &(Digest, String, String)) -> Option<Decision> {
        let text = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Best effort: a verdict that cannot be persisted is simply verified again.
    pub fn put(&self, key: &(Digest, String, String), d: &Decision) {
        let path = self.path(key);
        let Some(dir) = path.parent() else { return };
        let tmp = self.root.join(".tmp");
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::create_dir_all(&tmp))
            .map_err(|e| e.to_string())
            .and_then(|()| serde_json::to_vec(d).map_err(|e| e.to_string()))
            .and_then(|bytes| write_atomic(&tmp, &path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot persist a verdict");
        }
    }
}
