//! The storage seam: where the store's bytes live. Everything above this
//! module speaks in [`Key`]s (relative, `/`-separated names derived from
//! validated types) and never names a path or a bucket.
//!
//! Two implementations:
//! - [`fs::FsBackend`]: the data directory, with the layout earlier
//!   versions wrote (a key is a path under the data directory), so existing
//!   data directories keep working;
//! - [`object::ObjectBackend`]: any `object_store::ObjectStore`, in practice
//!   S3-compatible storage (`storage.s3`) and, in tests, `InMemory`.
//!
//! The interface is blocking, like the rest of the store (async callers go
//! through `spawn_blocking`); the object backend runs its requests on a small
//! runtime of its own.
//!
//! Records that replicas could race on (tags, grants, leases) are written
//! with [`PutMode::Create`] (S3 `If-None-Match: *`) or [`PutMode::Update`]
//! (`If-Match: <etag>`); content-addressed objects need no condition (two
//! writers of one key write the same verified bytes).

pub mod fs;
pub mod object;

use std::fmt::Debug;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::StoreError;
use crate::oci::Digest;
use crate::verify::DigestMatched;

/// A name in the store: `/`-separated components, none empty, `.` or `..`,
/// none containing a NUL. Built from validated types only (digests, hosts,
/// repository names, tags, hex revisions).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Join components; `None` if any is not a plain name.
    pub fn new<I, S>(components: I) -> Option<Key>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = String::new();
        for c in components {
            let c = c.as_ref();
            if c.is_empty() || c == "." || c == ".." || c.contains(['/', '\0', '\\']) {
                return None;
            }
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(c);
        }
        (!out.is_empty()).then_some(Key(out))
    }

    /// `<area>/<alg>/<hh>/<hex>`: the content-addressed layout (two-character
    /// fan-out keeps directories small on the filesystem).
    pub fn content(area: &str, digest: &Digest) -> Key {
        let hex = digest.hex();
        Key(format!("{area}/{}/{}/{hex}", digest.algorithm().as_str(), &hex[..2]))
    }

    /// The digest a content key names, if `self` is `<area>/<alg>/<hh>/<hex>`.
    pub fn content_digest(&self, area: &str) -> Option<Digest> {
        let rest = self.0.strip_prefix(area)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (alg, fan, hex) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !hex.starts_with(fan) {
            return None;
        }
        format!("{alg}:{hex}").parse().ok()
    }

    /// A key written in the code (`index/usage.json`, `blobs`): checked in
    /// debug builds, trusted otherwise.
    pub(crate) fn fixed(key: &'static str) -> Key {
        debug_assert!(Key::new(key.split('/')).is_some(), "{key}");
        Key(key.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key under this one.
    pub fn child(&self, name: &str) -> Option<Key> {
        Key::new(self.0.split('/').chain(std::iter::once(name)))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An opaque version of a stored object, for [`PutMode::Update`]: the
/// object store's e-tag, or the filesystem backend's content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub(crate) String);

/// How a record is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Only if absent (S3 `If-None-Match: *`).
    Create,
    /// Only if still at this version (S3 `If-Match`).
    Update(Version),
}

/// Whether a conditional write happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The condition failed: someone else wrote (or removed) the object.
    Conflict,
}

/// A stored record and its version.
#[derive(Clone, Debug)]
pub struct Object {
    pub bytes: Bytes,
    pub version: Version,
}

/// One entry of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: Key,
    pub size: u64,
    /// Unix milliseconds.
    pub modified: u64,
}

/// Reads of a committed blob at any offset (range requests, readers that
/// fell behind a download): a local file, or ranged GETs on an object store.
pub trait ReadAt: Send + Sync + Debug {
    /// Exactly `buf.len()` bytes at `pos`, or an error (`UnexpectedEof`
    /// past the end): callers ask only for bytes known to exist.
    fn read_at(&self, pos: u64, buf: BytesMut) -> std::io::Result<Bytes>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, pos: u64, mut buf: BytesMut) -> std::io::Result<Bytes> {
        std::os::unix::fs::FileExt::read_exact_at(self, &mut buf, pos)?;
        Ok(buf.freeze())
    }
}

/// A handle on blob bytes, cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobReader(Arc<dyn ReadAt>);

