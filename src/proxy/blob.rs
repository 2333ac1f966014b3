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
//!
//! When the store refuses the blob before any byte is streamed (disk full:
//! the writer or its reservation fails), the download fails `Uncacheable`
//! and each of its requests is served by `passthrough` instead: verified,
//! uncached (the condition is reported once, by `caching`).

use crate::telemetry::metrics::IntegrityKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::caching::{Caching, write_failure};
use super::{Error, Proxy, Target, blocking};
use crate::oci::Digest;
use crate::oci::material::{self, MaterialKind};
use crate::store::spool::{self, ChunkStream, ReadError};
use crate::store::{BlobWriter, Join, Spool, SpoolWriter};
use crate::store::{Grant, GrantScope};
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
            (true, false) => Some(ByteRange::Suffix(position(b)?)),
            (false, true) => Some(ByteRange::From(position(a)?)),
            (false, false) => {
                let (a, b) = (position(a)?, position(b)?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
            (true, true) => None,
        }
    }

    /// The bytes to send from a blob of `size` bytes, or `None` if
    /// unsatisfiable (→ 416).
    pub fn resolve(self, size: u64) -> Option<ByteSlice> {
        let (start, end) = match self {
            // `b` is inclusive: `min(b, size - 1) + 1` cannot overflow
            // because `a < size` makes `size - 1` valid.
            ByteRange::FromTo(a, b) if a < size => (a, b.min(size - 1) + 1),
            ByteRange::From(a) if a < size => (a, size),
            ByteRange::Suffix(n) if n > 0 && size > 0 => (size - n.min(size), size),
            _ => return None,
        };
        Some(ByteSlice { start, end })
    }
}

/// RFC 9110 `1*DIGIT` as a byte position. A number past `u64::MAX` is past
/// the end of any blob, so it saturates instead of making the header
/// invalid (`bytes=0-99999999999999999999` asks for everything).
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// A satisfiable, non-empty slice `[start, end)` of a blob: `start < end <=
/// size`. Only [`ByteRange::resolve`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSlice {
    start: u64,
    end: u64,
}

impl ByteSlice {
    pub fn start(self) -> u64 {
        self.start
    }

    /// Exclusive.
    pub fn end(self) -> u64 {
        self.end
    }

    /// The inclusive last byte, as `Content-Range` writes it.
    pub fn last(self) -> u64 {
        self.end - 1
    }

    /// Bytes in the slice (never zero).
    pub fn length(self) -> u64 {
        self.end - self.start
    }
}

