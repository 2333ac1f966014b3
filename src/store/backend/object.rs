//! The object-store backend: S3-compatible storage (`storage.s3`) through
//! `object_store`, or any other `ObjectStore` (tests use `InMemory`).
//!
//! The store's interface is blocking; requests run on a small runtime owned
//! by the backend and the calling (blocking-pool) thread waits for them, so
//! callers need no runtime of their own and none is ever nested.
//!
//! Blobs stream: a download is written to a local temp file (for clients
//! following it) and uploaded in parts as it arrives; the multipart upload
//! is completed only with the verifier's proof and aborted otherwise, so
//! nothing unverified ever appears under a digest. Each upload in progress
//! is journaled beside its temp file (`<hex>.<n>.upload`: key and upload
//! id), so that the next start of a replica killed mid-download aborts
//! what it left ([`ObjectBackend::abort_abandoned_uploads`]); only an
//! upload whose creation the kill interrupted escapes the journal (the
//! bucket's lifecycle rule covers it). Reads are ranged GETs, one
//! streaming GET per sequential reader.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt as _, PutOptions, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Backend, BackendError, BlobReader, BlobSink, Key, Listed, Object, PutMode, ReadAt, Version, Written};
use crate::oci::Digest;
use crate::store::{StoreError, io_err};
use crate::verify::DigestMatched;

/// Size of each uploaded part (S3's minimum is 5 MiB, except the last).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploading at once per blob.
const PARTS_IN_FLIGHT: usize = 2;

/// The runtime the backend's requests run on. Shut down in the background
/// on drop, so dropping the store inside an async task does not panic.
#[derive(Debug)]
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn new() -> Result<Runtime, StoreError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-io")
            .enable_all()
            .build()
            .map(|rt| Runtime(Some(rt)))
            .map_err(|e| io_err("start the object store runtime", std::path::Path::new("-"))(e))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Run `f` on the backend's runtime and wait for it from this thread.
/// Works from any thread: the future is spawned, never blocked on in place.
fn exec<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let handle = rt.handle().ok_or(BackendError::RuntimeGone)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| BackendError::RuntimeGone.into())
}

fn object_err<'a>(action: &'static str, key: &'a Key) -> impl FnOnce(object_store::Error) -> StoreError + 'a {
    move |source| {
        BackendError::Object {
            action,
            key: key.to_string(),
            source,
        }
        .into()
    }
}

/// What the backend needs of an object store: objects, and multipart
/// uploads by id (an upload a killed replica left is aborted by id at its
/// next start). S3 and `InMemory` are both.
pub trait Bucket: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> Bucket for T {}

/// A multipart upload in progress, journaled in the temp directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Journaled {
    key: String,
    id: MultipartId,
}

/// Objects under a prefix of an `ObjectStore`.
#[derive(Debug)]
pub struct ObjectBackend {
    store: Arc<dyn Bucket>,
    prefix: String,
    /// Local temp files of downloads in progress (followed by clients).
    tmp: PathBuf,
    rt: Arc<Runtime>,
    what: String,
}

/// `storage.s3`, as the backend needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: String,
    pub allow_http: bool,
}

impl ObjectBackend {
    /// S3 (or compatible) with credentials from the standard AWS
    /// environment variables and files; conditional writes by e-tag.
    pub fn s3(options: &S3Options, tmp: PathBuf) -> Result<ObjectBackend, StoreError> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_allow_http(options.allow_http)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        let store = builder.build().map_err(BackendError::Config)?;
        let what = format!(
            "s3://{}/{}{}",
            options.bucket,
            options.prefix,
            options
                .endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        );
        Self::new(Arc::new(store), &options.prefix, tmp, what)
    }

    /// Any object store under `prefix` (tests: `InMemory`).
    pub fn new(store: Arc<dyn Bucket>, prefix: &str, tmp: PathBuf, what: String) -> Result<ObjectBackend, StoreError> {
        let prefix = prefix.trim_matches('/');
        Ok(ObjectBackend {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            tmp,
            rt: Arc::new(Runtime::new()?),
            what,
        })
    }

    fn path(&self, key: &Key) -> ObjectPath {
        ObjectPath::from(format!("{}{}", self.prefix, key.as_str()))
    }

    /// The key of a listed location (inside the prefix).
    fn key_of(&self, location: &ObjectPath) -> Option<Key> {
        let rest = location.as_ref().strip_prefix(&self.prefix)?;
        Key::new(rest.split('/'))
    }

    /// Abort the multipart uploads journaled in the temp directory (a run
    /// killed mid-download left them) and remove their entries; returns how
    /// many. Only at a server's start, before the temp directory is
    /// emptied: the `store` commands run beside a live server. An abort
    /// that fails (already gone, or refused) is logged and not retried: the
    /// bucket's lifecycle rule is the backstop.
    pub fn abort_abandoned_uploads(&self) -> Result<usize, StoreError> {
        let entries = match std::fs::read_dir(&self.tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("list", &self.tmp)(e)),
        };
        let mut aborted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "upload") {
                continue;
            }
            let journaled = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Journaled>(&b).ok());
            if let Some(j) = journaled
                && let Some(key) = Key::new(j.key.split('/'))
            {
                let (store, location, id) = (self.store.clone(), self.path(&key), j.id.clone());
                match self.run(async move { store.abort_multipart(&location, &id).await })? {
                    Ok(()) => aborted += 1,
                    Err(e) => tracing::info!(error = %e, %key, upload = %j.id, "cannot abort an abandoned upload"),
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(aborted)
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        exec(&self.rt, f)
    }
}

