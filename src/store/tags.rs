//! Tag observations: the digest each (upstream, repository, tag) last
//! resolved to. Used to serve the last verified digest when the upstream is
//! unreachable, to notice tags that move, and to hold tags still
//! (`mutable: deny`).
//!
//! The backend holds every observation; memory holds a bounded cache of the
//! recent ones, since anonymous clients choose how many distinct tags they
//! ask for. On a shared bucket the write is conditional (create if absent,
//! else replace only the version read), so replicas recording the same tag
//! at once agree on one history: the loser reads the winner's digest.

use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;
use super::backend::{Backend, Key, PutMode, Written};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

type CacheKey = (RegistryHost, RepoName, Tag);

/// Tag observations kept in memory unless configured otherwise.
pub const DEFAULT_MEMORY_ENTRIES: u64 = 100_000;

/// Conditional writes retried before giving up on a contended tag.
const CONFLICT_RETRIES: usize = 8;

pub struct TagStore {
    backend: Arc<dyn Backend>,
    recent: moka::sync::Cache<CacheKey, Digest>,
    /// When this process last wrote each tag's confirmation (bounded like
    /// `recent`).
    confirmed: moka::sync::Cache<CacheKey, std::time::Instant>,
}

impl std::fmt::Debug for TagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagStore").finish_non_exhaustive()
    }
}

impl TagStore {
    pub(super) fn new(backend: Arc<dyn Backend>, memory_entries: u64) -> TagStore {
        TagStore {
            backend,
            recent: moka::sync::Cache::new(memory_entries),
            confirmed: moka::sync::Cache::new(memory_entries),
        }
    }

