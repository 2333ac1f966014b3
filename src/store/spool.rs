//! A spool: a blob being downloaded into a temp file while any number of
//! clients read it. Readers follow the writer through the file (memory stays
//! flat whatever the blob size) and never receive the final byte of their
//! range until the whole blob has been verified, so no response can complete
//! with unverified content.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use tokio::sync::{mpsc, watch};

use super::backend::BlobReader;
use crate::verify::DigestMatched;

/// Bytes read from the file per chunk sent to a client.
const READ_CHUNK: u64 = 256 * 1024;
/// Chunks buffered per client between the file reader and the socket.
const CLIENT_BUFFER_CHUNKS: usize = 4;
/// Bytes of the most recently written chunks kept in memory, so that
/// readers keeping up with the download get them without a file read.
const RECENT_BYTES: usize = 16 * 1024 * 1024;

/// Where a download stands. `E` is the failure the orchestrator reports.
#[derive(Clone, Debug)]
pub enum SpoolState<E> {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `[0, received)` have arrived (the latest of them are in the
    /// in-memory window) and `[0, written)` are in `file`; none verified yet.
    Streaming {
        file: BlobReader,
        total: Option<u64>,
        received: u64,
        written: u64,
    },
    /// All `total` bytes are in `file` and verified.
    Complete { file: BlobReader, total: u64 },
    /// The download failed; nothing was stored.
    Failed(E),
    /// The downloader vanished without a verdict (task cancelled).
    Abandoned,
}

/// The shared state of one download.
#[derive(Debug)]
pub struct Spool<E> {
    tx: watch::Sender<SpoolState<E>>,
    /// The latest written chunks, `(offset, bytes)`, oldest first. The same
    /// `Bytes` the writer wrote: handing them out copies nothing.
    recent: Mutex<Recent>,
    /// Readers waiting for the writer (their position has left the
    /// in-memory window but is not yet in the file). Only they need to hear
    /// about file progress; waking every reader per written chunk costs a
    /// context switch each.
    file_waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        while self.bytes > RECENT_BYTES {
            match self.chunks.pop_front() {
                Some((_, c)) => self.bytes -= c.len(),
                None => break,
            }
        }
    }

    /// Up to `len` bytes at `pos`, if still held.
    fn get(&self, pos: u64, len: u64) -> Option<Bytes> {
        let i = self.chunks.partition_point(|(off, c)| off + c.len() as u64 <= pos);
        let (off, chunk) = self.chunks.get(i)?;
        if *off > pos {
            return None;
        }
        let start = (pos - off) as usize;
        let end = (start as u64 + len).min(chunk.len() as u64) as usize;
        Some(chunk.slice(start..end))
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}

impl<E: Clone + Send + Sync + 'static> Spool<E> {
    pub fn new() -> Spool<E> {
        Spool {
            tx: watch::Sender::new(SpoolState::Connecting),
            recent: Mutex::new(Recent::default()),
            file_waiters: AtomicUsize::new(0),
        }
    }

    /// A spool over committed, verified content (a store hit, or a blob
    /// another replica committed while this one waited).
    pub fn completed(file: BlobReader, total: u64) -> Spool<E> {
        Spool {
            tx: watch::Sender::new(SpoolState::Complete { file, total }),
            recent: Mutex::new(Recent::default()),
            file_waiters: AtomicUsize::new(0),
        }
    }

    /// Whether the download ended without a verified blob.
    pub fn has_failed(&self) -> bool {
        matches!(*self.tx.borrow(), SpoolState::Failed(_) | SpoolState::Abandoned)
    }

    pub fn subscribe(&self) -> watch::Receiver<SpoolState<E>> {
        self.tx.subscribe()
    }

    pub fn start(&self, file: File, total: Option<u64>) {
        self.tx.send_replace(SpoolState::Streaming {
            file: BlobReader::file(file),
            total,
            received: 0,
            written: 0,
        });
    }

    /// `chunk` arrived at `offset`: readers may take it from memory at once,
    /// while the writer puts it in the file (so the page-cache write is off
    /// the clients' path).
    pub fn publish(&self, offset: u64, chunk: Bytes) {
        let end = offset + chunk.len() as u64;
        if let Ok(mut r) = self.recent.lock() {
            r.push(offset, chunk);
        }
        self.tx.send_modify(|s| {
            if let SpoolState::Streaming { received, .. } = s {
                *received = end;
            }
        });
    }

