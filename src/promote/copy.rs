//! Copying verified content from one registry to another, children before
//! parents: blobs (skipped when present, mounted on the same registry,
//! otherwise streamed from the source while hashed), then manifests with
//! their exact bytes and media type.
//!
//! The destination never receives a completed blob upload whose bytes did
//! not hash to the descriptor: the last bytes are held back and the final
//! `PUT ?digest=` is sent only after [`BlobVerifier::finish`] succeeded; on a
//! mismatch the upload is deleted.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

use crate::oci::manifest::{DEFAULT_ACCEPT, MAX_MANIFEST_BYTES};
use crate::oci::{Descriptor, Digest, Reference};
use crate::proxy::Target;
use crate::upstream::{self, Mount, Upload};
use crate::verify::{self, BlobVerifier, IntegrityError, VerifiedManifest};

/// Blobs up to this size go in one `PUT`; larger ones in `PATCH` chunks of
/// this size (memory held per copy: one chunk).
pub const DEFAULT_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Index nesting followed (an index of indexes of manifests is depth 2).
const MAX_DEPTH: usize = 4;

/// Why a copy stopped. Nothing is tagged by a copy, so a stopped copy only
/// leaves content-addressed pieces behind.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("{digest} read from the source failed verification: {source}")]
    Integrity { digest: Digest, source: IntegrityError },
    #[error("indexes nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// What a copy did, for the report (and for checking that a rerun copies
/// only what is missing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyStats {
    pub blobs_present: u64,
    pub blobs_mounted: u64,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub manifests_present: u64,
    pub manifests_put: u64,
}

/// One copy from `src` to `dst`.
#[derive(Debug)]
pub struct Copier {
    src: Target,
    dst: Target,
    chunk_bytes: usize,
    pub stats: CopyStats,
}

impl Copier {
    pub fn new(src: Target, dst: Target, chunk_bytes: usize) -> Copier {
        Copier {
            src,
            dst,
            chunk_bytes: chunk_bytes.max(1),
            stats: CopyStats::default(),
        }
    }

    /// The manifest `digest` read from the source and verified by digest.
    pub async fn source_manifest(&self, digest: &Digest) -> Result<VerifiedManifest, CopyError> {
        read_manifest(&self.src, digest).await
    }

    /// The manifest `digest` read back from the destination, verified by digest.
    pub async fn destination_manifest(&self, digest: &Digest) -> Result<VerifiedManifest, CopyError> {
        read_manifest(&self.dst, digest).await
    }

    /// Copy `m` and everything it references (children first), then put
    /// `m` by digest unless the destination has it.
    pub async fn tree(&mut self, m: &VerifiedManifest) -> Result<(), CopyError> {
        self.tree_at(m, 0).await
    }

    async fn tree_at(&mut self, m: &VerifiedManifest, depth: usize) -> Result<(), CopyError> {
        if depth > MAX_DEPTH {
            return Err(CopyError::TooDeep);
        }
        if self.manifest_present(m.digest()).await? {
            self.stats.manifests_present += 1;
            return Ok(());
        }
        if m.media_type().is_index() {
            for child in &m.info().references {
                let child = self.source_manifest(&child.digest).await?;
                Box::pin(self.tree_at(&child, depth + 1)).await?;
            }
        } else {
            for blob in &m.info().references {
                self.blob(blob).await?;
            }
        }
        self.put(m, &Reference::Digest(m.digest().clone())).await
    }

    /// `PUT` the exact bytes and media type of `m` under `reference`.
    pub async fn put(&mut self, m: &VerifiedManifest, reference: &Reference) -> Result<(), CopyError> {
        self.dst
            .registry
            .put_manifest(
                &self.dst.repo,
                reference,
                m.digest(),
                m.media_type().as_str(),
                m.bytes().clone(),
            )
            .await?;
        self.stats.manifests_put += 1;
        Ok(())
    }