    /// `tags/<host>/<repo>/_tags/<tag>`: repository components start with an
    /// alphanumeric, so `_tags` can never collide with a nested repository.
    fn key(host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Option<Key> {
        Key::new(
            std::iter::once("tags")
                .chain(std::iter::once(host.as_str()))
                .chain(repo.components())
                .chain(["_tags", tag.as_str()]),
        )
    }

    /// `tags/<host>/<repo>/<area>`: the records of one repository.
    fn area(host: &RegistryHost, repo: &RepoName, area: &str) -> Option<Key> {
        Key::new(
            std::iter::once("tags")
                .chain(std::iter::once(host.as_str()))
                .chain(repo.components())
                .chain(std::iter::once(area)),
        )
    }

    /// `tags/<host>/<repo>/_confirmed/<tag>`: when the upstream last named
    /// the tag's digest (unix milliseconds), apart from the observation so
    /// a confirmation never races a replica's conditional move of the tag.
    fn confirmed_key(host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Option<Key> {
        Self::area(host, repo, "_confirmed")?.child(tag.as_str())
    }

    /// Record that the tag resolved to `digest`. Returns the previous digest
    /// when the tag moved.
    pub fn record(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>, StoreError> {
        let cache_key = (host.clone(), repo.clone(), tag.clone());
        if self.recent.get(&cache_key).as_ref() == Some(digest) && !self.backend.shared() {
            return Ok(None);
        }
        let Some(key) = Self::key(host, repo, tag) else {
            return Ok(None);
        };
        let mut previous = None;
        for _ in 0..CONFLICT_RETRIES {
            let current = self.backend.get(&key)?;
            previous = current.as_ref().and_then(|o| parse(&o.bytes));
            if previous.as_ref() == Some(digest) {
                break;
            }
            let mode = match current {
                None => PutMode::Create,
                Some(o) => PutMode::Update(o.version),
            };
            let body = Bytes::from(digest.to_string());
            if self.backend.put(&key, body, mode, true)? == Written::Done {
                break;
            }
            // Another replica wrote in between: read its digest and retry.
        }
        self.recent.insert(cache_key, digest.clone());
        Ok(previous.filter(|p| p != digest))
    }

    /// The digest the tag last resolved to, if ever seen. On a shared
    /// bucket the bucket is asked (another replica may have moved it).
    pub fn last(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let cache_key = (host.clone(), repo.clone(), tag.clone());
        if !self.backend.shared()
            && let Some(d) = self.recent.get(&cache_key)
        {
            return Ok(Some(d));
        }
        let Some(key) = Self::key(host, repo, tag) else {
            return Ok(None);
        };
        let found = self.backend.get(&key)?.and_then(|o| parse(&o.bytes));
        if let Some(d) = &found {
            self.recent.insert(cache_key, d.clone());
        }
        Ok(found)
    }

    /// When the upstream last confirmed the tag's digest (see
    /// [`Self::confirm`]); `None` if it never did (an imported tag).
    pub fn confirmed_at(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Option<std::time::SystemTime> {
        let key = Self::confirmed_key(host, repo, tag)?;
        let object = self.backend.get(&key).ok()??;
        let millis: u64 = std::str::from_utf8(&object.bytes).ok()?.trim().parse().ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(millis))
    }

    /// The upstream named the digest again: bring the confirmation time
    /// forward, at most once per `every` by this process (a tag resolved on
    /// every pull costs no write per pull). Best effort: a failed write
    /// only makes the tag look older to the stale bound.
    pub fn confirm(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag, every: std::time::Duration) {
        let cache_key = (host.clone(), repo.clone(), tag.clone());
        let now = std::time::Instant::now();
        if self
            .confirmed
            .get(&cache_key)
            .is_some_and(|at| now.duration_since(at) < every)
        {
            return;
        }
        let Some(key) = Self::confirmed_key(host, repo, tag) else {
            return;
        };
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = self
            .backend
            .put(&key, Bytes::from(millis.to_string()), PutMode::Overwrite, false)
        {
            tracing::debug!(error = %e, %key, "cannot record a tag confirmation");
            return;
        }
        self.confirmed.insert(cache_key, now);
    }

    /// The tags observed in `repo` of `host` (an offline upstream's tag list).
    pub fn list(&self, host: &RegistryHost, repo: &RepoName) -> Result<Vec<Tag>, StoreError> {
        let Some(prefix) = Self::area(host, repo, "_tags") else {
            return Ok(Vec::new());
        };
        Ok(self
            .backend
            .list(&prefix)?
            .into_iter()
            .filter_map(|l| l.key.as_str().rsplit('/').next()?.parse().ok())
            .collect())
    }

    /// [`Self::last`] read from the disk, refreshing the memory: another
    /// process (`portcullis import`) may have moved the tag meanwhile.
    pub fn reread(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let key = (host.clone(), repo.clone(), tag.clone());
        self.recent.invalidate(&key);
        self.last(host, repo, tag)
    }
}

fn parse(bytes: &[u8]) -> Option<Digest> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> (RegistryHost, RepoName, Tag) {
        (
            "registry.test".parse().expect("host"),
            "app".parse().expect("repo"),
            format!("t{i}").parse().expect("tag"),
        )
    }

    /// Memory is bounded whatever the number of tags; evicted observations
    /// are still read back from disk.
    #[test]
    fn memory_is_bounded_and_the_disk_remembers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let backend = crate::store::backend::fs::FsBackend::new(dir.path().to_owned(), tmp);
        let store = TagStore::new(Arc::new(backend), 10);
        let digest = |i: usize| Digest::of(crate::oci::Algorithm::Sha256, format!("{i}").as_bytes());
        for i in 0..500 {
            let (h, r, t) = key(i);
            store.record(&h, &r, &t, &digest(i)).expect("record");
        }
        store.recent.run_pending_tasks();
        assert!(
            store.recent.entry_count() <= 10,
            "{} in memory",
            store.recent.entry_count()
        );
        for i in [0, 250, 499] {
            let (h, r, t) = key(i);
            assert_eq!(store.last(&h, &r, &t).expect("read"), Some(digest(i)));
        }
    }
}
