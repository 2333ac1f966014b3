//! Blobs: served from the store when verified there, otherwise downloaded
//! once (single flight) into a spool that every requesting client follows.
//!
//! ```text
//! client ─► store hit? ──yes──► stream file (Range supported)
//!              │no
//!              ▼
//!           join flight ─leader─► spawn download: upstream GET ─► hash + write threads ─► proof ─► commit
//!              │follower                                   │ advances the spool
//!              ▼                                           ▼
//!           read the spool: bytes as received, last byte only with the proof;
//!           on mismatch/truncation the response is aborted and nothing is stored
//! ```
//! The download continues if clients disconnect, so a large blob is never
//! fetched twice because an impatient client gave up.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::{Error, Proxy, Target, blocking};
use crate::oci::Digest;
use crate::store::spool::{self, ChunkStream, ReadError};
use crate::store::{BlobWriter, Join, Spool};
use crate::telemetry::CacheOutcome;
use crate::upstream::BlobResponse;
use crate::verify::{BlobVerifier, DigestMatched, IntegrityError};

/// Upstream chunks queued for each of the hashing and writing threads.
const QUEUE: usize = 64;

/// A single `Range` (RFC 9110 §14.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parse a `Range` header. `None` for anything but one byte range, which
    /// RFC 9110 lets a server ignore (serve 200).
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
            (false, true) => Some(ByteRange::From(a.parse().ok()?)),
            (false, false) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
            (true, true) => None,
        }
    }

    /// `[start, end)` within a blob of `size` bytes, or `None` if
    /// unsatisfiable (→ 416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(a, b) if a < size => Some((a, b.saturating_add(1).min(size))),
            ByteRange::From(a) if a < size => Some((a, size)),
            ByteRange::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size)),
            _ => None,
        }
    }
}

/// A blob response: its full size, the slice being sent, and the bytes.
#[derive(Debug)]
pub struct BlobServed {
    pub size: u64,
    /// `Some` when answering a `Range` (206).
    pub range: Option<(u64, u64)>,
    /// `None` for HEAD.
    pub body: Option<BlobBody>,
    pub cache: CacheOutcome,
}

impl Proxy {
    /// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobServed, Error> {
        if !self.gate.blob_allowed(target.registry.host(), &target.repo, digest) {
            return Err(Error::Denied {
                message: format!(
                    "blob {digest} is not referenced by an admitted manifest of this repository (pull the manifest first)"
                ),
            });
        }
        let store = self.store.clone();
        let d = digest.clone();
        if let Some((file, size)) = blocking(move || store.blobs.open(&d)).await? {
            let spool = Arc::new(Spool::completed(file, size));
            return serve(&spool, size, range, head, CacheOutcome::Hit);
        }
        if head {
            return self.head_missing_blob(target, digest).await;
        }
        let (spool, cache) = match self.flights.join(digest) {
            Join::Leader(lead) => {
                let spool = lead.spool().clone();
                let downloader = Downloader {
                    store: self.store.clone(),
                    target: target.clone(),
                    digest: digest.clone(),
                };
                tokio::spawn(async move {
                    downloader.run(lead.spool()).await;
                    drop(lead); // ends the flight after the verdict is published
                });
                (spool, CacheOutcome::Miss)
            }
            Join::Follower(spool) => (spool, CacheOutcome::Joined),
        };
        let mut rx = spool.subscribe();
        let size = match spool::wait_started(&mut rx).await.map_err(read_error)? {
            Some(size) => size,
            // No Content-Length upstream: the response needs one, so wait
            // for the verified whole.
            None => spool::wait_complete(&mut rx).await.map_err(read_error)?,
        };
        serve(&spool, size, range, false, cache)
    }

    /// HEAD for a blob not in the store: a running download knows the size;
    /// otherwise ask the upstream (HEAD, no body transferred).
    async fn head_missing_blob(&self, target: &Target, digest: &Digest) -> Result<BlobServed, Error> {
        if let Some(spool) = self.flights.current(digest)
            && let Ok(Some(size)) = spool::wait_started(&mut spool.subscribe()).await
        {
            return serve(&spool, size, None, true, CacheOutcome::Joined);
        }
        let size = target.registry.head_blob(&target.repo, digest).await?.ok_or_else(|| {
            Error::Upstream(crate::upstream::Error::Protocol {
                host: target.registry.host().to_string(),
                message: "blob HEAD without Content-Length".into(),
            })
        })?;
        Ok(BlobServed {
            size,
            range: None,
            body: None,
            cache: CacheOutcome::Miss,
        })
    }
}

