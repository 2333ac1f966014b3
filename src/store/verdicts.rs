//! Definitive "allow" verdicts, keyed by (manifest digest, policy
//! revision, rule, registry, repository — signatures are discovered per
//! repository), so a restart (or another replica on the same bucket) does
//! not re-verify every image. Denials are kept in memory only, briefly: a
//! newly signed image should not stay refused. Each record carries the key
//! it was written for, and a record read for another key (copied, renamed,
//! or corrupted) is ignored.

use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;
use super::backend::{Backend, Key, PutMode};
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
    backend: Arc<dyn Backend>,
}

impl VerdictStore {
    pub fn new(backend: Arc<dyn Backend>) -> VerdictStore {
        VerdictStore { backend }
    }

    /// `verdicts/<revision>/<alg>-<hex>-<sha256(rule registry/repository)[..16]>.json`.
    fn key(key: &VerdictKey) -> Option<Key> {
        if key.revision.is_empty() || !key.revision.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let scope = format!("{} {}/{}", key.rule, key.registry, key.repository);
        let scope_hash = Digest::of(Algorithm::Sha256, scope.as_bytes()).hex();
        Key::new([
            "verdicts",
            &key.revision,
            &format!(
                "{}-{}-{}.json",
                key.digest.algorithm().as_str(),
                key.digest.hex(),
                &scope_hash[..16]
            ),
        ])
    }

    /// The verdict persisted for exactly `key`, if any.
    pub fn get(&self, key: &VerdictKey) -> Option<Decision> {
        let object = self.backend.get(&Self::key(key)?).ok()??;
        let record: VerdictRecord = serde_json::from_slice(&object.bytes).ok()?;
        (&record.key == key).then_some(record.decision)
    }

    /// Best effort: a verdict that cannot be persisted is simply verified
    /// again; the backend's refusal is returned for the caller to report.
    /// Written only if absent: a verdict for one key is the same whoever
    /// reached it (same revision, same rule, same digest).
    pub fn put(&self, key: &VerdictKey, decision: &Decision) -> Result<(), StoreError> {
        let Some(object_key) = Self::key(key) else {
            return Ok(());
        };
        let record = VerdictRecord {
            key: key.clone(),
            decision: decision.clone(),
        };
        let bytes = match serde_json::to_vec(&record) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a verdict");
                return Ok(());
            }
        };
        self.backend
            .put(&object_key, Bytes::from(bytes), PutMode::Create, true)
            .map(|_| ())
    }
}
