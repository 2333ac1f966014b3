//! Content-addressed blob files. A file appears under a digest only through
//! [`BlobWriter::commit`], which demands the verifier's [`DigestMatched`]
//! proof; a writer dropped without commit deletes its temp file.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;

use super::{StoreError, content_path, io_err, publish};
use crate::oci::Digest;
use crate::verify::DigestMatched;

#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// The directory content is stored under.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    pub(super) fn new(root: PathBuf, tmp: PathBuf) -> BlobStore {
        BlobStore { root, tmp }
    }

    /// Open a committed blob: the file and its length.
    pub fn open(&self, digest: &Digest) -> Result<Option<(File, u64)>, StoreError> {
        let path = content_path(&self.root, digest);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io_err("stat", &path))?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Start writing `digest` into a temp file.
    pub fn writer(&self, digest: &Digest) -> Result<BlobWriter, StoreError> {
        let tmp_path = self.tmp.join(format!("{}.{}.part", digest.hex(), fastrand::u64(..)));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(io_err("create", &tmp_path))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp_path,
            final_path: content_path(&self.root, digest),
            digest: digest.clone(),
        })
    }
}

/// A blob being written. Commit with a proof, or drop to discard.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    digest: Digest,
}

impl BlobWriter {
    /// A second handle on the temp file, for readers that follow the write.
    pub fn reader(&self) -> Result<File, StoreError> {
        File::open(&self.tmp_path).map_err(io_err("open", &self.tmp_path))
    }

    /// Allocate the blob's announced length up front: one extent instead
    /// of block-by-block allocation while streaming, and a full disk shows
    /// up before the download rather than in the middle of it. The file's
    /// size is left alone (`KEEP_SIZE`), so a partial file never looks whole.
    pub fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        let Some(f) = &self.file else { return Ok(()) };
        match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
            // Filesystems without fallocate allocate as the bytes arrive.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            r => r.map_err(|e| io_err("allocate", &self.tmp_path)(e.into())),
        }
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        match &mut self.file {
            Some(f) => f.write_all(chunk).map_err(io_err("write", &self.tmp_path)),
            None => Ok(()),
        }
    }

    /// fsync and rename into the content-addressed path. The proof must be
    /// for this writer's digest.
    /// Returns the bytes the store grew by: the blob's length, or 0 when an
    /// identical blob was already in place (another replica or a race).
    pub fn commit(mut self, proof: DigestMatched) -> Result<u64, StoreError> {
        if proof.digest() != &self.digest {
            return Err(StoreError::WrongProof {
                proof: proof.digest().clone(),
                writer: self.digest.clone(),
            });
        }
        let synced = match self.file.take() {
            Some(f) => f.sync_all().map_err(io_err("fsync", &self.tmp_path)),
            None => Ok(()),
        };
        let added = if self.final_path.exists() { 0 } else { proof.length() };
        let published = synced.and_then(|()| publish(&self.tmp_path, &self.final_path));
        if published.is_err() {
            // `Drop` no longer sees the file: clean up here.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
        published.map(|()| added)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Not committed (error, mismatch, panic): the partial file must never
        // appear under the digest. After a commit the rename already moved it.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use crate::verify::blob::proof_for;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        let s = BlobStore::new(dir.path().join("blobs"), dir.path().join("tmp"));
        (dir, s)
    }

    #[test]
    fn commit_with_proof_then_open() {
        let (_dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(b"data").expect("write");
        w.commit(proof_for(b"data")).expect("commit");
        let (_, len) = s.open(&d).expect("io").expect("present");
        assert_eq!(len, 4);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (dir, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(b"dat").expect("write");
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
        w.write(b"data").expect("write");
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
        let s = BlobStore::new(dir.path().join("blobs"), dir.path().join("tmp"));
        let d = Digest::of(Algorithm::Sha256, b"data");
        let mut w = s.writer(&d).expect("writer");
        w.write(b"data").expect("write");
        assert!(w.commit(proof_for(b"data")).is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
    }
}