fn serve(
    spool: &Arc<Spool<Error>>,
    size: u64,
    range: Option<ByteRange>,
    head: bool,
    cache: CacheOutcome,
) -> Result<BlobServed, Error> {
    let slice = match range {
        None => None,
        Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
    };
    let (start, end) = slice.unwrap_or((0, size));
    let body = (!head).then(|| BlobBody::new(spool::read_range(spool.clone(), start, end), end - start));
    Ok(BlobServed {
        size,
        range: slice,
        body,
        cache,
    })
}

fn read_error(e: ReadError<Error>) -> Error {
    match e {
        ReadError::Failed(e) => e,
        ReadError::Abandoned => Error::Internal("download abandoned".into()),
        ReadError::Io(m) => Error::Internal(m),
    }
}

/// The leader's download of one blob.
struct Downloader {
    store: Arc<crate::store::Store>,
    target: Target,
    digest: Digest,
}

impl Downloader {
    async fn run(self, spool: &Arc<Spool<Error>>) {
        match self.fetch(spool).await {
            Ok((proof, writer)) => {
                // The bytes are proven: clients get their final bytes now.
                // The commit (fsync of the whole blob, then rename) is about
                // keeping them, and takes longer than the last chunk did.
                spool.complete(&proof);
                let len = proof.length();
                match blocking(move || writer.commit(proof)).await {
                    Ok(_) => tracing::debug!(digest = %self.digest, bytes = len, "blob verified and stored"),
                    // Served verified, but not kept: the next request downloads again.
                    Err(e) => tracing::warn!(digest = %self.digest, error = %e, "verified blob could not be stored"),
                }
            }
            Err(e) => {
                if let Error::Integrity { source, .. } = &e {
                    crate::telemetry::metrics::global().integrity_failure();
                    let (expected, actual) = match source {
                        IntegrityError::DigestMismatch { expected, actual } => {
                            (expected.to_string(), actual.to_string())
                        }
                        other => (self.digest.to_string(), other.to_string()),
                    };
                    tracing::warn!(upstream = %self.target.registry.host(), repo = %self.target.repo, %expected, %actual,
                        "blob integrity failure: download aborted, nothing stored");
                } else {
                    tracing::warn!(upstream = %self.target.registry.host(), repo = %self.target.repo, digest = %self.digest,
                        error = %e, "blob download failed");
                }
                spool.fail(e);
            }
        }
    }

    /// Stream the upstream body to two threads, one hashing and one writing
    /// the temp file (each fed the same `Bytes`, no copies). Returns the
    /// hash's proof with the fully written file, ready to commit.
    async fn fetch(&self, spool: &Arc<Spool<Error>>) -> Result<(DigestMatched, BlobWriter), Error> {
        let mut upstream = self.target.registry.get_blob(&self.target.repo, &self.digest).await?;
        let (store, d, length) = (self.store.clone(), self.digest.clone(), upstream.length);
        let writer = blocking(move || {
            let mut writer = store.blobs.writer(&d)?;
            if let Some(len) = length {
                writer.reserve(len)?;
            }
            Ok(writer)
        })
        .await?;
        let reader = writer.reader().map_err(|e| Error::Store(Arc::new(e)))?;
        spool.start(reader, upstream.length);

        let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(QUEUE);
        let (write_tx, write_rx) = mpsc::channel::<Bytes>(QUEUE);
        let verifier = BlobVerifier::new(self.digest.clone(), upstream.length);
        let digest = self.digest.clone();
        let hashing = tokio::task::spawn_blocking(move || hash_all(hash_rx, verifier, &digest));
        let thread_spool = spool.clone();
        let writing = tokio::task::spawn_blocking(move || write_all(write_rx, writer, &thread_spool));
        let network = pump_network(&mut upstream, spool, hash_tx, write_tx).await;
        let proof = joined(hashing.await);
        let written = joined(writing.await);
        match (network, proof, written) {
            // The bytes are what the digest says: a connection error after the
            // last byte changes nothing.
            (_, Ok(proof), Ok(writer)) => Ok((proof, writer)),
            // Integrity is the most precise diagnosis, then the upstream's.
            (_, Err(e @ Error::Integrity { .. }), _) => Err(e),
            (Err(e), _, _) => Err(e),
            (Ok(()), Err(e), _) | (Ok(()), Ok(_), Err(e)) => Err(e),
        }
    }
}

fn joined<T>(r: Result<Result<T, Error>, tokio::task::JoinError>) -> Result<T, Error> {
    r.unwrap_or_else(|e| Err(Error::Internal(format!("blob worker thread failed: {e}"))))
}

