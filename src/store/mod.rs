//! The on-disk cache: content-addressed blobs and manifests, tag
//! observations, and the single-flight spools of in-progress downloads.
//!
//! Layout under the data directory:
//! `blobs/<alg>/<hh>/<hex>`, `manifests/<alg>/<hh>/<hex>`,
//! `tags/<upstream>/<repo>/<tag>`, `grants/<revision>/…` (blob grants),
//! `verdicts/<revision>/…` (allow verdicts), `watch/` (watch
//! observations and event queues), `tmp/` (partial downloads; emptied at start).
//! Every path is derived from validated types, never from request text.
//!
//! All functions here do blocking file I/O; async callers run them with
//! `spawn_blocking`.
//!
//! Imports: `oci`, `verify`, `policy` (the `Decision` type, for persisted verdicts).

pub mod blobs;
pub mod flight;
pub mod grants;
pub mod manifests;
pub mod spool;
pub mod tags;
pub mod verdicts;
pub mod watch;

use std::path::{Path, PathBuf};

pub use blobs::{BlobStore, BlobWriter};
pub use flight::{Busy, Flights, Join};
pub use grants::{Grant, GrantKey, GrantScope, GrantStore};
pub use manifests::ManifestStore;
pub use spool::{Spool, SpoolState};
pub use tags::TagStore;
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
    pub watch: WatchStore,
    /// Partial downloads (emptied at start).
    tmp: PathBuf,
}

impl Store {
    /// Open (creating) the store under `data_dir`, discarding partial files
    /// left by an earlier run.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with_tag_memory(data_dir, tags::DEFAULT_MEMORY_ENTRIES)
    }

    /// Like [`Store::open`], keeping at most `tag_entries` tag observations
    /// in memory.
    pub fn open_with_tag_memory(data_dir: &Path, tag_entries: u64) -> Result<Store, StoreError> {
        let tmp = data_dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        Ok(Store {
            blobs: BlobStore::new(data_dir.join("blobs"), tmp.clone()),
            manifests: ManifestStore::new(data_dir.join("manifests"), tmp.clone()),
            tags: TagStore::new(data_dir.join("tags"), tmp.clone(), tag_entries),
            grants: GrantStore::new(data_dir.join("grants"), tmp.clone()),
            watch: WatchStore::new(data_dir.join("watch"), tmp.clone()),
            tmp,
        })
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

    /// Bytes of stored blobs (a walk of their directory: run once at
    /// start, then kept current by commits). Manifests, tags and verdicts
    /// are small beside them and not counted.
    pub fn blob_bytes(&self) -> u64 {
        directory_bytes(self.blobs.root())
    }
}

/// Total size of the regular files under `dir` (unreadable entries count 0).
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => directory_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