/// A blob response: its full size, the slice being sent, and the bytes.
#[derive(Debug)]
pub struct BlobServed {
    pub size: u64,
    /// `Some` when answering a `Range` (206).
    pub range: Option<ByteSlice>,
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
        let Some(grant) = self.blob_grant(target, digest).await? else {
            return Err(Error::Denied {
                message: format!(
                    "blob {digest} is not referenced by an admitted manifest of this repository (pull the manifest first)"
                ),
            });
        };
        let store = self.store.clone();
        let d = digest.clone();
        if let Some((file, size, held)) = blocking(move || store.open_blob(&d, !head)).await? {
            self.ensure_blob_present(target, digest).await?;
            let spool = Arc::new(Spool::completed(file, size));
            if let GrantScope::Material(kind) = grant.scope {
                check_material(&spool, digest, size, kind).await?;
            }
            let mut served = serve(&spool, size, range, head, CacheOutcome::Hit)?;
            if let Some(body) = served.body.as_mut() {
                body.held = Some(held);
            }
            return Ok(served);
        }
        if head {
            return self.head_missing_blob(target, digest, grant).await;
        }
        match self.follow_download(target, digest, grant.scope, range).await {
            // The store could not take it (disk full): streamed verified,
            // not kept; the next request tries to cache it again.
            Err(Error::Uncacheable(_)) => self.pass_through(target, digest, grant, range, false).await,
            served => served,
        }
    }

    /// Serve a miss from the blob's download (led or followed).
    async fn follow_download(
        &self,
        target: &Target,
        digest: &Digest,
        scope: GrantScope,
        range: Option<ByteRange>,
    ) -> Result<BlobServed, Error> {
        let (spool, cache) = self.download(target, digest).await?;
        let size = match scope {
            GrantScope::Content => response_size(&spool).await?,
            // Material is checked whole before any byte of it is served.
            GrantScope::Material(kind) => {
                let size = spool::wait_complete(&mut spool.subscribe()).await.map_err(read_error)?;
                check_material(&spool, digest, size, kind).await?;
                size
            }
        };
        let mut served = serve(&spool, size, range, false, cache)?;
        if cache == CacheOutcome::Joined
            && let Some(body) = served.body.as_mut()
        {
            body.following = Some(self.metrics.follower_joined());
        }
        Ok(served)
    }

    /// Integrity-only mode has no grants tying a blob to the repositories
    /// whose admitted manifests reference it, so content cached (or being
    /// downloaded) for one repository is served for another only once the
    /// upstream confirms that repository has it too (one `HEAD`): private
    /// content never leaks into another route by digest. With a policy,
    /// the grant is that proof.
    pub(super) async fn ensure_blob_present(&self, target: &Target, digest: &Digest) -> Result<(), Error> {
        if !self.integrity_only() || self.known_present(target, digest) {
            return Ok(());
        }
        target.registry.head_blob(&target.repo, digest).await?;
        self.record_presence(target, digest);
        Ok(())
    }

    /// Follow the running download of `digest`, or start one (bounded by
    /// the download slots: `Error::Busy` when none frees up in time). A
    /// leader fetches from this repository; a follower of another
    /// repository's download must show the blob is here too. On a shared
    /// store even a leader may end up serving another replica's bytes (a
    /// relay, or an object committed under another replica's lease, fetched
    /// for whichever repository that replica was asked), so there every
    /// download shows it.
    async fn download(&self, target: &Target, digest: &Digest) -> Result<(Arc<Spool<Error>>, CacheOutcome), Error> {
        let (spool, cache) = self.join_download(target, digest, PeerRoute::MayRelay).await?;
        match cache {
            CacheOutcome::Miss if !self.store.shared() => self.record_presence(target, digest),
            _ => self.ensure_blob_present(target, digest).await?,
        }
        Ok((spool, cache))
    }

    pub(super) async fn join_download(
        &self,
        target: &Target,
        digest: &Digest,
        route: PeerRoute,
    ) -> Result<(Arc<Spool<Error>>, CacheOutcome), Error> {
        let joined = self.flights.join(digest).await.inspect_err(|busy| {
            self.metrics.cold_download_refused();
            tracing::warn!(%digest, error = %busy, "blob request refused: no download slot");
        })?;
        Ok(match joined {
            Join::Leader(lead) => {
                let spool = lead.spool().clone();
                let downloader = Downloader {
                    replica: self.replica.clone(),
                    store: self.store.clone(),
                    target: target.clone(),
                    digest: digest.clone(),
                    metrics: self.metrics.clone(),
                    cluster: self.cluster.clone().filter(|_| route == PeerRoute::MayRelay),
                    caching: self.caching.clone(),
                };
                let in_flight = self.metrics.download_started();
                self.downloads.spawn(async move {
                    downloader.run(lead.spool()).await;
                    drop(lead); // ends the flight after the verdict is published
                    drop(in_flight);
                });
                (spool, CacheOutcome::Miss)
            }
            Join::Follower(spool) => (spool, CacheOutcome::Joined),
        })
    }

    /// HEAD for a blob not in the store. Its `Content-Length` is a claim
    /// about content, so it must be a verified size, never an upstream's
    /// word: the size an admitted manifest's descriptor states (covered by
    /// the manifest's digest) when the upstream's HEAD agrees, otherwise the
    /// size of a completed, verified download (which the GET that usually
    /// follows then serves from the store).
    async fn head_missing_blob(&self, target: &Target, digest: &Digest, grant: Grant) -> Result<BlobServed, Error> {
        if let Some(size) = self.size_stated_by_admitted_descriptor(target, digest).await? {
            return Ok(head_only(size, CacheOutcome::Miss));
        }
        let (spool, cache) = self.download(target, digest).await?;
        match spool::wait_complete(&mut spool.subscribe()).await.map_err(read_error) {
            Ok(size) => Ok(head_only(size, cache)),
            // The store could not take it: the size of a verified
            // pass-through, its bytes discarded.
            Err(Error::Uncacheable(_)) => self.pass_through(target, digest, grant, None, true).await,
            Err(e) => Err(e),
        }
    }

    /// The granted descriptor's size, if the upstream has the blob at that
    /// size. An upstream `404` is the answer (`BLOB_UNKNOWN`); a different or
    /// missing size means the verified download decides.
    async fn size_stated_by_admitted_descriptor(&self, target: &Target, digest: &Digest) -> Result<Option<u64>, Error> {
        let Some(stated) = self.blob_grant(target, digest).await?.and_then(|g| g.size) else {
            return Ok(None);
        };
        let upstream = target.registry.head_blob(&target.repo, digest).await?;
        Ok((upstream == Some(stated)).then_some(stated))
    }
}

