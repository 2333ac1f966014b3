//! An offline upstream (`offline: true`, `serve --offline`): its content
//! comes from the store alone, through the same `Registry` methods the
//! proxy uses for a network upstream, so a pull of it passes the same gate
//! (a verdict of the policy in force, or discovery and verification of the
//! stored material with local trust when the revision changed).
//!
//! Tags resolve to their imported or last admitted digest (read from disk,
//! since `portcullis import` may write them while this proxy runs); a
//! manifest is present in a repository by digest when an import recorded
//! it there or a tag of the repository names it; absent content is a 404.

use std::sync::Arc;

use bytes::Bytes;

use crate::oci::{Digest, RegistryHost, RepoName, Tag};
use crate::store::Store;
use crate::upstream::local::{LocalBlob, LocalManifest, LocalSource, ReadAt};

/// The store as the source of one offline upstream.
#[derive(Debug)]
pub struct StoreSource {
    host: RegistryHost,
    store: Arc<Store>,
}

impl StoreSource {
    pub fn new(host: RegistryHost, store: Arc<Store>) -> StoreSource {
        StoreSource { host, store }
    }
}

/// A stored blob as a local source's blob (the store's reader works on
/// every backend; `upstream` cannot name the store's type).
#[derive(Debug)]
struct StoredBlob(crate::store::backend::BlobReader);

impl ReadAt for StoredBlob {
    fn read_at(&self, pos: u64, buf: bytes::BytesMut) -> std::io::Result<Bytes> {
        self.0.read_at(pos, buf)
    }
}

fn io(e: crate::store::StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl LocalSource for StoreSource {
    fn resolve(&self, repo: &RepoName, tag: &Tag) -> std::io::Result<Option<Digest>> {
        let digest = self.store.tags.reread(&self.host, repo, tag).map_err(io)?;
        // A tag names the digest in this repository: remember it as present
        // for the by-digest read that follows.
        if let Some(d) = &digest
            && !self.store.imports.is_present(&self.host, repo, d)
            && self.store.manifests.get(d).map_err(io)?.is_some()
        {
            self.store.imports.put_present(&self.host, repo, d).map_err(io)?;
        }
        Ok(digest)
    }

    fn manifest(&self, repo: &RepoName, digest: &Digest) -> std::io::Result<Option<LocalManifest>> {
        if !self.store.imports.is_present(&self.host, repo, digest) {
            return Ok(None);
        }
        Ok(self.store.manifests.get(digest).map_err(io)?.map(|m| LocalManifest {
            bytes: m.bytes,
            media_type: m.content_type,
        }))
    }

    /// Blobs are global by digest: the proxy serves one to a client only
    /// under a grant of the repository, and reads material blobs only as
    /// named by a manifest present in it.
    fn blob(&self, _repo: &RepoName, digest: &Digest) -> std::io::Result<Option<(LocalBlob, u64)>> {
        let opened = self.store.blobs.open(digest).map_err(io)?;
        Ok(opened.map(|(reader, len)| (Arc::new(StoredBlob(reader)) as LocalBlob, len)))
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> std::io::Result<Option<Bytes>> {
        self.store.imports.referrers(&self.host, repo, subject).map_err(io)
    }

    fn tags(&self, repo: &RepoName) -> std::io::Result<Vec<Tag>> {
        self.store.tags.list(&self.host, repo).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::OCI_MANIFEST;
    use crate::verify::{UnverifiedManifest, manifest::check_computed};

    /// A manifest is served by digest only in a repository that an import
    /// recorded it in, or whose tag names it: content of one repository
    /// never leaks into another by digest.
    #[test]
    fn presence_is_per_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        let m = check_computed(UnverifiedManifest {
            bytes: bytes::Bytes::from_static(bytes),
            content_type: Some(OCI_MANIFEST.into()),
            claimed_digest: None,
        })
        .expect("manifest");
        store.manifests.put(&m).expect("put");
        let host: RegistryHost = "registry.test".parse().expect("host");
        let (a, b): (RepoName, RepoName) = ("apps/a".parse().expect("repo"), "apps/b".parse().expect("repo"));
        let tag: Tag = "v1".parse().expect("tag");
        store.tags.record(&host, &a, &tag, m.digest()).expect("tag");
        let source = StoreSource::new(host.clone(), store.clone());

        assert!(
            source.manifest(&a, m.digest()).expect("read").is_none(),
            "not yet present"
        );
        assert_eq!(source.resolve(&a, &tag).expect("resolve").as_ref(), Some(m.digest()));
        let got = source
            .manifest(&a, m.digest())
            .expect("read")
            .expect("present after its tag");
        assert_eq!(&got.bytes[..], &bytes[..]);
        assert_eq!(got.media_type.as_deref(), Some(OCI_MANIFEST));
        assert!(
            source.manifest(&b, m.digest()).expect("read").is_none(),
            "another repository"
        );
        assert_eq!(source.resolve(&b, &tag).expect("resolve"), None);
        assert_eq!(source.tags(&a).expect("tags"), vec![tag]);
        assert!(source.referrers(&a, m.digest()).expect("referrers").is_none());
    }
}
