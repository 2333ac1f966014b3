//! A spool: a blob being downloaded into a temp file while any number of
//! clients read it. Readers follow the writer through the file (memory stays
//! flat whatever the blob size) and never receive the final byte of their
//! range until the whole blob has been verified, so no response can complete
//! with unverified content.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

/// Bytes read from the file per chunk sent to a client.
const READ_CHUNK: u64 = 256 * 1024;
/// Chunks buffered per client between the file reader and the socket.
const CLIENT_BUFFER_CHUNKS: usize = 4;

/// Where a download stands. `E` is the failure the orchestrator reports.
#[derive(Clone, Debug)]
pub enum SpoolState<E> {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `[0, written)` are in `file`, hashed but not yet verified.
    Streaming {
        file: Arc<File>,
        total: Option<u64>,
        written: u64,
    },
    /// All `total` bytes are in `file` and verified.
    Complete { file: Arc<File>, total: u64 },
    /// The download failed; nothing was stored.
    Failed(E),
    /// The downloader vanished without a verdict (task cancelled).
    Abandoned,
}

/// The shared state of one download.
#[derive(Debug)]
pub struct Spool<E> {
    tx: watch::Sender<SpoolState<E>>,
}

impl<E: Clone + Send + Sync + 'static> Spool<E> {
    pub fn new() -> Spool<E> {
        Spool {
            tx: watch::Sender::new(SpoolState::Connecting),
        }
    }

    /// A spool over an already-verified file (a store hit).
    pub fn completed(file: File, total: u64) -> Spool<E> {
        Spool {
            tx: watch::Sender::new(SpoolState::Complete {
                file: Arc::new(file),
                total,
            }),
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
            file: Arc::new(file),
            total,
            written: 0,
        });
    }

    /// `written` bytes are now in the file.
    pub fn advance(&self, now_written: u64) {
        self.tx.send_modify(|s| {
            if let SpoolState::Streaming { written, .. } = s {
                *written = now_written;
            }
        });
    }

    /// The content is verified (and committed).
    pub fn complete(&self) {
        self.tx.send_modify(|s| {
            if let SpoolState::Streaming { file, written, .. } = s {
                *s = SpoolState::Complete {
                    file: file.clone(),
                    total: *written,
                };
            }
        });
    }

    pub fn fail(&self, error: E) {
        self.tx.send_replace(SpoolState::Failed(error));
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

/// Stream bytes `[start, end)` of the spool to a channel. Until the blob is
/// verified, the last byte of the range is held back; on failure the stream
/// ends with an error so the client's response is aborted, never completed.
pub fn read_range<E>(
    mut rx: watch::Receiver<SpoolState<E>>,
    start: u64,
    end: u64,
) -> mpsc::Receiver<Result<Bytes, ReadError<E>>>
where
    E: Clone + std::fmt::Display + Send + Sync + 'static,
{
    let (tx, out) = mpsc::channel(CLIENT_BUFFER_CHUNKS);
    tokio::spawn(async move {
        let mut pos = start;
        while pos < end {
            let next = next_chunk(&mut rx, pos, end).await;
            let failed = next.is_err();
            if let Ok(chunk) = &next {
                pos += chunk.len() as u64;
            }
            // A send error means the client went away: stop reading.
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    out
}

async fn next_chunk<E: Clone + std::fmt::Display + Send + Sync + 'static>(
    rx: &mut watch::Receiver<SpoolState<E>>,
    pos: u64,
    end: u64,
) -> Result<Bytes, ReadError<E>> {
    let (file, limit) = readable_until(rx, pos, end).await?;
    let len = (limit - pos).min(READ_CHUNK);
    match tokio::task::spawn_blocking(move || read_at(&file, pos, len)).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
        Err(e) => Err(ReadError::Io(e.to_string())),
    }
}

/// The file and how far into it a reader at `pos` may go now, waiting for
/// the writer when nothing new may be read.
async fn readable_until<E: Clone + std::fmt::Display>(
    rx: &mut watch::Receiver<SpoolState<E>>,
    pos: u64,
    end: u64,
) -> Result<(Arc<File>, u64), ReadError<E>> {
    loop {
        match &*rx.borrow_and_update() {
            SpoolState::Complete { file, total } => {
                if *total < end {
                    return Err(ReadError::Io(format!("blob has {total} bytes, range ends at {end}")));
                }
                return Ok((file.clone(), end));
            }
            SpoolState::Streaming { file, written, .. } => {
                // Hold back the final byte of the range until verified.
                let limit = (*written).min(end - 1);
                if limit > pos {
                    return Ok((file.clone(), limit));
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

fn read_at(file: &File, pos: u64, len: u64) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buf, pos)?;
    Ok(buf.freeze())
}
