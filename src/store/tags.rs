//! Tag observations: the digest each (upstream, repository, tag) last
//! resolved to. Used to serve the last verified digest when the upstream is
//! unreachable and to notice tags that move.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{StoreError, io_err, write_atomic};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

type Key = (RegistryHost, RepoName, Tag);

#[derive(Debug)]
pub struct TagStore {
    root: PathBuf,
    tmp: PathBuf,
    recent: Mutex<HashMap<Key, Digest>>,
}

impl TagStore {
    pub(super) fn new(root: PathBuf, tmp: PathBuf) -> TagStore {
        TagStore {
            root,
            tmp,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// `tags/<host>/<repo>/_tags/<tag>`: repository components start with an
    /// alphanumeric, so `_tags` can never collide with a nested repository.
    fn path(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> PathBuf {
        let mut p = self.root.join(host.as_str());
        for c in repo.components() {
            p.push(c);
        }
        p.join("_tags").join(tag.as_str())
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
        let previous = match self.recent.lock().ok().and_then(|m| m.get(&key).cloned()) {
            Some(d) => Some(d),
            None => self.last(host, repo, tag)?,
        };
        if previous.as_ref() != Some(digest) {
            write_atomic(&self.tmp, &self.path(host, repo, tag), digest.to_string().as_bytes())?;
        }
        if let Ok(mut m) = self.recent.lock() {
            m.insert(key, digest.clone());
        }
        Ok(previous.filter(|p| p != digest))
    }

    /// The digest the tag last resolved to, if ever seen.
    pub fn last(&self, host: &RegistryHost, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let key = (host.clone(), repo.clone(), tag.clone());
        if let Some(d) = self.recent.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(d));
        }
        let path = self.path(host, repo, tag);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }
}