    /// `written` bytes are now in the file. Readers are woken only if one
    /// waits for the file (see `wait_for_writer`).
    pub fn advance(&self, now_written: u64) {
        self.tx.send_if_modified(|s| {
            if let SpoolState::Streaming { written, .. } = s {
                *written = now_written;
            }
            // Read after the update, under the state's lock: a reader that
            // registered before looking at the state is seen here.
            self.file_waiters.load(Ordering::SeqCst) > 0
        });
    }

    /// Wait until the state changes after a reader found its position
    /// neither in memory nor in the file. It registers as a file waiter,
    /// then looks again, so an `advance` between its first look and the
    /// registration cannot be missed: either this look sees the new
    /// `written`, or that `advance` sees the waiter and notifies.
    /// `false` if the spool's sender is gone.
    async fn wait_for_writer(&self, rx: &mut watch::Receiver<SpoolState<E>>, pos: u64) -> bool {
        self.file_waiters.fetch_add(1, Ordering::SeqCst);
        let still_waiting = match &*rx.borrow() {
            SpoolState::Streaming { written, .. } => *written <= pos,
            _ => false,
        };
        let changed = if still_waiting { rx.changed().await } else { Ok(()) };
        self.file_waiters.fetch_sub(1, Ordering::SeqCst);
        changed.is_ok()
    }

    /// Bytes at `pos` from the in-memory window, if still held there.
    fn recent(&self, pos: u64, len: u64) -> Option<Bytes> {
        self.recent.lock().ok()?.get(pos, len)
    }

    fn clear_recent(&self) {
        if let Ok(mut r) = self.recent.lock() {
            r.clear();
        }
    }

    /// The content is verified: release the held-back bytes. Only the
    /// verifier's proof opens the gate, and it comes before the store's
    /// commit, so clients do not wait for the fsync of a large blob.
    pub fn complete(&self, proof: &DigestMatched) {
        self.tx.send_modify(|s| {
            if let SpoolState::Streaming { file, .. } = s {
                *s = SpoolState::Complete {
                    file: file.clone(),
                    total: proof.length(),
                };
            }
        });
        self.clear_recent();
    }

    /// Another replica committed the blob while this one waited for it
    /// (its lease): serve the committed object. Committed content passed
    /// the same proof on the replica that wrote it.
    pub fn adopt_committed(&self, file: BlobReader, total: u64) {
        self.tx.send_if_modified(|s| {
            let waiting = matches!(s, SpoolState::Connecting);
            if waiting {
                *s = SpoolState::Complete { file, total };
            }
            waiting
        });
    }

    pub fn fail(&self, error: E) {
        self.tx.send_replace(SpoolState::Failed(error));
        self.clear_recent();
    }

    /// Mark the spool abandoned unless it already reached a verdict.
    pub fn abandon(&self) {
        self.tx.send_if_modified(|s| {
            if matches!(s, SpoolState::Connecting | SpoolState::Streaming { .. }) {
                *s = SpoolState::Abandoned;
                true
            } else {
                false
            }
        });
    }
}

impl<E: Clone + Send + Sync + 'static> Default for Spool<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a client's stream ended early.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError<E: std::fmt::Display> {
    #[error("{0}")]
    Failed(E),
    #[error("download abandoned before verification")]
    Abandoned,
    #[error("reading the spool failed: {0}")]
    Io(String),
}

/// Wait until the download has response headers: `Ok(Some(total))` when
/// streaming with a known length or complete, `Ok(None)` streaming with an
/// unknown length, `Err` on failure.
pub async fn wait_started<E: Clone + std::fmt::Display>(
    rx: &mut watch::Receiver<SpoolState<E>>,
) -> Result<Option<u64>, ReadError<E>> {
    loop {
        match &*rx.borrow_and_update() {
            SpoolState::Connecting => {}
            SpoolState::Streaming { total, .. } => return Ok(*total),
            SpoolState::Complete { total, .. } => return Ok(Some(*total)),
            SpoolState::Failed(e) => return Err(ReadError::Failed(e.clone())),
            SpoolState::Abandoned => return Err(ReadError::Abandoned),
        }
        if rx.changed().await.is_err() {
            return Err(ReadError::Abandoned);
        }
    }
}

