//! What an air-gap import recorded besides content: which manifests each
//! (upstream, repository) holds (presence, so a digest imported for one
//! repository is not served by digest from another) and the referrers
//! listing of each imported subject (so an offline proxy answers the
//! referrers API without a network).
//!
//! Layout: `imports/<host>/<repo>/_present/<alg>-<hex>` (empty files) and
//! `imports/<host>/<repo>/_referrers/<alg>-<hex>` (an OCI image index).
//! Both are written durably, after the content they describe,
//! so a reader never sees a listing naming content that is not there.

use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;
use super::backend::{Backend, Key, PutMode};
use crate::oci::{Digest, RegistryHost, RepoName};

/// The import records of one store.
#[derive(Clone)]
pub struct Imports {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Imports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports").finish_non_exhaustive()
    }
}

impl Imports {
    pub(super) fn new(backend: Arc<dyn Backend>) -> Imports {
        Imports { backend }
    }

    /// `imports/<host>/<repo>/<kind>/<alg>-<hex>`: repository components
    /// start with an alphanumeric, so `_present` cannot collide with one.
    fn key(host: &RegistryHost, repo: &RepoName, kind: &str, digest: &Digest) -> Option<Key> {
        Key::new(
            std::iter::once("imports")
                .chain(std::iter::once(host.as_str()))
                .chain(repo.components())
                .chain([kind, digest.tag_form().as_str()]),
        )
    }

    /// Record that `repo` of `host` holds the manifest `digest`.
    pub fn put_present(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        let Some(key) = Self::key(host, repo, "_present", digest) else {
            return Ok(());
        };
        if self.backend.size(&key)?.is_some() {
            return Ok(());
        }
        self.backend.put(&key, Bytes::new(), PutMode::Overwrite, true)?;
        Ok(())
    }

    /// Whether an import recorded `digest` in `repo` of `host`. A storage
    /// failure reads as absent (the content is then not served: closed).
    pub fn is_present(&self, host: &RegistryHost, repo: &RepoName, digest: &Digest) -> bool {
        Self::key(host, repo, "_present", digest).is_some_and(|key| matches!(self.backend.size(&key), Ok(Some(_))))
    }

    /// Record the referrers listing (an OCI image index) of `subject`.
    pub fn put_referrers(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        subject: &Digest,
        listing: &[u8],
    ) -> Result<(), StoreError> {
        let Some(key) = Self::key(host, repo, "_referrers", subject) else {
            return Ok(());
        };
        self.backend
            .put(&key, Bytes::copy_from_slice(listing), PutMode::Overwrite, true)?;
        Ok(())
    }

    /// The recorded referrers listing of `subject`, if an import wrote one.
    pub fn referrers(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Bytes>, StoreError> {
        let Some(key) = Self::key(host, repo, "_referrers", subject) else {
            return Ok(None);
        };
        Ok(self.backend.get(&key)?.map(|o| o.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_referrers_are_per_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let backend = crate::store::backend::fs::FsBackend::new(dir.path().to_owned(), tmp);
        let imports = Imports::new(Arc::new(backend));
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
