//! Content-addressed blobs. A blob appears under a digest only through
//! [`BlobWriter::commit`], which demands the verifier's [`DigestMatched`]
//! proof; a writer dropped without commit leaves nothing visible (the
//! backend's sink deletes its temp file or aborts its upload).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::StoreError;
use super::backend::{Backend, BlobReader, BlobSink, Key};
use crate::oci::Digest;
use crate::verify::DigestMatched;

/// Where blobs live: `blobs/<alg>/<hh>/<hex>`.
pub(crate) const AREA: &str = "blobs";

#[derive(Debug)]
pub struct BlobStore {
    backend: Arc<dyn Backend>,
}

impl BlobStore {
    pub(super) fn new(backend: Arc<dyn Backend>) -> BlobStore {
        BlobStore { backend }
    }

    pub(crate) fn key(digest: &Digest) -> Key {
        Key::content(AREA, digest)
    }

    /// Open a committed blob: a reader and its length.
    pub fn open(&self, digest: &Digest) -> Result<Option<(BlobReader, u64)>, StoreError> {
        self.backend.open(&Self::key(digest))
    }

    /// Whether a committed blob is present (another replica's commit counts).
    pub fn contains(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.backend.size(&Self::key(digest))?.is_some())
    }

    /// Start writing `digest`.
    pub fn writer(&self, digest: &Digest) -> Result<BlobWriter, StoreError> {
        Ok(BlobWriter {
            sink: self.backend.blob_sink(&Self::key(digest), digest)?,
            digest: digest.clone(),
        })
    }

    /// Whether the stored bytes hash to `digest` (streamed; `store verify`).
    pub(super) fn matches(&self, digest: &Digest) -> Result<bool, StoreError> {
        const CHUNK: usize = 256 * 1024;
        let Some((reader, len)) = self.open(digest)? else {
            return Ok(true);
        };
        let mut hasher = crate::oci::DigestHasher::new(digest.algorithm());
        let mut pos = 0u64;
        while pos < len {
            let want = usize::try_from(len - pos).map_or(CHUNK, |left| left.min(CHUNK));
            let chunk = reader
                .read_at(pos, BytesMut::zeroed(want))
                .map_err(|source| super::BackendError::Read {
                    action: "read",
                    key: Self::key(digest).to_string(),
                    source,
                })?;
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
            pos += chunk.len() as u64;
        }
        Ok(&hasher.finish() == digest)
    }
}

/// A blob being written. Commit with a proof, or drop to discard.
#[derive(Debug)]
pub struct BlobWriter {
    sink: Box<dyn BlobSink>,
    digest: Digest,
}

impl BlobWriter {
    /// A handle on the bytes written so far, for readers that follow the
    /// write.
    pub fn reader(&self) -> Result<std::fs::File, StoreError> {
        self.sink.reader()
    }

    /// Announce the blob's length: the filesystem allocates it up front (one
    /// extent, and a full disk shows before the download, not in its middle).
    pub fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        self.sink.reserve(len)
    }

    pub fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        self.sink.write(chunk)
    }

    /// Make the blob visible under its digest (fsync and rename, or complete
    /// the multipart upload). The proof must be for this writer's digest.
    /// Returns the bytes the store grew by: the blob's length, or 0 when an
    /// identical blob was already in place (another replica or a race).
    pub fn commit(self, proof: DigestMatched) -> Result<u64, StoreError> {
        if proof.digest() != &self.digest {
            return Err(StoreError::WrongProof {
                proof: proof.digest().clone(),
                writer: self.digest.clone(),
            });
        }
        let new = self.sink.commit(&proof)?;
        Ok(if new { proof.length() } else { 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use crate::store::backend::fs::FsBackend;
    use crate::verify::blob::proof_for;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        let backend = FsBackend::new(dir.path().to_owned(), dir.path().join("tmp"));
        (dir, BlobStore::new(Arc::new(backend)))
    }

    #[test]
    fn commit_with_proof_then_open() {
        let (_dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(&Bytes::from_static(b"data")).expect("write");
        w.commit(proof_for(b"data")).expect("commit");
        let (_, len) = s.open(&d).expect("io").expect("present");
        assert_eq!(len, 4);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(&Bytes::from_static(b"dat")).expect("write");
        drop(w);
        assert!(s.open(&d).expect("io").is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
    }

    #[test]
    fn proof_for_another_digest_is_refused() {
        let (_dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let w = s.writer(&d).expect("writer");
        assert!(matches!(
            w.commit(proof_for(b"other")),
            Err(StoreError::WrongProof { .. })
        ));
        assert!(s.open(&d).expect("io").is_none());
    }

    #[test]
    fn reserved_space_does_not_change_the_committed_length() {
        let (_dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.reserve(1 << 20).expect("reserve");
        w.write(&Bytes::from_static(b"data")).expect("write");
        w.commit(proof_for(b"data")).expect("commit");
        let (_, len) = s.open(&d).expect("io").expect("present");
        assert_eq!(len, 4);
    }

    #[test]
    fn failed_commit_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        // The store root is a file: the rename target's directory cannot exist.
        std::fs::write(dir.path().join("blobs"), b"").expect("file");
        let s = BlobStore::new(Arc::new(FsBackend::new(dir.path().to_owned(), dir.path().join("tmp"))));
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(&Bytes::from_static(b"data")).expect("write");
        assert!(w.commit(proof_for(b"data")).is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
    }
}