/// Wait for the verdict: the verified length, or the failure.
pub async fn wait_complete<E: Clone + std::fmt::Display>(
    rx: &mut watch::Receiver<SpoolState<E>>,
) -> Result<u64, ReadError<E>> {
    loop {
        match &*rx.borrow_and_update() {
            SpoolState::Complete { total, .. } => return Ok(*total),
            SpoolState::Failed(e) => return Err(ReadError::Failed(e.clone())),
            SpoolState::Abandoned => return Err(ReadError::Abandoned),
            SpoolState::Connecting | SpoolState::Streaming { .. } => {}
        }
        if rx.changed().await.is_err() {
            return Err(ReadError::Abandoned);
        }
    }
}

/// A client's bytes of a spool, chunk by chunk.
pub type ChunkStream<E> = BoxStream<'static, Result<Bytes, ReadError<E>>>;

/// Stream bytes `[start, end)` of the spool. Until the blob is verified, the
/// last byte of the range is held back; on failure the stream ends with an
/// error so the client's response is aborted, never completed.
///
/// A verified file is read ahead by a task (file reads block, and overlap
/// with the socket writes that way). A download in progress is followed
/// in the response's own task: its chunks are already in memory, and a
/// task in between would cost a wake-up per chunk.
pub fn read_range<E>(spool: Arc<Spool<E>>, start: u64, end: u64) -> ChunkStream<E>
where
    E: Clone + std::fmt::Display + Send + Sync + 'static,
{
    let rx = spool.subscribe();
    let verified = matches!(*rx.borrow(), SpoolState::Complete { .. });
    let chunks = follow(spool, rx, start, end);
    if verified { read_ahead(chunks) } else { chunks }
}

/// The chunks of `[start, end)` as they become readable; ends after the
/// last one or after the first error.
fn follow<E>(spool: Arc<Spool<E>>, rx: watch::Receiver<SpoolState<E>>, start: u64, end: u64) -> ChunkStream<E>
where
    E: Clone + std::fmt::Display + Send + Sync + 'static,
{
    stream::unfold(
        (spool, rx, start, false),
        move |(spool, mut rx, pos, failed)| async move {
            if pos >= end || failed {
                return None;
            }
            let next = next_chunk(&spool, &mut rx, pos, end).await;
            let (pos, failed) = match &next {
                Ok(chunk) => (pos + chunk.len() as u64, false),
                Err(_) => (pos, true),
            };
            Some((next, (spool, rx, pos, failed)))
        },
    )
    .boxed()
}

/// A task pulling `chunks` (of a verified file) ahead of the client, at most
/// `CLIENT_BUFFER_CHUNKS` of them; it stops when the client goes away.
fn read_ahead<E>(mut chunks: ChunkStream<E>) -> ChunkStream<E>
where
    E: Clone + std::fmt::Display + Send + Sync + 'static,
{
    let (tx, out) = mpsc::channel(CLIENT_BUFFER_CHUNKS);
    tokio::spawn(async move {
        while let Some(next) = chunks.next().await {
            // A send error means the client went away: stop reading.
            if tx.send(next).await.is_err() {
                return;
            }
        }
    });
    stream::unfold(out, |mut out| async move { out.recv().await.map(|next| (next, out)) }).boxed()
}

async fn next_chunk<E: Clone + std::fmt::Display + Send + Sync + 'static>(
    spool: &Spool<E>,
    rx: &mut watch::Receiver<SpoolState<E>>,
    pos: u64,
    end: u64,
) -> Result<Bytes, ReadError<E>> {
    loop {
        let limits = readable_until(rx, pos, end).await?;
        if limits.memory > pos
            && let Some(chunk) = spool.recent(pos, limits.memory - pos)
        {
            return Ok(chunk);
        }
        if limits.file > pos {
            let (file, len) = (limits.handle, (limits.file - pos).min(READ_CHUNK));
            // Allocated here, on a runtime thread, where hyper frees it after
            // the socket write: the allocator's per-thread caches then recycle
            // it, rather than every blocking-pool thread keeping its own.
            let buf = BytesMut::zeroed(len as usize);
            return match tokio::task::spawn_blocking(move || file.read_at(pos, buf)).await {
                Ok(Ok(chunk)) => Ok(chunk),
                Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
                Err(e) => Err(ReadError::Io(e.to_string())),
            };
        }
        // Received but already gone from the window and not yet written:
        // wait for the writer.
        if !spool.wait_for_writer(rx, pos).await {
            return Err(ReadError::Abandoned);
        }
    }
}

