//! The on-disk cache: content-addressed blobs and manifests, tag
//! observations, and the single-flight spools of in-progress downloads.
//!
//! Layout under the data directory:
//! `blobs/<alg>/<hh>/<hex>`, `manifests/<alg>/<hh>/<hex>`,
//! `tags/<upstream>/<repo>/<tag>`, `grants/<revision>/…` (blob grants),
//! `verdicts/<revision>/…` (allow verdicts), `index/` (access times, pins,
//! counters: `usage`), `quarantine/` (files `store verify` found wrong),
//! `watch/` (watch observations and event queues), `tmp/` (partial
//! downloads; emptied at start).
//! Every path is derived from validated types, never from request text.
//!
//! All functions here do blocking file I/O; async callers run them with
//! `spawn_blocking`.
//!
//! Imports: `oci`, `verify`, `policy` (the `Decision` type, for persisted verdicts).

pub mod blobs;
pub mod flight;
pub mod grants;
pub mod imports;
pub mod manifests;
pub mod spool;
pub mod tags;
pub mod usage;
pub mod verdicts;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use blobs::{BlobStore, BlobWriter};
pub use flight::{Busy, Flights, Join};
pub use grants::{Grant, GrantKey, GrantScope, GrantStore};
pub use manifests::ManifestStore;
pub use spool::{Spool, SpoolState};
pub use tags::TagStore;
pub use usage::{Evicted, InUse, Usage, UsageStats};
pub use watch::{EventQueue, Observation, Observations, WatchStore};

use crate::oci::Digest;

/// A store failure: the disk, not the content.
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
}

pub(crate) fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `<root>/<alg>/<hh>/<hex>`: two-character fan-out keeps directories small.
pub(crate) fn content_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
}

/// Write `bytes` to `path` atomically: temp file in `tmp`, fsync, rename,
/// fsync the directory.
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let tmp = tmp_dir.join(format!("w.{}.{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        publish(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rename a complete temp file into place and make the rename durable.
pub(crate) fn publish(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    std::fs::rename(tmp, path).map_err(io_err("rename into", path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The whole on-disk store.
#[derive(Debug)]
pub struct Store {
    pub blobs: BlobStore,
    pub manifests: ManifestStore,
    pub tags: TagStore,
    pub grants: GrantStore,
    /// Sizes, access order, pins and readers of the blobs.
    pub usage: Arc<Usage>,
    /// `storage.maxBytes`: the cap on blob bytes, if any.
    max_bytes: Option<u64>,
    pub watch: WatchStore,
    /// Partial downloads (emptied at start).
    tmp: PathBuf,
    data_dir: PathBuf,
}

/// How to open the store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Tag observations kept in memory.
    pub tag_memory_entries: u64,
    /// Cap on blob bytes; least recently served blobs are evicted past it.
    pub max_bytes: Option<u64>,
    /// Discard partial downloads left in `tmp/` by an earlier run: the
    /// server does at start; the `store` commands, which may run beside a
    /// live server, must not.
    pub clean_tmp: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            tag_memory_entries: tags::DEFAULT_MEMORY_ENTRIES,
            max_bytes: None,
            clean_tmp: true,
        }
    }
}

/// What `store verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files checked (blobs and manifests).
    pub checked: usize,
    /// Files whose bytes did not hash to their name, moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
}

impl Store {
    /// Open (creating) the store under `data_dir`, discarding partial files
    /// left by an earlier run.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Like [`Store::open`], with a tag memory size and a cap. Walks the
    /// blob directory once (sizes for the cap).
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let tmp = data_dir.join("tmp");
        if options.clean_tmp && tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        let usage = Usage::load(&data_dir.join("blobs"), &data_dir.join("index"), &tmp)?;
        Ok(Store {
            blobs: BlobStore::new(data_dir.join("blobs"), tmp.clone()),
            manifests: ManifestStore::new(data_dir.join("manifests"), tmp.clone()),
            tags: TagStore::new(data_dir.join("tags"), tmp.clone(), options.tag_memory_entries),
            grants: GrantStore::new(data_dir.join("grants"), tmp.clone()),
            usage: Arc::new(usage),
            max_bytes: options.max_bytes,
            watch: WatchStore::new(data_dir.join("watch"), tmp.clone()),
            tmp,
            data_dir: data_dir.to_owned(),
        })
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Open a committed blob for a response, held against eviction until
    /// the returned guard drops; `served` (a GET) moves it to the back of
    /// the eviction order.
    pub fn open_blob(&self, digest: &Digest, served: bool) -> Result<Option<(std::fs::File, u64, InUse)>, StoreError> {
        let held = self.usage.hold(digest);
        let opened = self.blobs.open(digest)?;
        if opened.is_some() && served {
            self.usage.served(digest);
        }
        Ok(opened.map(|(file, len)| (file, len, held)))
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

    /// Re-hash every blob and manifest; a file whose bytes do not hash to
    /// its name is moved to `quarantine/` (never served again, kept for
    /// inspection).
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let quarantine = self.data_dir.join("quarantine");
        let mut report = VerifyReport::default();
        let roots = [
            (self.blobs.root().to_owned(), false),
            (self.data_dir.join("manifests"), true),
        ];
        for (root, is_manifest) in roots {
            for (digest, _, _) in usage::walk_blobs(&root) {
                report.checked += 1;
                let path = content_path(&root, &digest);
                let matches = if is_manifest {
                    manifests::file_matches(&path, &digest)?
                } else {
                    hash_file(&path, &digest)?
                };
                if matches {
                    continue;
                }
                std::fs::create_dir_all(&quarantine).map_err(io_err("create directory", &quarantine))?;
                let to = quarantine.join(format!(
                    "{}-{}.{}",
                    digest.algorithm().as_str(),
                    digest.hex(),
                    fastrand::u32(..)
                ));
                std::fs::rename(&path, &to).map_err(io_err("quarantine", &path))?;
                self.usage.forget(&digest);
                report.quarantined.push(to);
            }
        }
        self.usage.flush()?;
        Ok(report)
    }

    /// Whether a file can be created, written and removed where downloads
    /// are spooled (readiness: a full or read-only disk fails here).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        use std::io::Write as _;
        let probe = self
            .tmp
            .join(format!("ready.{}.{}", std::process::id(), fastrand::u64(..)));
        let result = std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"ready"))
            .map_err(io_err("write a probe file in", &self.tmp));
        let _ = std::fs::remove_file(&probe);
        result
    }

    /// Free bytes (for unprivileged writers) on the store's filesystem.
    pub fn available_bytes(&self) -> Result<u64, StoreError> {
        let stat = rustix::fs::statvfs(&self.tmp).map_err(|e| StoreError::Io {
            action: "statvfs",
            path: self.tmp.clone(),
            source: e.into(),
        })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Bytes of stored blobs (walked once at open, then kept current by
    /// commits and evictions). Manifests, tags and verdicts are small
    /// beside them and not counted.
    pub fn blob_bytes(&self) -> u64 {
        self.usage.total()
    }
}

/// Whether the file at `path` hashes to `digest` (streamed).
fn hash_file(path: &Path, digest: &Digest) -> Result<bool, StoreError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut hasher = crate::oci::DigestHasher::new(digest.algorithm());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(&hasher.finish() == digest)
}
