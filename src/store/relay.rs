//! Spool files: where the bytes of a download wait for the clients that
//! follow it. A [`BlobWriter`](super::BlobWriter) spools and commits (the
//! replica that fetches from the upstream); a [`RelayFile`] only spools (a
//! replica streaming a blob from the replica that leads its download, which
//! commits it to the shared bucket: a second upload would be waste).

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;

use bytes::Bytes;

use super::{BlobWriter, StoreError, io_err};
use crate::oci::Digest;

/// What a download writes its bytes through.
pub trait SpoolWriter: Send + 'static {
    /// The bytes written so far, for readers following the download.
    fn reader(&self) -> Result<File, StoreError>;
    /// The announced length, allocated up front.
    fn reserve(&mut self, len: u64) -> Result<(), StoreError>;
    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError>;
}

impl SpoolWriter for BlobWriter {
    fn reader(&self) -> Result<File, StoreError> {
        BlobWriter::reader(self)
    }

    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        BlobWriter::reserve(self, len)
    }

    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        BlobWriter::write(self, chunk)
    }
}

/// A temp file that is never committed; removed when dropped (readers that
/// opened it keep their handle).
#[derive(Debug)]
pub struct RelayFile {
    file: File,
    path: PathBuf,
}

impl RelayFile {
    pub(super) fn create(tmp: &std::path::Path, digest: &Digest) -> Result<RelayFile, StoreError> {
        let (file, path) = super::backend::create_part_file(tmp, digest)?;
        Ok(RelayFile { file, path })
    }
}

impl SpoolWriter for RelayFile {
    fn reader(&self) -> Result<File, StoreError> {
        File::open(&self.path).map_err(io_err("open", &self.path))
    }

    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        super::backend::allocate(&self.file, len).map_err(io_err("allocate", &self.path))
    }

    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        self.file.write_all(chunk).map_err(io_err("write", &self.path))
    }
}

impl Drop for RelayFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