/// The `Content-Length` of a response that follows a download: the
/// upstream's length once it started, streamed with the last byte held back.
pub(super) async fn response_size(spool: &Spool<Error>) -> Result<u64, Error> {
    let mut rx = spool.subscribe();
    match spool::wait_started(&mut rx).await.map_err(read_error)? {
        Some(size) if size > 0 => Ok(size),
        // No Content-Length upstream: the response needs one, so wait for
        // the verified whole. Nor can a zero length be streamed first: with
        // no last byte to hold back, the response would be complete before
        // the proof, and an empty body claimed for a non-empty digest would
        // be served as a 200.
        Some(_) | None => spool::wait_complete(&mut rx).await.map_err(read_error),
    }
}

pub(super) fn head_only(size: u64, cache: CacheOutcome) -> BlobServed {
    BlobServed {
        size,
        range: None,
        body: None,
        cache,
    }
}

/// A blob granted only by verification material is served only if its
/// (verified) bytes are material of the granted kind: a material manifest
/// cannot unlock another image's layers by typing their digests as
/// signatures.
async fn check_material(
    spool: &Arc<Spool<Error>>,
    digest: &Digest,
    size: u64,
    kind: MaterialKind,
) -> Result<(), Error> {
    material_fits(digest, size, kind)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut chunks = spool::read_range(spool.clone(), 0, size);
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk.map_err(read_error)?);
    }
    check_material_bytes(digest, &bytes, kind)
}

/// Material is size-capped per kind: refused past it, unread.
pub(super) fn material_fits(digest: &Digest, size: u64, kind: MaterialKind) -> Result<(), Error> {
    let limit = kind.max_blob_bytes();
    if size > limit {
        return Err(refuse_material(
            digest,
            format!("its {size} bytes exceed the {limit}-byte limit for material"),
        ));
    }
    Ok(())
}

/// Whether the whole, verified `bytes` are material of `kind`.
pub(super) fn check_material_bytes(digest: &Digest, bytes: &[u8], kind: MaterialKind) -> Result<(), Error> {
    material::check_blob(kind, bytes).map_err(|e| refuse_material(digest, e.to_string()))
}