/// Publish each upstream chunk to the spool's readers and hand it to both
/// threads. Returns when the body ends, fails, or a thread stops taking
/// chunks (verification or write failed).
async fn pump_network(
    upstream: &mut BlobResponse,
    spool: &Spool<Error>,
    hash_tx: mpsc::Sender<Bytes>,
    write_tx: mpsc::Sender<Bytes>,
) -> Result<(), Error> {
    let mut offset = 0u64;
    loop {
        match upstream.next_chunk().await {
            Ok(Some(chunk)) => {
                // Readers take it from memory now, without waiting for the
                // file write; the last byte of each response still waits
                // for the hash.
                spool.publish(offset, chunk.clone());
                offset += chunk.len() as u64;
                // `Bytes` clones share the buffer.
                if hash_tx.send(chunk.clone()).await.is_err() || write_tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The hashing thread: the only source of the proof that lets the file be
/// committed. Fails at the first byte past the expected length.
fn hash_all(
    mut rx: mpsc::Receiver<Bytes>,
    mut verifier: BlobVerifier,
    digest: &Digest,
) -> Result<DigestMatched, Error> {
    let integrity = |source| Error::Integrity {
        digest: digest.clone(),
        source,
    };
    while let Some(chunk) = rx.blocking_recv() {
        verifier.update(&chunk).map_err(integrity)?;
    }
    verifier.finish().map_err(integrity)
}

/// The writing thread: append to the temp file and publish how much is
/// written (for readers that fell out of the in-memory window). Returns the writer for the commit; an early return
/// drops it, deleting the temp file.
fn write_all(mut rx: mpsc::Receiver<Bytes>, mut writer: BlobWriter, spool: &Spool<Error>) -> Result<BlobWriter, Error> {
    let mut written = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        writer.write(&chunk).map_err(|e| Error::Store(Arc::new(e)))?;
        written += chunk.len() as u64;
        spool.advance(written);
    }
    Ok(writer)
}

/// The response body of a blob: chunks from a spool reader, with an exact
/// size hint. It ends with an error (so hyper aborts the connection) when
/// the download fails verification.
pub struct BlobBody {
    rx: ChunkStream<Error>,
    remaining: u64,
    /// A failure seen by one poll, returned by the next. hyper drops the
    /// connection as soon as a body fails, with what it had buffered (the
    /// response head, the latest bytes) unsent, and the client would see no
    /// response at all; one `Pending` in between lets hyper flush them, so
    /// the response visibly starts and is then aborted.
    deferred: Option<ReadError<Error>>,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody").field("remaining", &self.remaining).finish()
    }
}

impl BlobBody {
    fn new(rx: ChunkStream<Error>, len: u64) -> BlobBody {
        BlobBody {
            rx,
            remaining: len,
            deferred: None,
        }
    }
}

impl Body for BlobBody {
    type Data = Bytes;
    type Error = ReadError<Error>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let failure = match self.rx.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(Some(Err(e))) => e,
            Poll::Ready(None) => ReadError::Abandoned,
            Poll::Pending => return Poll::Pending,
        };
        self.deferred = Some(failure);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// True only after the final (verified) byte has been handed out.
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(ByteRange::parse("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(ByteRange::parse("bytes=0-1,3-4"), None);
        assert_eq!(ByteRange::parse("bytes=9-0"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::FromTo(0, 99).resolve(10), Some((0, 10)));
        assert_eq!(ByteRange::From(10).resolve(10), None);
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
        assert_eq!(ByteRange::FromTo(3, 4).resolve(10), Some((3, 5)));
    }

    #[derive(Default)]
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for CountWakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// hyper drops its buffered head and bytes when a body fails: the
    /// failure must come one (self-woken) `Pending` later, after a flush.
    #[test]
    fn a_failure_is_returned_one_poll_after_it_is_seen() {
        let chunks: Vec<Result<Bytes, ReadError<Error>>> =
            vec![Ok(Bytes::from_static(b"abc")), Err(ReadError::Abandoned)];
        let mut body = BlobBody::new(futures_util::stream::iter(chunks).boxed(), 10);
        let wakes = Arc::new(CountWakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut poll = || Pin::new(&mut body).poll_frame(&mut cx);

        assert!(matches!(poll(), Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(|d| &d[..] == b"abc")));
        assert!(poll().is_pending(), "the failure waits one poll");
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "and asks to be polled again"
        );
        assert!(matches!(poll(), Poll::Ready(Some(Err(ReadError::Abandoned)))));
    }
}
