//! Where content comes from when it is not a registry on the network: a
//! read-only local source (an OCI image layout being imported, or the
//! proxy's own store for an `offline` upstream) behind the same
//! [`Registry`](super::Registry) methods the proxy already calls, so one
//! admission gate runs over any of them.
//!
//! A registry with a local source never opens a connection: its pull
//! methods answer from the source (absent → [`Error::NotFound`], as a
//! registry's 404), and every other request (pushes, the catalog, token
//! requests) fails with [`Error::Offline`] before anything is sent.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::fetch::{ManifestHead, TagsPage};
use super::{Error, Registry};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::verify::UnverifiedManifest;

/// A manifest as a local source holds it: bytes and the media type it was
/// stored with. Verified by the caller like any upstream answer.
#[derive(Debug, Clone)]
pub struct LocalManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
}

/// A read-only source of content. Every method does blocking file I/O
/// (the registry calls them on the blocking pool) and answers `Ok(None)`
/// for "not here". Nothing read here is trusted: manifests and blobs pass
/// the same verification as network answers.
pub trait LocalSource: Send + Sync + std::fmt::Debug + 'static {
    /// The digest `tag` names in `repo`.
    fn resolve(&self, repo: &RepoName, tag: &Tag) -> std::io::Result<Option<Digest>>;
    /// A manifest of `repo` by digest.
    fn manifest(&self, repo: &RepoName, digest: &Digest) -> std::io::Result<Option<LocalManifest>>;
    /// A blob of `repo`: its bytes and its length.
    fn blob(&self, repo: &RepoName, digest: &Digest) -> std::io::Result<Option<(LocalBlob, u64)>>;
    /// The referrers of `subject` as an OCI image index (the referrers API's
    /// answer); `None` when the source keeps no such listing (the caller
    /// then reads the `sha256-<hex>` fallback tag).
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> std::io::Result<Option<Bytes>>;
    /// The tags of `repo` (for `/tags/list`).
    fn tags(&self, repo: &RepoName) -> std::io::Result<Vec<Tag>>;
}

/// Reads of a local blob at any offset (a file, or the store's reader of
/// whatever backend holds it). Blocking, like the rest of a source.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Exactly `buf.len()` bytes at `pos` (`UnexpectedEof` past the end).
    fn read_at(&self, pos: u64, buf: BytesMut) -> std::io::Result<Bytes>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, pos: u64, mut buf: BytesMut) -> std::io::Result<Bytes> {
        std::os::unix::fs::FileExt::read_exact_at(self, &mut buf, pos)?;
        Ok(buf.freeze())
    }
}

/// A local blob's bytes.
pub type LocalBlob = Arc<dyn ReadAt>;

/// A shared local source.
pub type SharedSource = Arc<dyn LocalSource>;

/// Run a source call on the blocking pool; its I/O failure is this host's.
pub(super) async fn call<T: Send + 'static>(
    host: &str,
    source: &SharedSource,
    f: impl FnOnce(&dyn LocalSource) -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    let source = source.clone();
    let failed = |message: String| Error::Local {
        host: host.to_owned(),
        message,
    };
    match tokio::task::spawn_blocking(move || f(source.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(format!("local read task failed: {e}"))),
    }
}

/// The pull API answered from a local source: the same results a registry
/// gives (absent → `NotFound`), with nothing sent anywhere.
impl Registry {
    fn not_found(&self, what: &'static str) -> Error {
        Error::NotFound {
            host: self.host().to_string(),
            what,
        }
    }

    async fn local_digest(
        &self,
        source: &SharedSource,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Digest, Error> {
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(t) => {
                let (r, t) = (repo.clone(), t.clone());
                call(self.host().as_str(), source, move |s| s.resolve(&r, &t))
                    .await?
                    .ok_or_else(|| self.not_found("manifest"))
            }
        }
    }

    pub(super) async fn local_manifest(
        &self,
        source: &SharedSource,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UnverifiedManifest, Error> {
        let digest = self.local_digest(source, repo, reference).await?;
        let (r, d) = (repo.clone(), digest.clone());
        let m = call(self.host().as_str(), source, move |s| s.manifest(&r, &d))
            .await?
            .ok_or_else(|| self.not_found("manifest"))?;
        Ok(UnverifiedManifest {
            bytes: m.bytes,
            content_type: m.media_type,
            // What the source filed it under: verification checks the bytes
            // against it, as against a registry's header.
            claimed_digest: Some(digest),
        })
    }

    pub(super) async fn local_head_manifest(
        &self,
        source: &SharedSource,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, Error> {
        let m = self.local_manifest(source, repo, reference).await?;
        Ok(ManifestHead {
            digest: m.claimed_digest,
            content_type: m.content_type,
            length: Some(m.bytes.len() as u64),
        })
    }

    pub(super) async fn local_blob(
        &self,
        source: &SharedSource,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(LocalBlob, u64), Error> {
        let (r, d) = (repo.clone(), digest.clone());
        call(self.host().as_str(), source, move |s| s.blob(&r, &d))
            .await?
            .ok_or_else(|| self.not_found("blob"))
    }

    /// A tag list page (sorted, `n` after `last`), no `Link`: the proxy
    /// re-paginates for its clients anyway.
    pub(super) async fn local_tags(
        &self,
        source: &SharedSource,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagsPage, Error> {
        let r = repo.clone();
        let mut tags: Vec<String> = call(self.host().as_str(), source, move |s| s.tags(&r))
            .await?
            .iter()
            .map(|t: &Tag| t.as_str().to_owned())
            .collect();
        tags.sort();
        if let Some(last) = last {
            tags.retain(|t| t.as_str() > last);
        }
        if let Some(n) = n {
            tags.truncate(n);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "name": repo.as_str(), "tags": tags })).map_err(|e| {
            Error::Local {
                host: self.host().to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(TagsPage {
            body: body.into(),
            link: None,
        })
    }
}
