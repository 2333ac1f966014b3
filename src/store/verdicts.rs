//! Definitive "allow" verdicts on disk, keyed by (manifest digest, policy
//! revision, rule, registry, repository — signatures are discovered per
//! repository), so a restart does not re-verify every image. Denials are
//! kept in memory only, briefly: a newly signed image should not stay
//! refused. Each file carries the key it was written for, and a file read
//! for another key (copied, renamed, or corrupted) is ignored.

use std::path::PathBuf;

use super::write_atomic;
use crate::oci::{Algorithm, Digest, RegistryHost, RepoName};
use crate::policy::Decision;

/// What a verdict is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VerdictKey {
    pub digest: Digest,
    pub revision: String,
    pub rule: String,
    pub registry: RegistryHost,
    pub repository: RepoName,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct VerdictRecord {
    key: VerdictKey,
    decision: Decision,
}

#[derive(Debug)]
pub struct VerdictStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl VerdictStore {
    pub fn new(root: PathBuf) -> VerdictStore {
        let tmp = root.join(".tmp");
        VerdictStore { root, tmp }
    }

    /// `verdicts/<revision>/<alg>-<hex>-<sha256(rule registry/repository)[..16]>.json`.
    fn path(&self, key: &VerdictKey) -> Option<PathBuf> {
        if key.revision.is_empty() || !key.revision.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let scope = format!("{} {}/{}", key.rule, key.registry, key.repository);
        let scope_hash = Digest::of(Algorithm::Sha256, scope.as_bytes()).hex();
        Some(self.root.join(&key.revision).join(format!(
            "{}-{}-{}.json",
            key.digest.algorithm().as_str(),
            key.digest.hex(),
            &scope_hash[..16]
        )))
    }

    /// The verdict persisted for exactly `key`, if any.
    pub fn get(&self, key: &VerdictKey) -> Option<Decision> {
        let text = std::fs::read(self.path(key)?).ok()?;
        let record: VerdictRecord = serde_json::from_slice(&text).ok()?;
        (&record.key == key).then_some(record.decision)
    }

    /// Best effort: a verdict that cannot be persisted is simply verified again.
    pub fn put(&self, key: &VerdictKey, decision: &Decision) {
        let Some(path) = self.path(key) else { return };
        let record = VerdictRecord {
            key: key.clone(),
            decision: decision.clone(),
        };
        let written = std::fs::create_dir_all(&self.tmp)
            .map_err(|e| e.to_string())
            .and_then(|()| serde_json::to_vec(&record).map_err(|e| e.to_string()))
            .and_then(|bytes| write_atomic(&self.tmp, &path, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot persist a verdict");
        }
    }
}
