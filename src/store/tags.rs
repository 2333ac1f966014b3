//! Tag observations: the digest each (upstream, repository, tag) last
//! resolved to. Used to serve the last verified digest when the upstream is
//! unreachable and to notice tags that move.
//!
//! The disk holds every observation; memory holds a bounded cache of the
//! recent ones, since anonymous clients choose how many distinct tags they
//! ask for.

use std::path::PathBuf;

use super::{StoreError, io_err, write_atomic};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

type Key = (RegistryHost, RepoName, Tag);

/// Tag observations kept in memory unless configured otherwise.
pub const DEFAULT_MEMORY_ENTRIES: u64 = 100_000;

pub struct TagStore {
    root: PathBuf,
    tmp: PathBuf,
    recent: moka::sync::Cache<Key, Digest>,
}

impl std::fmt::Debug for TagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl TagStore {
    pub(super) fn new(root: PathBuf, tmp: PathBuf, memory_entries: u64) -> TagStore {
        TagStore {
            root,
            tmp,
            recent: moka::sync::Cache::new(memory_entries),
        }
    }

    /// `tags/<host>/<repo>/_tags/<tag>`: repository components start with an
    /// alphanumeric, so `_tags` can never collide with a nested repository.
    fn path(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.dir(host, repo).join(tag.as_str())
    }

    /// `tags/<host>/<repo>/_tags`: the observations of one repository.
    fn dir(&self, host: &RegistryHost, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join(host.as_str());
        for c in repo.components() {
            p.push(c);
        }
        p.join("_tags")
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
        let key = (host.clone(), repo.clone(), tag.clone());
        let previous = match self.recent.get(&key) {
            Some(d) => Some(d),
            None => self.last(host, repo, tag)?,
        };
        if previous.as_ref() != Some(digest) {
            write_atomic(&self.tmp, &self.path(host, repo, tag), digest.to_string().as_bytes())?;
        }
        self.recent.insert(key, digest.clone());
        Ok(previous.filter(|p| p != digest))
    }

    /// The digest the tag last resolved to, if ever seen.
    pub fn last(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let key = (host.clone(), repo.clone(), tag.clone());
        if let Some(d) = self.recent.get(&key) {
            return Ok(Some(d));
        }
        let path = self.path(host, repo, tag);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// When the upstream last confirmed the tag's digest (the observation
    /// file's modification time; see [`Self::confirm`]).
    pub fn confirmed_at(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.path(host, repo, tag)).ok()?.modified().ok()
    }

    /// The upstream named the same digest again: bring the confirmation
    /// time forward, at most once per `every` (a tag resolved on every pull
    /// costs no write per pull).
    pub fn confirm(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag, every: std::time::Duration) {
        let path = self.path(host, repo, tag);
        let now = std::time::SystemTime::now();
        let Ok(meta) = std::fs::metadata(&path) else { return };
        let fresh = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age < every);
        if !fresh && let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(now);
        }
    }

    /// The tags observed in `repo` of `host` (an offline upstream's tag list).
    pub fn list(&self, host: &RegistryHost, repo: &RepoName) -> Result<Vec<Tag>, StoreError> {
        let dir = self.dir(host, repo);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
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
        let store = TagStore::new(dir.path().join("tags"), tmp, 10);
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