    async fn manifest_present(&self, digest: &Digest) -> Result<bool, CopyError> {
        let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
        let reference = Reference::Digest(digest.clone());
        match self
            .dst
            .registry
            .head_manifest(&self.dst.repo, &reference, &accept)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One blob: present → skip; same registry → mount; else stream.
    async fn blob(&mut self, d: &Descriptor) -> Result<(), CopyError> {
        let dst = &self.dst;
        if dst.registry.has_blob(&dst.repo, &d.digest).await? {
            self.stats.blobs_present += 1;
            return Ok(());
        }
        let upload = if Arc::ptr_eq(&self.src.registry, &dst.registry) {
            match dst.registry.mount_blob(&dst.repo, &d.digest, &self.src.repo).await? {
                Mount::Mounted => {
                    self.stats.blobs_mounted += 1;
                    return Ok(());
                }
                Mount::Upload(upload) => upload,
            }
        } else {
            dst.registry.start_upload(&dst.repo).await?
        };
        self.stream(upload, d).await
    }

    /// Stream the blob from the source into `upload` while hashing it; the
    /// final `PUT` carries the held-back tail only after the hash matched.
    async fn stream(&mut self, mut upload: Upload, d: &Descriptor) -> Result<(), CopyError> {
        let result = self.send_verified(&mut upload, d).await;
        match result {
            Ok(tail) => {
                self.dst.registry.finish_upload(upload, &d.digest, tail).await?;
                self.stats.blobs_uploaded += 1;
                self.stats.bytes_uploaded += d.size;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = self.dst.registry.abort_upload(upload).await {
                    tracing::warn!(digest = %d.digest, error = %abort, "could not delete an abandoned upload");
                }
                Err(e)
            }
        }
    }

    /// Send all but the last chunk; return the tail once the whole blob
    /// hashed to its descriptor.
    async fn send_verified(&self, upload: &mut Upload, d: &Descriptor) -> Result<Bytes, CopyError> {
        let integrity = |source| CopyError::Integrity {
            digest: d.digest.clone(),
            source,
        };
        let mut body = self.src.registry.get_blob(&self.src.repo, &d.digest).await?;
        let mut verifier = BlobVerifier::new(d.digest.clone(), Some(d.size));
        let mut pending = BytesMut::new();
        while let Some(chunk) = body.next_chunk().await? {
            verifier.update(&chunk).map_err(integrity)?;
            pending.extend_from_slice(&chunk);
            // Keep at least one chunk back: the tail goes with the final PUT.
            while pending.len() > self.chunk_bytes {
                let part = pending.split_to(self.chunk_bytes).freeze();
                self.dst.registry.upload_chunk(upload, part).await?;
            }
        }
        verifier.finish().map_err(integrity)?;
        Ok(pending.freeze())
    }
}

/// A small blob made here (a config, a bundle; its digest computed from the
/// bytes) in one monolithic upload, skipped when the destination has it.
pub async fn push_small_blob(dst: &Target, bytes: Bytes) -> Result<(), upstream::Error> {
    let digest = Digest::of(crate::oci::Algorithm::Sha256, &bytes);
    if dst.registry.has_blob(&dst.repo, &digest).await? {
        return Ok(());
    }
    let upload = dst.registry.start_upload(&dst.repo).await?;
    dst.registry.finish_upload(upload, &digest, bytes).await
}

/// `GET` a manifest by digest and verify its bytes hash to it.
async fn read_manifest(target: &Target, digest: &Digest) -> Result<VerifiedManifest, CopyError> {
    let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
    let reference = Reference::Digest(digest.clone());
    let unverified = target
        .registry
        .get_manifest(&target.repo, &reference, &accept, MAX_MANIFEST_BYTES)
        .await?;
    verify::manifest::check(unverified, digest).map_err(|source| CopyError::Integrity {
        digest: digest.clone(),
        source,
    })
}
