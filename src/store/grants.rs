//! Blob grants on disk: which blobs an admitted manifest lets a repository
//! serve, under which policy revision. A grant is written when the gate
//! admits a manifest, so a restarted proxy (or, later, another replica on the
//! same store) still serves a layer whose download a client is resuming,
//! without asking it to fetch the manifest again. The revision is part of
//! the path *and* of the record: a reload that changes the policy revokes
//! every grant of the old revision, and a record read for another key (a
//! copied or corrupted file) is ignored.

use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;
use super::backend::{Backend, Key, PutMode, Written};
use crate::oci::material::MaterialKind;
use crate::oci::{Algorithm, Digest, RegistryHost, RepoName};

/// What a grant lets the repository serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantScope {
    /// Content an admitted manifest references: served as it is.
    Content,
    /// A blob verification material references: served only once its bytes
    /// are shown to be material of this kind (`oci::material::check_blob`).
    Material(MaterialKind),
}

/// A grant: what it lets the repository serve, and the size the granting
/// descriptor states (covered by the admitted manifest's digest; `None`
/// where no descriptor vouches, as in integrity-only mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub scope: GrantScope,
    pub size: Option<u64>,
}

impl GrantScope {
    /// Of two grants for one blob, the wider: content over material.
    pub fn wider(self, other: GrantScope) -> GrantScope {
        match (self, other) {
            (GrantScope::Content, _) | (_, GrantScope::Content) => GrantScope::Content,
            (mine, _) => mine,
        }
    }
}

/// What a grant is for: a blob of a repository under a policy revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GrantKey {
    pub registry: RegistryHost,
    pub repository: RepoName,
    pub blob: Digest,
    pub revision: String,
}

/// A persisted grant: its key and the admitted manifest that granted it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GrantRecord {
    #[serde(flatten)]
    key: GrantKey,
    manifest: Digest,
    #[serde(flatten)]
    grant: Grant,
}

#[derive(Debug)]
pub struct GrantStore {
    backend: Arc<dyn Backend>,
}

/// Conditional writes retried before giving up on a contended grant.
const CONFLICT_RETRIES: usize = 4;

impl GrantStore {
    pub(super) fn new(backend: Arc<dyn Backend>) -> GrantStore {
        GrantStore { backend }
    }

    /// `grants/<revision>/<sha256(registry/repository)[..32]>/<alg>-<hex>`.
    fn key(key: &GrantKey) -> Option<Key> {
        // The revision is a hex digest; refuse anything else as a key part.
        if key.revision.is_empty() || !key.revision.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let scope = format!("{}/{}", key.registry, key.repository);
        let scope_hash = Digest::of(Algorithm::Sha256, scope.as_bytes()).hex();
        Key::new([
            "grants",
            &key.revision,
            &scope_hash[..32],
            &format!("{}-{}", key.blob.algorithm().as_str(), key.blob.hex()),
        ])
    }

    fn read(&self, key: &GrantKey) -> Option<(Grant, super::backend::Version)> {
        let object = self.backend.get(&Self::key(key)?).ok()??;
        let record = serde_json::from_slice::<GrantRecord>(&object.bytes).ok()?;
        (&record.key == key).then_some((record.grant, object.version))
    }

    /// The grant persisted for exactly `key`, if any.
    pub fn get(&self, key: &GrantKey) -> Option<Grant> {
        self.read(key).map(|(grant, _)| grant)
    }

    /// Whether a grant for exactly `key` is stored.
    pub fn contains(&self, key: &GrantKey) -> bool {
        self.get(key).is_some()
    }

    /// Best effort: a grant that cannot be persisted still holds in memory;
    /// the backend's refusal is returned for the caller to report (a full
    /// store is one condition, not a warning per admission).
    /// A content grant replaces a material one, never the reverse: written
    /// only if absent, or over the exact version read (replicas granting the
    /// same blob at once cannot narrow each other's grant).
    pub fn put(&self, key: &GrantKey, manifest: &Digest, grant: Grant) -> Result<(), StoreError> {
        let Some(object_key) = Self::key(key) else {
            return Ok(());
        };
        let record = GrantRecord {
            key: key.clone(),
            manifest: manifest.clone(),
            grant,
        };
        let bytes = match serde_json::to_vec(&record) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, blob = %key.blob, "cannot encode a blob grant");
                return Ok(());
            }
        };
        for _ in 0..CONFLICT_RETRIES {
            let mode = match self.read(key) {
                Some((existing, _)) if existing.scope.wider(grant.scope) == existing.scope => return Ok(()),
                Some((_, version)) => PutMode::Update(version),
                None => PutMode::Create,
            };
            // Not fsynced: admissions wait for their grants to be written (so
            // a restart right after finds them), and a grant lost in a crash
            // costs only a new manifest request, which grants again.
            match self.backend.put(&object_key, bytes.clone(), mode, false)? {
                Written::Done => return Ok(()),
                Written::Conflict => continue,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revision: &str) -> GrantKey {
        GrantKey {
            registry: "registry.example".parse().expect("host"),
            repository: "team/app".parse().expect("repo"),
            blob: Digest::of(Algorithm::Sha256, b"layer"),
            revision: revision.to_owned(),
        }
    }

    #[test]
    fn grants_are_bound_to_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let backend = crate::store::backend::fs::FsBackend::new(dir.path().to_owned(), tmp);
        let store = GrantStore::new(Arc::new(backend));
        let manifest = Digest::of(Algorithm::Sha256, b"manifest");
        let content = Grant {
            scope: GrantScope::Content,
            size: Some(5),
        };
        store.put(&key("abc123"), &manifest, content).expect("put");
        assert!(store.contains(&key("abc123")));
        assert!(!store.contains(&key("def456")), "another revision");
        let mut other_repo = key("abc123");
        other_repo.repository = "team/other".parse().expect("repo");
        assert!(!store.contains(&other_repo));
        // A record copied over another key's path is ignored.
        let (from, to) = (
            GrantStore::key(&key("abc123")).expect("key"),
            GrantStore::key(&other_repo).expect("key"),
        );
        let record = store.backend.get(&from).expect("read").expect("present");
        store
            .backend
            .put(&to, record.bytes, PutMode::Overwrite, false)
            .expect("copy");
        assert!(!store.contains(&other_repo));
        assert!(GrantStore::key(&key("../x")).is_none());
        // Material never narrows content.
        let material = Grant {
            scope: GrantScope::Material(MaterialKind::LegacySignature),
            size: Some(5),
        };
        store.put(&key("abc123"), &manifest, material).expect("put");
        assert_eq!(store.get(&key("abc123")), Some(content));
        store.put(&key("fff000"), &manifest, material).expect("put");
        assert_eq!(store.get(&key("fff000")), Some(material));
    }
}