impl BlobReader {
    pub fn new(inner: Arc<dyn ReadAt>) -> BlobReader {
        BlobReader(inner)
    }

    pub fn file(file: std::fs::File) -> BlobReader {
        BlobReader(Arc::new(file))
    }

    pub fn read_at(&self, pos: u64, buf: BytesMut) -> std::io::Result<Bytes> {
        self.0.read_at(pos, buf)
    }
}

/// A blob being written by a backend. The only way to make it visible is
/// [`BlobSink::commit`], which takes the verifier's proof; dropping a sink
/// discards what it wrote (temp file removed, multipart upload aborted).
pub trait BlobSink: Send + Debug {
    /// The bytes written so far, for readers following the download.
    fn reader(&self) -> Result<std::fs::File, StoreError>;
    /// The announced length (the filesystem allocates it up front).
    fn reserve(&mut self, len: u64) -> Result<(), StoreError>;
    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError>;
    /// Make the blob visible under its digest. Returns whether it was new.
    /// The caller ([`super::BlobWriter::commit`]) has checked that the proof
    /// is for this blob's digest.
    fn commit(self: Box<Self>, proof: &DigestMatched) -> Result<bool, StoreError>;
}

/// A new temp file under `tmp` for the blob `digest` being downloaded: the
/// bytes readers follow while it arrives (both backends spool through one).
pub(super) fn create_part_file(
    tmp: &std::path::Path,
    digest: &Digest,
) -> Result<(std::fs::File, std::path::PathBuf), StoreError> {
    let path = tmp.join(format!("{}.{}.part", digest.hex(), fastrand::u64(..)));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(super::io_err("create", &path))?;
    Ok((file, path))
}

/// Allocate `len` bytes of a spool file up front (one extent; a full disk
/// shows before the download, not in its middle). Filesystems without
/// fallocate allocate as the bytes arrive.
pub(super) fn allocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
        Err(rustix::io::Errno::OPNOTSUPP) | Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Where the store's bytes live.
pub trait Backend: Send + Sync + Debug {
    /// Whether other processes may share this storage (replicas on one
    /// bucket): leases then coordinate downloads across them.
    fn shared(&self) -> bool;
    /// For logs and `store stats`: the directory or the bucket and prefix.
    fn describe(&self) -> String;

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError>;
    /// `durable`: wait until the write survives a crash (fsync on the
    /// filesystem; an object store's PUT always is).
    fn put(&self, key: &Key, bytes: Bytes, mode: PutMode, durable: bool) -> Result<Written, StoreError>;
    /// Remove; absent is not an error.
    fn delete(&self, key: &Key) -> Result<(), StoreError>;
    /// Remove many (an eviction pass): one request per thousand keys on S3.
    fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    /// The size of an object, if present.
    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError>;
    /// Everything under `prefix/`.
    fn list(&self, prefix: &Key) -> Result<Vec<Listed>, StoreError>;

    /// Open an object for reads at any offset, with its size.
    fn open(&self, key: &Key) -> Result<Option<(BlobReader, u64)>, StoreError>;
    /// Start writing the blob `digest` to `key`.
    fn blob_sink(&self, key: &Key, digest: &Digest) -> Result<Box<dyn BlobSink>, StoreError>;
    /// Move an object out of the way (`store verify`); returns where it went.
    fn quarantine(&self, key: &Key, name: &str) -> Result<String, StoreError>;

    /// Whether new content can be written (readiness).
    fn check_writable(&self) -> Result<(), StoreError>;
    /// Free bytes, where the backend has such a limit (the filesystem).
    fn available_bytes(&self) -> Result<Option<u64>, StoreError>;
}

/// A backend failure that is not an I/O error of a local file.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{action} {key}: {source}")]
    Object {
        action: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{action} {key}: {source}")]
    Read {
        action: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} {key}: the task failed: {source}")]
    Task {
        action: &'static str,
        key: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{key}: still changing after {attempts} conditional writes (other replicas writing)")]
    Contended { key: String, attempts: u32 },
    #[error("{0:?} is not a plain key component")]
    InvalidName(String),
    #[error("the object store's runtime stopped")]
    RuntimeGone,
    #[error("storage.s3: {0}")]
    Config(object_store::Error),
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}
