//! The local filesystem backend: a key is a path under the data directory
//! (the layout of earlier versions, so existing data directories work).
//! Writes go to `tmp/` first and are renamed into place; conditional writes
//! are serialised by a lock (one process owns a data directory).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::{Backend, BlobReader, BlobSink, Key, Listed, Object, PutMode, Version, Written};
use crate::oci::{Algorithm, Digest};
use crate::store::{StoreError, io_err};
use crate::verify::DigestMatched;

#[derive(Debug)]
pub struct FsBackend {
    root: PathBuf,
    tmp: PathBuf,
    /// Serialises conditional writes (check, then rename).
    conditional: Mutex<()>,
}

impl FsBackend {
    /// `root`: the data directory; `tmp` must be on the same filesystem.
    pub fn new(root: PathBuf, tmp: PathBuf) -> FsBackend {
        FsBackend {
            root,
            tmp,
            conditional: Mutex::new(()),
        }
    }

    pub fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn version_of(bytes: &[u8]) -> Version {
        Version(Digest::of(Algorithm::Sha256, bytes).hex())
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", path)(e)),
        }
    }
}

impl Backend for FsBackend {
    fn shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        Ok(self.read(&self.path(key))?.map(|b| Object {
            version: Self::version_of(&b),
            bytes: Bytes::from(b),
        }))
    }

    fn put(&self, key: &Key, bytes: Bytes, mode: PutMode, durable: bool) -> Result<Written, StoreError> {
        let path = self.path(key);
        if mode == PutMode::Overwrite {
            write_via_tmp(&self.tmp, &path, &bytes, durable)?;
            return Ok(Written::Done);
        }
        let _serial = self
            .conditional
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let allowed = match &mode {
            // Existence is enough: no need to read what is there.
            PutMode::Create => self.size(key)?.is_none(),
            PutMode::Update(v) => self.read(&path)?.is_some_and(|b| &Self::version_of(&b) == v),
            PutMode::Overwrite => true,
        };
        if !allowed {
            return Ok(Written::Conflict);
        }
        write_via_tmp(&self.tmp, &path, &bytes, durable)?;
        Ok(Written::Done)
    }

    fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    fn list(&self, prefix: &Key) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        walk(&self.path(prefix), prefix.as_str(), &mut out);
        Ok(out)
    }

    fn open(&self, key: &Key) -> Result<Option<(BlobReader, u64)>, StoreError> {
        let path = self.path(key);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io_err("stat", &path))?.len();
                Ok(Some((BlobReader::file(f), len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    fn blob_sink(&self, key: &Key, digest: &Digest) -> Result<Box<dyn BlobSink>, StoreError> {
        Ok(Box::new(FsSink::create(&self.tmp, self.path(key), digest)?))
    }

    fn quarantine(&self, key: &Key, name: &str) -> Result<String, StoreError> {
        let dir = self.root.join("quarantine");
        std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let (from, to) = (self.path(key), dir.join(name));
        std::fs::rename(&from, &to).map_err(io_err("quarantine", &from))?;
        Ok(to.display().to_string())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self
            .tmp
            .join(format!("ready.{}.{}", std::process::id(), fastrand::u64(..)));
        let result = File::create(&probe)
            .and_then(|mut f| f.write_all(b"ready"))
            .map_err(io_err("write a probe file in", &self.tmp));
        let _ = std::fs::remove_file(&probe);
        result
    }

    fn available_bytes(&self) -> Result<Option<u64>, StoreError> {
        let stat = rustix::fs::statvfs(&self.tmp).map_err(|e| io_err("statvfs", &self.tmp)(e.into()))?;
        Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
    }
}

/// Every regular file under `dir`, named `prefix/<relative path>`.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<Listed>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let Some(key) = Key::new(prefix.split('/').chain(std::iter::once(name))) else {
            continue;
        };
        if meta.is_dir() {
            walk(&entry.path(), key.as_str(), out);
        } else if meta.is_file() {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out.push(Listed {
                key,
                size: meta.len(),
                modified,
            });
        }
    }
}

/// Write `bytes` to `path` through a temp file and a rename; `durable`
/// adds the fsyncs (file, then directory).
pub(crate) fn write_via_tmp(tmp_dir: &Path, path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    let tmp = tmp_dir.join(format!("w.{}.{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        if durable {
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        publish(&tmp, path, durable)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rename a complete temp file into place (and make the rename durable).
fn publish(tmp: &Path, path: &Path, durable: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    std::fs::rename(tmp, path).map_err(io_err("rename into", path))?;
    if durable && let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A blob being written into `tmp/`, renamed into place on commit.
#[derive(Debug)]
struct FsSink {
    file: Option<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
}

impl FsSink {
    fn create(tmp: &Path, final_path: PathBuf, digest: &Digest) -> Result<FsSink, StoreError> {
        let (file, tmp_path) = super::create_part_file(tmp, digest)?;
        Ok(FsSink {
            file: Some(file),
            tmp_path,
            final_path,
        })
    }
}

impl BlobSink for FsSink {
    fn reader(&self) -> Result<File, StoreError> {
        File::open(&self.tmp_path).map_err(io_err("open", &self.tmp_path))
    }

    /// One extent instead of block-by-block allocation, and a full disk
    /// shows up before the download rather than in its middle. The size is
    /// left alone (`KEEP_SIZE`), so a partial file never looks whole.
    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        let Some(f) = &self.file else { return Ok(()) };
        super::allocate(f, len).map_err(io_err("allocate", &self.tmp_path))
    }

    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        match &mut self.file {
            Some(f) => f.write_all(chunk).map_err(io_err("write", &self.tmp_path)),
            None => Ok(()),
        }
    }

    fn commit(mut self: Box<Self>, _proof: &DigestMatched) -> Result<bool, StoreError> {
        let synced = match self.file.take() {
            Some(f) => f.sync_all().map_err(io_err("fsync", &self.tmp_path)),
            None => Ok(()),
        };
        let new = !self.final_path.exists();
        let published = synced.and_then(|()| publish(&self.tmp_path, &self.final_path, true));
        if published.is_err() {
            // `Drop` no longer sees the file: clean up here.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
        published.map(|()| new)
    }
}

impl Drop for FsSink {
    fn drop(&mut self) {
        // Not committed (error, mismatch, panic): the partial file must never
        // appear under the digest. After a commit the rename already moved it.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
