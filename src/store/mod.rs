//! The cache: content-addressed blobs and manifests, tag observations,
//! grants and verdicts, and the single-flight spools of in-progress
//! downloads. Where the bytes live is the backend's business
//! (`backend::fs`: the data directory; `backend::object`: S3-compatible
//! storage); nothing above this module names a path or a bucket.
//!
//! Layout (keys; under the data directory, or under the bucket's prefix):
//! `blobs/<alg>/<hh>/<hex>`, `manifests/<alg>/<hh>/<hex>`,
//! `tags/<upstream>/<repo>/<tag>`, `grants/<revision>/…` (blob grants),
//! `verdicts/<revision>/…` (allow verdicts), `index/` (access times, pins,
//! counters: `usage`), `quarantine/` (files `store verify` found wrong),
//! `leases/<alg>/<hex>` (who downloads a blob, on a shared bucket),
//! `watch/observations/<upstream>/<repo>/_watch.json` (the registry
//! watch's last observations, shared by replicas), `watch/queues/` (the
//! watch's event queues: always local files),
//! `tmp/` (partial downloads, local; emptied at start).
//! Every path is derived from validated types, never from request text.
//!
//! All functions here do blocking file I/O; async callers run them with
//! `spawn_blocking`.
//!
//! Imports: `oci`, `verify`, `policy` (the `Decision` type, for persisted verdicts).

pub mod backend;
pub mod blobs;
pub mod flight;
pub mod grants;
pub mod imports;
pub mod lease;
pub mod manifests;
pub mod relay;
pub mod spool;
pub mod tags;
pub mod usage;
pub mod verdicts;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::object::S3Options;
pub use backend::{Backend, BackendError, BlobReader, Key};
pub use blobs::{BlobStore, BlobWriter};
pub use flight::{Busy, Flights, Join};
pub use grants::{Grant, GrantKey, GrantScope, GrantStore};
pub use lease::{Lease, LeaseState};
pub use manifests::ManifestStore;
pub use relay::{RelayFile, SpoolWriter};
pub use spool::{Spool, SpoolState};
pub use tags::TagStore;
pub use usage::{Evicted, InUse, Usage, UsageStats};
pub use verdicts::VerdictStore;
pub use watch::{EventQueue, Observation, Observations, Recorded, WatchStore};

use crate::oci::Digest;

/// A store failure: the disk or the object store, not the content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proof is for {proof}, not {writer}")]
    WrongProof { proof: Digest, writer: Digest },
    #[error(transparent)]
    Backend(Box<BackendError>),
}

pub(crate) fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Write `bytes` to `path` atomically: temp file in `tmp`, fsync, rename,
/// fsync the directory (the watch's local files).
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    backend::fs::write_via_tmp(tmp_dir, path, bytes, true)
}

/// The whole store.
#[derive(Debug)]
pub struct Store {
    pub blobs: BlobStore,
    pub manifests: ManifestStore,
    pub tags: TagStore,
    pub grants: GrantStore,
    /// Allow verdicts persisted with their key.
    pub verdicts: Arc<VerdictStore>,
    /// What air-gap imports recorded (presence per repository, referrers).
    pub imports: imports::Imports,
    /// Sizes, access order, pins and readers of the blobs.
    pub usage: Arc<Usage>,
    /// `storage.maxBytes`: the cap on blob bytes, if any.
    max_bytes: Option<u64>,
    /// The watch's observations (in the backend) and queues (local files).
    pub watch: WatchStore,
    backend: Arc<dyn Backend>,
    /// Spool files (local even with a bucket).
    tmp: PathBuf,
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Tag observations kept in memory.
    pub tag_memory_entries: u64,
    /// Cap on blob bytes; least recently served blobs are evicted past it.
    pub max_bytes: Option<u64>,
    /// Discard partial downloads left in `tmp/` by an earlier run: the
    /// server does at start; the `store` commands, which may run beside a
    /// live server, must not.
    pub clean_tmp: bool,
    /// `storage.s3`: content and records in a bucket instead of the data
    /// directory (which then holds only temp files and the watch's event queues).
    pub s3: Option<S3Options>,
    /// On a shared store: a blob served within this (by any replica, as the
    /// merged access index says) is not evicted (`usage`).
    pub eviction_grace: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            tag_memory_entries: tags::DEFAULT_MEMORY_ENTRIES,
            max_bytes: None,
            clean_tmp: true,
            s3: None,
            eviction_grace: usage::DEFAULT_SHARED_GRACE,
        }
    }
}

/// A reader that keeps its blob from eviction while it lives.
#[derive(Debug)]
struct HeldReader {
    reader: BlobReader,
    _held: InUse,
}

impl backend::ReadAt for HeldReader {
    fn read_at(&self, pos: u64, buf: bytes::BytesMut) -> std::io::Result<bytes::Bytes> {
        self.reader.read_at(pos, buf)
    }
}

/// What `store verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects checked (blobs and manifests).
    pub checked: usize,
    /// Objects whose bytes did not hash to their name, moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
}