impl Backend for ObjectBackend {
    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let (store, path) = (self.store.clone(), self.path(key));
        let got = self.run(async move {
            let result = store.get(&path).await?;
            let version = result.meta.e_tag.clone().unwrap_or_default();
            Ok::<_, object_store::Error>((result.bytes().await?, version))
        })?;
        match got {
            Ok((bytes, etag)) => Ok(Some(Object {
                bytes,
                version: Version(etag),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_err("get", key)(e)),
        }
    }

    fn put(&self, key: &Key, bytes: Bytes, mode: PutMode, _durable: bool) -> Result<Written, StoreError> {
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
            PutMode::Update(Version(e_tag)) => object_store::PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let (store, path) = (self.store.clone(), self.path(key));
        let put = self.run(async move {
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            store.put_opts(&path, PutPayload::from(bytes), opts).await
        })?;
        match put {
            Ok(_) => Ok(Written::Done),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Written::Conflict)
            }
            Err(e) => Err(object_err("put", key)(e)),
        }
    }

    fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let (store, path) = (self.store.clone(), self.path(key));
        match self.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_err("delete", key)(e)),
        }
    }

    fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let Some(first) = keys.first() else { return Ok(()) };
        let store = self.store.clone();
        let paths: Vec<object_store::Result<ObjectPath>> = keys.iter().map(|k| Ok(self.path(k))).collect();
        let deleted = self.run(async move {
            let mut results = store.delete_stream(futures_util::stream::iter(paths).boxed());
            while let Some(r) = results.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        deleted.map_err(object_err("delete (in bulk, from)", first))
    }

    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let (store, path) = (self.store.clone(), self.path(key));
        match self.run(async move { store.head(&path).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_err("head", key)(e)),
        }
    }

    fn list(&self, prefix: &Key) -> Result<Vec<Listed>, StoreError> {
        let (store, path) = (self.store.clone(), self.path(prefix));
        let metas = self.run(async move {
            let mut out = Vec::new();
            let mut listing = store.list(Some(&path));
            while let Some(meta) = listing.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        })?;
        Ok(metas
            .map_err(object_err("list", prefix))?
            .into_iter()
            .filter_map(|m| {
                Some(Listed {
                    key: self.key_of(&m.location)?,
                    size: m.size,
                    modified: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
                })
            })
            .collect())
    }

    fn open(&self, key: &Key) -> Result<Option<(BlobReader, u64)>, StoreError> {
        let Some(size) = self.size(key)? else {
            return Ok(None);
        };
        let reader = RangedReader {
            store: self.store.clone(),
            path: self.path(key),
            key: key.to_string(),
            size,
            rt: self.rt.clone(),
            current: Mutex::new(None),
        };
        Ok(Some((BlobReader::new(Arc::new(reader)), size)))
    }

    fn blob_sink(&self, key: &Key, digest: &Digest) -> Result<Box<dyn BlobSink>, StoreError> {
        let (file, tmp_path) = super::create_part_file(&self.tmp, digest)?;
        let (store, path) = (self.store.clone(), self.path(key));
        let id = self
            .run(async move { store.create_multipart(&path).await })?
            .map_err(object_err("start a multipart upload of", key))?;
        let entry = serde_json::to_vec(&Journaled {
            key: key.to_string(),
            id: id.clone(),
        });
        // From here on, dropping the sink aborts the upload (and removes
        // the journal entry); a kill leaves the entry for the next start.
        let sink = MultipartSink {
            file: Some(file),
            journal: tmp_path.with_extension("upload"),
            tmp_path,
            key: key.clone(),
            id: Some(id),
            buffer: BytesMut::new(),
            next_part: 0,
            parts: VecDeque::new(),
            done: Vec::new(),
            rt: self.rt.clone(),
            store: self.store.clone(),
            path: self.path(key),
        };
        let entry = entry.map_err(|source| BackendError::Encode {
            key: key.to_string(),
            source,
        })?;
        std::fs::write(&sink.journal, entry).map_err(io_err("write", &sink.journal))?;
        Ok(Box::new(sink))
    }

    fn quarantine(&self, key: &Key, name: &str) -> Result<String, StoreError> {
        let to_key = Key::new(["quarantine", name])
            .ok_or_else(|| StoreError::from(BackendError::InvalidName(name.to_owned())))?;
        let (store, from, to) = (self.store.clone(), self.path(key), self.path(&to_key));
        let moved = self.run(async move {
            store.copy(&from, &to).await?;
            store.delete(&from).await
        })?;
        moved.map_err(object_err("quarantine", key))?;
        Ok(format!("{}{}", self.what.split(' ').next().unwrap_or(""), to_key))
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let key = Key::fixed("tmp/ready");
        self.put(&key, Bytes::from_static(b"ready"), PutMode::Overwrite, false)
            .map(|_| ())
    }

    fn available_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// Sequential reads over one streaming ranged GET; a read elsewhere (a
