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

use bytes::Bytes;

use super::Error;
use crate::oci::{Digest, RepoName, Tag};

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
    /// A blob of `repo`: an open file and its length.
    fn blob(&self, repo: &RepoName, digest: &Digest) -> std::io::Result<Option<(std::fs::File, u64)>>;
    /// The referrers of `subject` as an OCI image index (the referrers API's
    /// answer); `None` when the source keeps no such listing (the caller
    /// then reads the `sha256-<hex>` fallback tag).
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> std::io::Result<Option<Bytes>>;
    /// The tags of `repo` (for `/tags/list`).
    fn tags(&self, repo: &RepoName) -> std::io::Result<Vec<Tag>>;
}

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