impl Store {
    /// Open (creating) the store under `data_dir`, discarding partial files
    /// left by an earlier run.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Like [`Store::open`], with a tag memory size, a cap and a backend.
    /// Lists the blobs once (sizes for the cap).
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let tmp = data_dir.join("tmp");
        let backend: Arc<dyn Backend> = match &options.s3 {
            None => Arc::new(backend::fs::FsBackend::new(data_dir.to_owned(), tmp.clone())),
            Some(s3) => {
                let object = backend::object::ObjectBackend::s3(s3, tmp.clone())?;
                // Uploads an earlier run was killed in the middle of.
                if options.clean_tmp {
                    match object.abort_abandoned_uploads() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(uploads = n, "aborted the uploads an earlier run left"),
                        Err(e) => tracing::warn!(error = %e, "cannot abort the uploads an earlier run left"),
                    }
                }
                Arc::new(object)
            }
        };
        if options.clean_tmp && tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        Self::with_backend(backend, data_dir, &options)
    }

    /// Open the store over any backend (tests: an in-memory object store).
    /// `data_dir` holds temp files and the watch's event queues.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        data_dir: &Path,
        options: &StoreOptions,
    ) -> Result<Store, StoreError> {
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        let usage = Usage::load(backend.clone())?.with_grace(options.eviction_grace);
        Ok(Store {
            blobs: BlobStore::new(backend.clone()),
            manifests: ManifestStore::new(backend.clone()),
            tags: TagStore::new(backend.clone(), options.tag_memory_entries),
            grants: GrantStore::new(backend.clone()),
            verdicts: Arc::new(VerdictStore::new(backend.clone())),
            imports: imports::Imports::new(backend.clone()),
            usage: Arc::new(usage),
            max_bytes: options.max_bytes,
            watch: WatchStore::new(backend.clone(), data_dir.join("watch"), tmp.clone()),
            backend,
            tmp,
        })
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Where the content lives (a directory, or a bucket and prefix).
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Whether other replicas may share this store (an object store):
    /// downloads are then coordinated through leases.
    pub fn shared(&self) -> bool {
        self.backend.shared()
    }

    /// Open a committed blob for a response, held against eviction until
    /// the returned guard drops; `served` (a GET) moves it to the back of
    /// the eviction order.
    pub fn open_blob(&self, digest: &Digest, served: bool) -> Result<Option<(BlobReader, u64, InUse)>, StoreError> {
        let held = self.usage.hold(digest);
        let opened = self.blobs.open(digest)?;
        if let Some((_, len)) = &opened {
            // Another replica may have committed it: count it here too.
            self.usage.known(digest, *len);
            if served {
                self.usage.served(digest);
            }
        }
        Ok(opened.map(|(reader, len)| (reader, len, held)))
    }

    /// Like [`Store::open_blob`], with the hold inside the reader: the blob
    /// stays safe from eviction for as long as any clone of the reader lives
    /// (a spool adopted from another replica's commit, shared by responses).
    pub fn open_blob_held(&self, digest: &Digest, served: bool) -> Result<Option<(BlobReader, u64)>, StoreError> {
        Ok(self
            .open_blob(digest, served)?
            .map(|(reader, len, held)| (BlobReader::new(Arc::new(HeldReader { reader, _held: held })), len)))
    }

    /// A verified blob of `len` bytes was committed (`added` bytes new on
    /// disk): count it, and evict past the cap.
    pub fn record_commit(&self, digest: &Digest, len: u64, added: u64) -> Result<Evicted, StoreError> {
        self.usage.added(digest, len, added > 0);
        match self.max_bytes {
            Some(cap) => self.usage.evict_over(cap, false),
            None => Ok(Evicted::default()),
        }
    }

    /// Evict down to the cap now (`store gc`).
    pub fn gc(&self) -> Result<Evicted, StoreError> {
        let evicted = match self.max_bytes {
            Some(cap) => self.usage.evict_over(cap, true)?,
            None => Evicted::default(),
        };
        self.usage.flush()?;
        Ok(evicted)
    }

    /// Re-hash every blob and manifest; one whose bytes do not hash to its
    /// name is moved to `quarantine/` (never served again, kept for
    /// inspection).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for area in [blobs::AREA, manifests::AREA] {
            for listed in self.backend.list(&Key::fixed(area))? {
                let Some(digest) = listed.key.content_digest(area) else {
                    continue;
                };
                report.checked += 1;
                let matches = if area == manifests::AREA {
                    self.manifests.matches(&digest)?
                } else {
                    self.blobs.matches(&digest)?
                };
                if matches {
                    continue;
                }
                let name = format!("{}-{}.{}", digest.algorithm().as_str(), digest.hex(), fastrand::u32(..));
                let to = self.backend.quarantine(&listed.key, &name)?;
                self.usage.forget(&digest);
                report.quarantined.push(PathBuf::from(to));
            }
        }
        self.usage.flush()?;
        Ok(report)
    }

    /// Whether new content can be written (readiness: a full or read-only
    /// disk, or an unreachable bucket, fails here).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.backend.check_writable()
    }

    /// Free bytes on the store's filesystem; `None` for an object store.
    pub fn available_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.backend.available_bytes()
    }

    /// Bytes of stored blobs (listed once at open, then kept current by
    /// commits and evictions). Manifests, tags and verdicts are small
    /// beside them and not counted.
    pub fn blob_bytes(&self) -> u64 {
        self.usage.total()
    }

    /// A spool file for `digest` streamed from the replica that leads its
    /// download (and commits it): removed when dropped, never committed.
    pub fn relay_file(&self, digest: &Digest) -> Result<RelayFile, StoreError> {
        RelayFile::create(&self.tmp, digest)
    }

    /// The download lease of `digest` (replicas on one bucket): see [`lease`].
    pub fn lease(&self, digest: &Digest, holder: &str, ttl: std::time::Duration) -> Result<LeaseState, StoreError> {
        lease::acquire(&self.backend, digest, holder, ttl)
    }
}