/// `Range` request, a jump) starts a new GET at its offset.
#[derive(Debug)]
struct RangedReader {
    store: Arc<dyn Bucket>,
    path: ObjectPath,
    key: String,
    size: u64,
    rt: Arc<Runtime>,
    current: Mutex<Option<Open>>,
}

/// An open GET: the next offset it yields and bytes received past it.
struct Open {
    pos: u64,
    pending: Bytes,
    body: BoxStream<'static, object_store::Result<Bytes>>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl RangedReader {
    fn start(&self, pos: u64) -> std::io::Result<Open> {
        let (store, path, size) = (self.store.clone(), self.path.clone(), self.size);
        let got = exec(&self.rt, async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(pos..size)),
                ..GetOptions::default()
            };
            store.get_opts(&path, opts).await.map(|r| r.into_stream())
        })
        .map_err(std::io::Error::other)?;
        let body = got.map_err(|e| std::io::Error::other(format!("GET {}: {e}", self.key)))?;
        Ok(Open {
            pos,
            pending: Bytes::new(),
            body,
        })
    }
}

impl ReadAt for RangedReader {
    fn read_at(&self, pos: u64, mut buf: BytesMut) -> std::io::Result<Bytes> {
        let want = buf.len();
        if pos.saturating_add(want as u64) > self.size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut slot = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut open = match slot.take() {
            Some(open) if open.pos == pos => open,
            _ if want == 0 => return Ok(Bytes::new()),
            _ => self.start(pos)?,
        };
        // A whole chunk of what the GET already received: hand it out as is.
        if open.pending.len() >= want {
            let out = open.pending.split_to(want);
            open.pos += want as u64;
            *slot = Some(open);
            return Ok(out);
        }
        buf.clear();
        buf.extend_from_slice(&open.pending);
        open.pending = Bytes::new();
        // Fill the buffer on the runtime in one go: one hand-off per read,
        // not one per body frame.
        let key = self.key.clone();
        let (open_back, buf_back, result) = exec(&self.rt, async move {
            let (mut open, mut buf) = (open, buf);
            let result = loop {
                if buf.len() >= want {
                    break Ok(());
                }
                match open.body.next().await {
                    Some(Ok(mut chunk)) => {
                        let take = (want - buf.len()).min(chunk.len());
                        buf.extend_from_slice(&chunk.split_to(take));
                        open.pending = chunk;
                    }
                    Some(Err(e)) => break Err(std::io::Error::other(format!("GET {key}: {e}"))),
                    // The object is shorter than it was (replaced or evicted).
                    None => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            };
            (open, buf, result)
        })
        .map_err(std::io::Error::other)?;
        result?;
        let (mut open, buf) = (open_back, buf_back);
        open.pos = pos + buf.len() as u64;
        *slot = Some(open);
        Ok(buf.freeze())
    }
}

/// A blob streaming to a multipart upload (and to a local temp file that
/// clients following the download read). Completed only by `commit`;
/// dropped, it aborts the upload and removes the temp file and the journal
/// entry.
struct MultipartSink {
    file: Option<File>,
    tmp_path: PathBuf,
    /// The journal entry naming the upload (see the module docs).
    journal: PathBuf,
    key: Key,
    /// The upload, until it is completed.
    id: Option<MultipartId>,
    buffer: BytesMut,
    next_part: usize,
    /// Parts uploading, oldest first.
    parts: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    /// Parts uploaded, in order.
    done: Vec<PartId>,
    rt: Arc<Runtime>,
    store: Arc<dyn Bucket>,
    path: ObjectPath,
}

impl std::fmt::Debug for MultipartSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartSink")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl MultipartSink {
    /// Start uploading the buffered bytes as the next part, keeping at most
    /// `PARTS_IN_FLIGHT` parts in flight (this thread waits for the oldest).
    fn send_part(&mut self) -> Result<(), StoreError> {
        let Some(id) = self.id.clone() else {
            return Ok(());
        };
        let (store, path, idx) = (self.store.clone(), self.path.clone(), self.next_part);
        let payload = PutPayload::from(self.buffer.split().freeze());
        let handle = self.rt.handle().ok_or(BackendError::RuntimeGone)?;
        self.parts
            .push_back(handle.spawn(async move { store.put_part(&path, &id, idx, payload).await }));
        self.next_part += 1;
        while self.parts.len() > PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Wait for the oldest part in flight; `false` if none was.
    fn wait_oldest(&mut self) -> Result<bool, StoreError> {
        let Some(part) = self.parts.pop_front() else {
            return Ok(false);
        };
        match exec(&self.rt, part)? {
            Ok(Ok(id)) => {
                self.done.push(id);
                Ok(true)
            }
            Ok(Err(e)) => Err(object_err("upload a part of", &self.key)(e)),
            Err(source) => Err(BackendError::Task {
                action: "upload a part of",
                key: self.key.to_string(),
                source,
            }
            .into()),
        }
    }
}

impl BlobSink for MultipartSink {
    fn reader(&self) -> Result<File, StoreError> {
        File::open(&self.tmp_path).map_err(io_err("open", &self.tmp_path))
    }