/// How far a reader may go: in memory (received) and in the file (written),
/// both short of the final byte until the blob is verified.
struct Limits {
    handle: BlobReader,
    memory: u64,
    file: u64,
}

/// Wait until a reader at `pos` may read something.
async fn readable_until<E: Clone + std::fmt::Display>(
    rx: &mut watch::Receiver<SpoolState<E>>,
    pos: u64,
    end: u64,
) -> Result<Limits, ReadError<E>> {
    loop {
        match &*rx.borrow_and_update() {
            SpoolState::Complete { file, total } => {
                if *total < end {
                    return Err(ReadError::Io(format!("blob has {total} bytes, range ends at {end}")));
                }
                return Ok(Limits {
                    handle: file.clone(),
                    memory: end,
                    file: end,
                });
            }
            SpoolState::Streaming {
                file,
                received,
                written,
                ..
            } => {
                // Hold back the final byte of the range until verified.
                let memory = (*received).min(end - 1);
                if memory > pos {
                    return Ok(Limits {
                        handle: file.clone(),
                        memory,
                        file: (*written).min(end - 1),
                    });
                }
            }
            SpoolState::Connecting => {}
            SpoolState::Failed(e) => return Err(ReadError::Failed(e.clone())),
            SpoolState::Abandoned => return Err(ReadError::Abandoned),
        }
        if rx.changed().await.is_err() {
            return Err(ReadError::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_window_slices_without_copying_and_forgets_old_chunks() {
        let mut r = Recent::default();
        r.push(0, Bytes::from_static(b"hello "));
        r.push(6, Bytes::from_static(b"world"));
        assert_eq!(r.get(0, 3).as_deref(), Some(&b"hel"[..]));
        assert_eq!(r.get(4, 100).as_deref(), Some(&b"o "[..]));
        assert_eq!(r.get(6, 5).as_deref(), Some(&b"world"[..]));
        assert_eq!(r.get(11, 1), None);
        let big = Bytes::from(vec![0u8; RECENT_BYTES]);
        r.push(11, big);
        assert_eq!(r.get(0, 1), None, "old chunks leave the window");
        assert_eq!(r.get(11, 2).map(|b| b.len()), Some(2));
    }

    #[tokio::test]
    async fn readers_get_recent_chunks_and_the_last_byte_only_after_completion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abcdef").expect("write");
        let spool: Arc<Spool<String>> = Arc::new(Spool::new());
        spool.start(File::open(&path).expect("open"), Some(6));
        spool.publish(0, Bytes::from_static(b"abcdef"));
        spool.advance(6);
        let mut rx = read_range(spool.clone(), 0, 6);
        let first = rx.next().await.expect("chunk").expect("ok");
        assert_eq!(&first[..], b"abcde", "final byte held back until verified");
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), rx.next()).await;
        assert!(pending.is_err(), "nothing more before the verdict");
        spool.complete(&crate::verify::blob::proof_for(b"abcdef"));
        let last = rx.next().await.expect("chunk").expect("ok");
        assert_eq!(&last[..], b"f");
    }

    /// A reader whose position left the in-memory window before the writer
    /// reached it waits for the writer, and the writer's `advance` wakes it
    /// (only such readers are notified of file progress).
    #[tokio::test]
    async fn a_reader_behind_the_window_is_woken_by_the_writer() {
        const EARLY: usize = 1 << 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"").expect("create");
        let total = (EARLY + RECENT_BYTES) as u64;
        let spool: Arc<Spool<String>> = Arc::new(Spool::new());
        spool.start(File::open(&path).expect("open"), Some(total));
        spool.publish(0, Bytes::from(vec![b'a'; EARLY]));
        spool.publish(EARLY as u64, Bytes::from(vec![b'b'; RECENT_BYTES]));
        assert!(spool.recent(0, 1).is_none(), "the early bytes left the window");

        let mut rx = read_range(spool.clone(), 0, total);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), rx.next()).await;
        assert!(waiting.is_err(), "nothing to read before the writer gets there");

        std::fs::write(&path, vec![b'a'; EARLY]).expect("write");
        spool.advance(EARLY as u64);
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
            .await
            .expect("woken by advance")
            .expect("chunk")
            .expect("ok");
        assert_eq!(chunk.len() as u64, READ_CHUNK);
        assert!(chunk.iter().all(|&b| b == b'a'), "read from the file");
    }
}
