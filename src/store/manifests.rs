//! Verified manifests on disk, by digest. A file holds the media type on its
//! first line and the exact manifest bytes after it. Reads return an
//! `UnverifiedManifest`: the caller re-verifies (cheap for ≤ 4 MiB), so disk
//! corruption can never be served.

use std::path::PathBuf;

use bytes::Bytes;

use super::{StoreError, content_path, io_err, write_atomic};
use crate::oci::Digest;
use crate::verify::{UnverifiedManifest, VerifiedManifest};

#[derive(Debug)]
pub struct ManifestStore {
    root: PathBuf,
    tmp: PathBuf,
}

/// Whether a stored manifest file's bytes (after the media type line) hash
/// to `digest` (`store verify`).
pub(super) fn file_matches(path: &std::path::Path, digest: &Digest) -> Result<bool, StoreError> {
    let raw = std::fs::read(path).map_err(io_err("read", path))?;
    Ok(raw
        .iter()
        .position(|b| *b == b'\n')
        .is_some_and(|nl| &Digest::of(digest.algorithm(), &raw[nl + 1..]) == digest))
}

impl ManifestStore {
    pub(super) fn new(root: PathBuf, tmp: PathBuf) -> ManifestStore {
        ManifestStore { root, tmp }
    }

    pub fn put(&self, m: &VerifiedManifest) -> Result<(), StoreError> {
        let path = content_path(&self.root, m.digest());
        if path.exists() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(m.bytes().len() + 64);
        buf.extend_from_slice(m.media_type().as_str().as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(m.bytes());
        write_atomic(&self.tmp, &path, &buf)
    }

    pub fn get(&self, digest: &Digest) -> Result<Option<UnverifiedManifest>, StoreError> {
        let path = content_path(&self.root, digest);
        let raw = match std::fs::read(&path) {
            Ok(raw) => Bytes::from(raw),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let Some(nl) = raw.iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let content_type = String::from_utf8_lossy(&raw[..nl]).into_owned();
        Ok(Some(UnverifiedManifest {
            bytes: raw.slice(nl + 1..),
            content_type: Some(content_type),
            claimed_digest: None,
        }))
    }
}
