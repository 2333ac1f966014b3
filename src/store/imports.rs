//! What an air-gap import recorded besides content: which manifests each
//! (upstream, repository) holds (presence, so a digest imported for one
//! repository is not served by digest from another) and the referrers
//! listing of each imported subject (so an offline proxy answers the
//! referrers API without a network).
//!
//! Layout: `imports/<host>/<repo>/_present/<alg>-<hex>` (empty files) and
//! `imports/<host>/<repo>/_referrers/<alg>-<hex>` (an OCI image index).
//! Both are written with [`write_atomic`] after the content they describe,
//! so a reader never sees a listing naming content that is not there.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{StoreError, io_err, write_atomic};
use crate::oci::{Digest, RegistryHost, RepoName};

/// The import records of one data directory.
#[derive(Debug, Clone)]
pub struct Imports {
    root: PathBuf,
    tmp: PathBuf,
}

impl Imports {
    /// The records under `data_dir` (nothing is created until written).
    pub fn open(data_dir: &Path) -> Imports {
        Imports {
            root: data_dir.join("imports"),
            tmp: data_dir.join("tmp"),
        }
    }

    /// `imports/<host>/<repo>/<kind>/<alg>-<hex>`: repository components
    /// start with an alphanumeric, so `_present` cannot collide with one.
    fn path(&self, host: &RegistryHost, repo: &RepoName, kind: &str, digest: &Digest) -> PathBuf {
        let mut p = self.root.join(host.as_str());
        for c in repo.components() {
            p.push(c);
        }
        p.join(kind).join(digest.tag_form())
    }

    /// Record that `repo` of `host` holds the manifest `digest`.
    pub fn put_present(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path(host, repo, "_present", digest);
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.tmp).map_err(io_err("create directory", &self.tmp))?;
        write_atomic(&self.tmp, &path, b"")
    }

    /// Whether an import recorded `digest` in `repo` of `host`.
    pub fn is_present(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> bool {
        self.path(host, repo, "_present", digest).exists()
    }

    /// Record the referrers listing (an OCI image index) of `subject`.
    pub fn put_referrers(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        subject: &Digest,
        listing: &[u8],
    ) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.tmp).map_err(io_err("create directory", &self.tmp))?;
        write_atomic(&self.tmp, &self.path(host, repo, "_referrers", subject), listing)
    }

    /// The recorded referrers listing of `subject`, if an import wrote one.
    pub fn referrers(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(host, repo, "_referrers", subject);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_referrers_are_per_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let imports = Imports::open(dir.path());
        let host: RegistryHost = "registry.test".parse().expect("host");
        let (a, b): (RepoName, RepoName) = ("apps/a".parse().expect("repo"), "apps/b".parse().expect("repo"));
        let d = Digest::of(crate::oci::Algorithm::Sha256, b"x");
        imports.put_present(&host, &a, &d).expect("put");
        assert!(imports.is_present(&host, &a, &d));
        assert!(!imports.is_present(&host, &b, &d));
        imports.put_referrers(&host, &a, &d, b"{}").expect("put");
        assert_eq!(
            imports.referrers(&host, &a, &d).expect("read").as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(imports.referrers(&host, &b, &d).expect("read"), None);
    }
}
