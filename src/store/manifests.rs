//! Verified manifests, by digest. An object holds the media type on its
//! first line and the exact manifest bytes after it. Reads return an
//! `UnverifiedManifest`: the caller re-verifies (cheap for ≤ 4 MiB), so
//! storage corruption can never be served.

use std::sync::Arc;

use bytes::Bytes;

use super::StoreError;
use super::backend::{Backend, Key, PutMode};
use crate::oci::Digest;
use crate::verify::{UnverifiedManifest, VerifiedManifest};

/// Where manifests live: `manifests/<alg>/<hh>/<hex>`.
pub(crate) const AREA: &str = "manifests";

#[derive(Debug)]
pub struct ManifestStore {
    backend: Arc<dyn Backend>,
}

impl ManifestStore {
    pub(super) fn new(backend: Arc<dyn Backend>) -> ManifestStore {
        ManifestStore { backend }
    }

    /// Content-addressed: a second writer of the same digest writes the
    /// same bytes, so an existing object is left as it is (`Create`).
    pub fn put(&self, m: &VerifiedManifest) -> Result<(), StoreError> {
        let key = Key::content(AREA, m.digest());
        if self.backend.size(&key)?.is_some() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(m.bytes().len() + 64);
        buf.extend_from_slice(m.media_type().as_str().as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(m.bytes());
        self.backend.put(&key, Bytes::from(buf), PutMode::Create, true)?;
        Ok(())
    }

    pub fn get(&self, digest: &Digest) -> Result<Option<UnverifiedManifest>, StoreError> {
        let Some(object) = self.backend.get(&Key::content(AREA, digest))? else {
            return Ok(None);
        };
        let raw = object.bytes;
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

    /// Whether the stored bytes (after the media type line) hash to
    /// `digest` (`store verify`); an absent object matches.
    pub(super) fn matches(&self, digest: &Digest) -> Result<bool, StoreError> {
        let Some(object) = self.backend.get(&Key::content(AREA, digest))? else {
            return Ok(true);
        };
        let raw = object.bytes;
        Ok(raw
            .iter()
            .position(|b| *b == b'\n')
            .is_some_and(|nl| &Digest::of(digest.algorithm(), &raw[nl + 1..]) == digest))
    }
}