    fn reserve(&mut self, _len: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        if let Some(f) = &mut self.file {
            f.write_all(chunk).map_err(io_err("write", &self.tmp_path))?;
        }
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() >= PART_BYTES {
            self.send_part()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, _proof: &DigestMatched) -> Result<bool, StoreError> {
        // An empty blob is still one (empty) part: S3 needs at least one.
        if !self.buffer.is_empty() || self.next_part == 0 {
            self.send_part()?;
        }
        while self.wait_oldest()? {}
        let (store, path) = (self.store.clone(), self.path.clone());
        let existed = exec(&self.rt, async move { store.head(&path).await.is_ok() })?;
        let Some(id) = self.id.clone() else {
            return Ok(false);
        };
        let (store, path, parts) = (self.store.clone(), self.path.clone(), std::mem::take(&mut self.done));
        let completed = exec(
            &self.rt,
            async move { store.complete_multipart(&path, &id, parts).await },
        )?;
        // Not completed: the drop aborts it.
        completed.map_err(object_err("complete the multipart upload of", &self.key))?;
        self.id = None;
        self.file = None;
        let _ = std::fs::remove_file(&self.tmp_path);
        let _ = std::fs::remove_file(&self.journal);
        Ok(!existed)
    }
}

impl Drop for MultipartSink {
    fn drop(&mut self) {
        for part in self.parts.drain(..) {
            part.abort();
        }
        // Not completed: abort the upload in the background (a drop may run
        // on a runtime thread, where waiting is not allowed), then drop its
        // journal entry. A crash leaves the entry to the next start.
        match (self.id.take(), self.rt.handle()) {
            (Some(id), Some(handle)) => {
                let (store, path, journal) = (self.store.clone(), self.path.clone(), self.journal.clone());
                handle.spawn(async move {
                    if store.abort_multipart(&path, &id).await.is_ok() {
                        let _ = std::fs::remove_file(&journal);
                    }
                });
            }
            (None, _) => {
                let _ = std::fs::remove_file(&self.journal);
            }
            (Some(_), None) => {}
        }
        let _ = std::fs::remove_file(&self.tmp_path);
    }
}