fn refuse_material(digest: &Digest, why: String) -> Error {
    Error::Denied {
        message: format!("blob {digest} is granted only as verification material, and {why}"),
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
    let (start, end) = slice.map_or((0, size), |s| (s.start(), s.end()));
    let body = (!head).then(|| BlobBody::new(spool::read_range(spool.clone(), start, end), end - start));
    Ok(BlobServed {
        size,
        range: slice,
        body,
        cache,
    })
}

/// The whole of a blob whose size is known, from its spool.
pub(super) fn serve_spool(spool: &Arc<Spool<Error>>, size: u64, cache: CacheOutcome) -> BlobServed {
    BlobServed {
        size,
        range: None,
        body: Some(BlobBody::new(spool::read_range(spool.clone(), 0, size), size)),
        cache,
    }
}

fn read_error(e: ReadError<Error>) -> Error {
    match e {
        ReadError::Failed(e) => e,
        ReadError::Abandoned => Error::Internal("download abandoned".into()),
        ReadError::Io(m) => Error::Internal(m),
    }
}

/// How long a download lease lives without renewal: a replica killed
/// mid-download blocks the blob for at most this long.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a replica follows another's download before giving up.
const FOLLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// Longest pause between two looks at a followed download.
const FOLLOW_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a download may stream from the replica leading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerRoute {
    /// A client's request: relay from the leading replica, if it is another.
    MayRelay,
    /// A peer's request: this replica was asked because it leads; it never
    /// passes the request on (two replicas with different peer lists
    /// would otherwise ask each other).
    Local,
}

/// The leader's download of one blob.
struct Downloader {
    /// This replica's name in leases.
    replica: Arc<str>,
    store: Arc<crate::store::Store>,
    target: Target,
    digest: Digest,
    metrics: Arc<crate::telemetry::Metrics>,
    /// Set when another replica may lead this download (`cluster.peers`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The storage condition: write failures recorded, commits end it.
    caching: Arc<Caching>,
}

impl Downloader {
    /// The store grew by `added` bytes and `evicted` left it.
    fn record_store_change(&self, added: u64, evicted: &crate::store::Evicted) {
        let delta = i128::from(added) - i128::from(evicted.bytes);
        self.metrics
            .store_bytes_changed(i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }));
        for digest in &evicted.blobs {
            self.metrics.store_evicted();
            tracing::info!(%digest, cap = ?self.store.max_bytes(), "blob evicted (least recently served)");
        }
    }

    async fn run(self, spool: &Arc<Spool<Error>>) {
        if !self.store.shared() {
            return self.download(spool).await;
        }
        // Replicas that know each other: stream from the one leading this
        // digest while it downloads.
        if let Some(leader) = self.peer_leader() {
            match self.relay(&leader, spool).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.peer_fallback();
                    tracing::warn!(digest = %self.digest, error = %e, "leading replica unavailable: coordinating through the bucket's lease");
                }
            }
        }
        // Replicas on one bucket: one upstream fetch per blob in total.
        match self.lead_or_follow(spool).await {
            Ok(Some(lease)) => {
                let lease = Arc::new(lease);
                let renewal = tokio::spawn(renew(lease.clone()));
                self.download(spool).await;
                renewal.abort();
                if let Err(e) = blocking(move || lease.release()).await {
                    tracing::warn!(digest = %self.digest, error = %e, "cannot release a download lease (it expires)");
                }
            }
            Ok(None) => {}
            // The bucket cannot coordinate (unreachable, or the holder
            // outlived the follow limit): fetch without a lease rather
            // than fail the pull; at worst the blob is fetched twice.
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "download lease unavailable: fetching without one");
                self.download(spool).await;
            }
        }
    }

    /// Take the blob's download lease (`Some`: this replica fetches it), or
    /// follow the replica that holds it by waiting for the committed object
    /// (polling with backoff; `None` once adopted into the spool). A lease
    /// whose holder stopped renewing it expires and is taken over here.
    async fn lead_or_follow(&self, spool: &Arc<Spool<Error>>) -> Result<Option<crate::store::Lease>, Error> {
        let deadline = tokio::time::Instant::now() + FOLLOW_LIMIT;
        let mut pause = std::time::Duration::from_millis(25);
        loop {
            let (store, d) = (self.store.clone(), self.digest.clone());
            if let Some((reader, size)) = blocking(move || store.open_blob_held(&d, false)).await? {
                spool.adopt_committed(reader, size);
                return Ok(None);
            }
            let (store, d, me) = (self.store.clone(), self.digest.clone(), self.replica.clone());
            match blocking(move || store.lease(&d, &me, LEASE_TTL)).await? {
                crate::store::LeaseState::Acquired(lease) => {
                    // The holder before may have committed and released
                    // between the look above and this lease: look again
                    // (it commits before it releases), or fetch.
                    let (store, d) = (self.store.clone(), self.digest.clone());
                    let committed = blocking(move || store.open_blob_held(&d, false)).await?;
                    let Some((reader, size)) = committed else {
                        return Ok(Some(lease));
                    };
                    if let Err(e) = blocking(move || lease.release()).await {
                        tracing::warn!(digest = %self.digest, error = %e, "cannot release a download lease (it expires)");
                    }
                    spool.adopt_committed(reader, size);
                    return Ok(None);
                }
                crate::store::LeaseState::HeldElsewhere { holder, .. } => {
                    tracing::debug!(digest = %self.digest, %holder, "following another replica's download");
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(Error::Internal(format!(
                    "blob {} is still being downloaded by another replica",
                    self.digest
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FOLLOW_POLL_MAX);
        }
    }

    /// The replica leading this digest, if it is another one.
    fn peer_leader(&self) -> Option<crate::config::PeerAddr> {
        match self.cluster.as_ref()?.blob_leader(&self.digest) {
            crate::cluster::Leader::Peer(p) => Some(p.clone()),
            crate::cluster::Leader::Me => None,
        }
    }

    /// Stream the blob from `leader` into the spool, hashing it here too,
    /// without committing (the leader commits it to the bucket). `Err`
    /// only when the leader could not be asked: nothing was streamed, and
    /// the caller coordinates through the bucket instead.
    async fn relay(
        &self,
        leader: &crate::config::PeerAddr,
        spool: &Arc<Spool<Error>>,
    ) -> Result<(), crate::cluster::PeerError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let body = cluster
            .client()
            .blob(
                leader,
                self.target.registry.host(),
                &self.target.repo,
                &self.digest,
                self.metrics.peer_bytes(),
            )
            .await?;
        let streamed = match self
            .open_spool(body.length, |store, digest| store.relay_file(digest))
            .await
        {
            Ok((relay, reader)) => self.stream(spool, body, relay, reader).await,
            Err(e) => Err(e),
        };
        match streamed {
            Ok((proof, _relay)) => {
                spool.complete(&proof);
                tracing::debug!(digest = %self.digest, %leader, "blob streamed from the leading replica and verified");
            }
            Err(e) => self.failed(spool, e, &leader.to_string()),
        }
        Ok(())
    }

    async fn download(&self, spool: &Arc<Spool<Error>>) {
        match self.fetch(spool).await {
            Ok((proof, writer)) => {
                // The bytes are proven: clients get their final bytes now.
                // The commit (fsync of the whole blob, then rename) is about
                // keeping them, and takes longer than the last chunk did.
                spool.complete(&proof);
                let len = proof.length();
                let (store, digest, caching) = (self.store.clone(), self.digest.clone(), self.caching.clone());
                let committed = blocking(move || {
                    let added = writer.commit(proof)?;
                    caching.committed(len, || store.available_bytes().ok().flatten());
                    Ok((added, store.record_commit(&digest, len, added)?))
                });
                match committed.await {
                    Ok((added, evicted)) => {
                        self.record_store_change(added, &evicted);
                        tracing::debug!(digest = %self.digest, bytes = len, "blob verified and stored");
                    }
                    // Served verified, but not kept: the next request downloads again.
                    Err(Error::Store(e)) if write_failure(&e).is_some() => self.caching.failed(&e, Some(len)),
                    Err(e) => tracing::warn!(digest = %self.digest, error = %e, "verified blob could not be stored"),
                }
            }
            Err(e) => self.failed(spool, e, self.target.registry.host().as_str()),
        }
    }

    /// The download from `source` (the upstream, or the replica it was
    /// relayed from) failed: count an integrity failure, tell the followers.
    fn failed(&self, spool: &Arc<Spool<Error>>, e: Error, source: &str) {
        if let Error::Integrity { source: why, .. } = &e {
            self.metrics.integrity_failure(IntegrityKind::Blob);
            let (expected, actual) = match why {
                IntegrityError::DigestMismatch { expected, actual } => (expected.to_string(), actual.to_string()),
                other => (self.digest.to_string(), other.to_string()),
            };
            tracing::warn!(upstream = %self.target.registry.host(), %source, repo = %self.target.repo, %expected, %actual,
                "blob integrity failure: download aborted, nothing stored");
        } else if is_storage_condition(&e) {
            // Recorded (once per condition) by `fetch`; an `Uncacheable`
            // download's requests pass through.
            tracing::debug!(digest = %self.digest, error = %e, "blob download stopped: the store refuses writes");
        } else {
            tracing::warn!(upstream = %self.target.registry.host(), %source, repo = %self.target.repo, digest = %self.digest,
                error = %e, "blob download failed");
        }
        spool.fail(e);
    }

    /// Stream the upstream body to two threads, one hashing and one writing
    /// the temp file (each fed the same `Bytes`, no copies). Returns the
    /// hash's proof with the fully written file, ready to commit.
    async fn fetch(&self, spool: &Arc<Spool<Error>>) -> Result<(DigestMatched, BlobWriter), Error> {
        let upstream = self.target.registry.get_blob(&self.target.repo, &self.digest).await?;
        let (writer, reader) = self
            .open_spool(upstream.length, |store, digest| store.blobs.writer(digest))
            .await?;
        self.stream(spool, upstream, writer, reader).await
    }

    /// Create the spool file a download writes through (`create`),
    /// reserving `length` bytes, and a reader that follows it. A storage
    /// failure here comes before any byte streamed: it is recorded, and the
    /// download's requests pass through ([`Error::Uncacheable`]).
    async fn open_spool<W: SpoolWriter>(
        &self,
        length: Option<u64>,
        create: impl FnOnce(&crate::store::Store, &Digest) -> Result<W, crate::store::StoreError> + Send + 'static,
    ) -> Result<(W, std::fs::File), Error> {
        let (store, d) = (self.store.clone(), self.digest.clone());
        let writer = blocking(move || {
            let mut writer = create(&store, &d)?;
            // fallocate refuses a zero length (EINVAL); nothing to reserve.
            if let Some(len) = length.filter(|&len| len > 0) {
                writer.reserve(len)?;
            }
            Ok(writer)
        })
        .await
        .map_err(|e| self.uncacheable(e, length))?;
        let reader = writer
            .reader()
            .map_err(|e| self.uncacheable(Error::Store(Arc::new(e)), length))?;
        Ok((writer, reader))
    }

    /// Publish `upstream`'s chunks to the spool while one thread hashes
    /// them and another writes them through `writer` (which `reader`
    /// follows). Returns the proof with the fully written `writer`.
    async fn stream<W: SpoolWriter>(
        &self,
        spool: &Arc<Spool<Error>>,
        mut upstream: BlobResponse,
        writer: W,
        reader: std::fs::File,
    ) -> Result<(DigestMatched, W), Error> {
        let length = upstream.length;
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
        if let Err(Error::Store(e)) = &written
            && write_failure(e).is_some()
        {
            // Mid-stream (no length to reserve, or a filesystem whose
            // reservation did not hold): responses already have bytes, so
            // this download fails; a retry is served uncached if the
            // store refuses again before streaming.
            self.caching.failed(e, length);
        }
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

impl Downloader {
    /// A storage write failed before the download streamed anything:
    /// recorded, and [`Error::Uncacheable`] for the requests that follow it.
    fn uncacheable(&self, e: Error, length: Option<u64>) -> Error {
        match e {
            Error::Store(s) if write_failure(&s).is_some() => {
                self.caching.failed(&s, length);
                Error::Uncacheable(s)
            }
            other => other,
        }
    }
}

/// A failure that is the storage condition's, already recorded.
fn is_storage_condition(e: &Error) -> bool {
    match e {
        Error::Uncacheable(_) => true,
        Error::Store(s) => write_failure(s).is_some(),
        _ => false,
    }
}

/// Keep a download lease alive: renewed at a third of its time to live.
async fn renew(lease: Arc<crate::store::Lease>) {
    let mut tick = tokio::time::interval(lease.ttl() / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let l = lease.clone();
        match blocking(move || l.renew()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("download lease taken over by another replica (this one stalled)");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew a download lease"),
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
fn write_all<W: SpoolWriter>(mut rx: mpsc::Receiver<Bytes>, mut writer: W, spool: &Spool<Error>) -> Result<W, Error> {
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
    /// Held while this response follows another request's download
    /// (`portcullis_download_followers`).
    following: Option<crate::telemetry::metrics::GaugeGuard>,
    /// Keeps a stored blob from eviction while this response reads it.
    held: Option<crate::store::InUse>,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody").field("remaining", &self.remaining).finish()
    }
}

impl BlobBody {
    pub(super) fn new(rx: ChunkStream<Error>, len: u64) -> BlobBody {
        BlobBody {
            rx,
            remaining: len,
            deferred: None,
            following: None,
            held: None,
        }
    }
}

impl BlobBody {
    /// Keep the stored blob from eviction while this body reads it.
    pub(super) fn hold(&mut self, held: crate::store::InUse) {
        self.held = Some(held);
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
        assert_eq!(ByteRange::FromTo(0, 99).resolve(10).map(span), Some((0, 10)));
        assert_eq!(ByteRange::From(10).resolve(10), None);
        assert_eq!(ByteRange::Suffix(30).resolve(10).map(span), Some((0, 10)));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
        assert_eq!(ByteRange::FromTo(3, 4).resolve(10).map(span), Some((3, 5)));
    }

    /// RFC 9110 §14.1.2: a last-byte-pos at or past the end is the end; a
    /// first-byte-pos at or past the end is unsatisfiable. No input, however
    /// large, may overflow the arithmetic.
    #[test]
    fn ranges_at_the_edges_of_u64() {
        let max = u64::MAX;
        let whole = |size: u64| Some((0, size));
        assert_eq!(
            ByteRange::parse("bytes=0-18446744073709551615"),
            Some(ByteRange::FromTo(0, max))
        );
        assert_eq!(ByteRange::FromTo(0, max).resolve(10).map(span), whole(10));
        assert_eq!(ByteRange::FromTo(9, max).resolve(10).map(span), Some((9, 10)));
        assert_eq!(ByteRange::FromTo(max, max).resolve(10), None);
        assert_eq!(ByteRange::From(max).resolve(10), None);
        assert_eq!(ByteRange::From(max).resolve(max), None);
        assert_eq!(
            ByteRange::FromTo(max - 1, max).resolve(max).map(span),
            Some((max - 1, max))
        );
        assert_eq!(ByteRange::Suffix(max).resolve(10).map(span), whole(10));
        assert_eq!(ByteRange::Suffix(0).resolve(0), None);
        assert_eq!(ByteRange::Suffix(1).resolve(0), None);
        assert_eq!(ByteRange::FromTo(0, 0).resolve(0), None);
        // Numbers past u64 mean "past any blob": a huge last-byte-pos is
        // the end, a huge first-byte-pos or suffix is everything or nothing.
        assert_eq!(
            ByteRange::parse("bytes=0-99999999999999999999999"),
            Some(ByteRange::FromTo(0, max))
        );
        assert_eq!(
            ByteRange::parse("bytes=99999999999999999999999-"),
            Some(ByteRange::From(max))
        );
        assert_eq!(
            ByteRange::parse("bytes=-99999999999999999999999"),
            Some(ByteRange::Suffix(max))
        );
        // Only digits: no signs, no hex, no inner spaces.
        for invalid in [
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-+2",
            "bytes=0x1-2",
            "bytes=1 0-20",
            "bytes=--1",
            "bytes=1--",
        ] {
            assert_eq!(ByteRange::parse(invalid), None, "{invalid}");
        }
        let slice = ByteRange::FromTo(0, max).resolve(max).expect("whole");
        assert_eq!((slice.length(), slice.last()), (max, max - 1));
    }

    /// An upstream that announces zero bytes gets no response until the
    /// download's verdict: here it fails, and so does the response.
    #[tokio::test]
    async fn a_zero_length_waits_for_the_verdict() {
        let spool: Arc<Spool<Error>> = Arc::new(Spool::new());
        spool.start(tempfile::tempfile().expect("temp file"), Some(0));
        let failing = spool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            failing.fail(Error::Internal("digest mismatch".into()));
        });
        let size = response_size(&spool).await;
        assert!(matches!(size, Err(Error::Internal(_))), "{size:?}");
    }

    fn span(s: ByteSlice) -> (u64, u64) {
        (s.start(), s.end())
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
