//! A blob the store cannot take (disk full, bucket refusing writes) is
//! still served, verified: streamed from the upstream to the client while
//! hashed, nothing written.
//!
//! ```text
//! download: writer or reservation refused ─► spool fails Uncacheable (before any byte)
//!   every request of that download ─► pass_through: own upstream GET (one download slot)
//!       chunk ─► BlobVerifier::update ─► the client's slice, minus its last byte
//!       end   ─► BlobVerifier::finish ─► DigestMatched ─► the last byte
//!       mismatch / short / long ─► the response is aborted (never completed)
//! ```
//! The client's socket paces the upstream (a chunk is pulled only when the
//! body is polled), so memory stays at one chunk; material is read whole
//! (size-capped by its kind) and checked before any byte is served, as on
//! the spool's path. The next request for the blob tries to cache it again:
//! that attempt is the probe that notices the room is back.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream;

use super::blob::{BlobBody, BlobServed, ByteRange, check_material_bytes, head_only, material_fits};
use super::{Error, Proxy, Target};
use crate::oci::Digest;
use crate::store::spool::{ChunkStream, ReadError};
use crate::store::{Grant, GrantScope};
use crate::telemetry::CacheOutcome;
use crate::telemetry::metrics::{GaugeGuard, IntegrityKind};
use crate::upstream::BlobResponse;
use crate::verify::{BlobVerifier, DigestMatched, IntegrityError};

impl Proxy {
    /// Serve `digest` straight from the upstream, verified and uncached
    /// (`head`: only its verified size). The grant was checked by the
    /// caller; material is checked here, whole, before serving.
    pub(super) async fn pass_through(
        &self,
        target: &Target,
        digest: &Digest,
        grant: Grant,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobServed, Error> {
        let slot = self.flights.slot().await.inspect_err(|busy| {
            self.metrics.cold_download_refused();
            tracing::warn!(%digest, error = %busy, "uncached blob request refused: no download slot");
        })?;
        let in_flight = self.metrics.download_started();
        let upstream = target.registry.get_blob(&target.repo, digest).await?;
        // The upstream's length, else the admitted descriptor's: the
        // verifier holds the bytes to it either way.
        let Some(size) = upstream.length.or(grant.size) else {
            return Err(Error::Internal(format!(
                "blob {digest}: the store cannot take it now, and without a length from the upstream it cannot be streamed verified"
            )));
        };
        tracing::debug!(%digest, size, "blob served uncached (the store refuses writes)");
        let mut pass = PassThrough {
            upstream,
            verifier: Some(BlobVerifier::new(digest.clone(), Some(size))),
            target: target.clone(),
            digest: digest.clone(),
            metrics: self.metrics.clone(),
            received: 0,
            start: 0,
            end: size,
            held: None,
            _slot: slot,
            _in_flight: in_flight,
        };
        if let GrantScope::Material(kind) = grant.scope {
            material_fits(digest, size, kind)?;
            let (bytes, proof) = pass.read_whole(true).await?;
            check_material_bytes(digest, &bytes, kind)?;
            return verified_bytes(bytes, &proof, range, head);
        }
        if head {
            // Hashed to the end, nothing kept: the size is then verified.
            let (_, proof) = pass.read_whole(false).await?;
            return Ok(head_only(proof.length(), CacheOutcome::Miss));
        }
        if size == 0 {
            // No last byte to hold back: the verdict first.
            let (bytes, proof) = pass.read_whole(true).await?;
            return verified_bytes(bytes, &proof, range, head);
        }
        let slice = match range {
            None => None,
            Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
        };
        (pass.start, pass.end) = slice.map_or((0, size), |s| (s.start(), s.end()));
        let len = pass.end - pass.start;
        Ok(BlobServed {
            size,
            range: slice,
            body: Some(BlobBody::new(pass.into_chunks(), len)),
            cache: CacheOutcome::Miss,
        })
    }
}

/// A response over bytes verified whole (material, empty blobs): the proof
/// is asked for so that nothing else can be served this way.
fn verified_bytes(
    bytes: Bytes,
    _proof: &DigestMatched,
    range: Option<ByteRange>,
    head: bool,
) -> Result<BlobServed, Error> {
    let size = bytes.len() as u64;
    if head {
        return Ok(head_only(size, CacheOutcome::Miss));
    }
    let slice = match range {
        None => None,
        Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
    };
    let part = match slice {
        // Within `bytes` (`resolve` keeps end <= size), so the casts hold.
        Some(s) => bytes.slice(usize::try_from(s.start()).unwrap_or(0)..usize::try_from(s.end()).unwrap_or(0)),
        None => bytes,
    };
    let len = part.len() as u64;
    let chunks: ChunkStream<Error> = stream::iter((len > 0).then_some(Ok(part))).boxed();
    Ok(BlobServed {
        size,
        range: slice,
        body: Some(BlobBody::new(chunks, len)),
        cache: CacheOutcome::Miss,
    })
}

/// What of `chunk` (at blob offset `at`) belongs to the slice `[start,
/// end)`: the part the client may have now (short of the slice's last
/// byte), and that last byte if the chunk holds it (released only with the
/// proof). Slices are `Bytes` views: nothing is copied.
fn split(at: u64, chunk: &Bytes, start: u64, end: u64) -> (Option<Bytes>, Option<Bytes>) {
    let Some(last) = end.checked_sub(1) else {
        return (None, None);
    };
    let chunk_end = at + chunk.len() as u64;
    // Positions within the chunk: `at <= pos <= chunk_end` where used.
    let index = |pos: u64| usize::try_from(pos - at).unwrap_or(0);
    let held = (at <= last && last < chunk_end).then(|| chunk.slice(index(last)..index(last) + 1));
    let (from, to) = (start.max(at), last.min(chunk_end));
    let now = (from < to).then(|| chunk.slice(index(from)..index(to)));
    (now, held)
}

/// One upstream body on its way to one client: every byte hashed, the
/// client's slice `[start, end)` handed out as it arrives except its last
/// byte, which only the verifier's proof releases.
struct PassThrough {
    upstream: BlobResponse,
    /// `None` once the verdict is in.
    verifier: Option<BlobVerifier>,
    target: Target,
    digest: Digest,
    metrics: Arc<crate::telemetry::Metrics>,
    /// Bytes of the blob received so far.
    received: u64,
    start: u64,
    /// Exclusive; `end > start` for a streamed slice.
    end: u64,
    /// The slice's last byte, held back until the proof.
    held: Option<Bytes>,
    /// A download slot (the cold-download bound), while the body lives.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// `portcullis_downloads_in_flight`, while the body lives.
    _in_flight: GaugeGuard,
}

impl PassThrough {
    /// The next bytes of the slice; `None` after the last one, which comes
    /// only with the proof that the whole blob matched its digest.
    async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(verifier) = self.verifier.as_mut() else {
                return Ok(None);
            };
            match self.upstream.next_chunk().await? {
                Some(chunk) => {
                    if let Err(e) = verifier.update(&chunk) {
                        return Err(self.integrity(e));
                    }
                    let at = self.received;
                    self.received += chunk.len() as u64;
                    let (now, last) = split(at, &chunk, self.start, self.end);
                    if last.is_some() {
                        self.held = last;
                    }
                    if let Some(part) = now {
                        return Ok(Some(part));
                    }
                }
                None => {
                    let proof = self.verify()?;
                    return Ok(self.release(&proof));
                }
            }
        }
    }

    /// The whole blob, verified (material, an empty blob), or with `keep`
    /// false only its verdict (a HEAD's size). The verifier refuses any
    /// byte past the length it was given, so what is kept is bounded by it
    /// (material's cap was checked against that length).
    async fn read_whole(&mut self, keep: bool) -> Result<(Bytes, DigestMatched), Error> {
        let capacity = if keep { self.end } else { 0 };
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0).min(1 << 20));
        while let Some(verifier) = self.verifier.as_mut() {
            match self.upstream.next_chunk().await? {
                Some(chunk) => {
                    if let Err(e) = verifier.update(&chunk) {
                        return Err(self.integrity(e));
                    }
                    if keep {
                        bytes.extend_from_slice(&chunk);
                    }
                }
                None => {
                    let proof = self.verify()?;
                    return Ok((Bytes::from(bytes), proof));
                }
            }
        }
        Err(Error::Internal("pass-through read after its verdict".into()))
    }

    /// The held-back last byte of the slice: only the proof that the whole
    /// blob matched its digest lets it out (as `Spool::complete` does for
    /// spool readers).
    fn release(&mut self, _proof: &DigestMatched) -> Option<Bytes> {
        self.held.take()
    }

    /// The verdict: the proof, or the integrity failure (logged, counted).
    fn verify(&mut self) -> Result<DigestMatched, Error> {
        let Some(verifier) = self.verifier.take() else {
            return Err(Error::Internal("pass-through verified twice".into()));
        };
        verifier.finish().map_err(|e| self.integrity(e))
    }

    fn integrity(&mut self, source: IntegrityError) -> Error {
        self.verifier = None;
        self.held = None;
        self.metrics.integrity_failure(IntegrityKind::Blob);
        let (expected, actual) = match &source {
            IntegrityError::DigestMismatch { expected, actual } => (expected.to_string(), actual.to_string()),
            other => (self.digest.to_string(), other.to_string()),
        };
        tracing::warn!(upstream = %self.target.registry.host(), repo = %self.target.repo, %expected, %actual,
            "blob integrity failure: uncached response aborted");
        Error::Integrity {
            digest: self.digest.clone(),
            source,
        }
    }

    /// The client's chunks; the stream ends with an error (the response is
    /// aborted) on any failure.
    fn into_chunks(self) -> ChunkStream<Error> {
        stream::unfold(Some(self), |state| async move {
            let mut pass = state?;
            match pass.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(pass))),
                Ok(None) => None,
                Err(e) => Some((Err(ReadError::Failed(e)), None)),
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `blob` in chunks of `size` through `split` for `[start, end)`:
    /// what the client got before the proof, and the byte held for it.
    fn run(blob: &[u8], size: usize, start: u64, end: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut now, mut held) = (Vec::new(), Vec::new());
        for (i, chunk) in blob.chunks(size).enumerate() {
            let (part, last) = split((i * size) as u64, &Bytes::copy_from_slice(chunk), start, end);
            now.extend_from_slice(part.as_deref().unwrap_or_default());
            if let Some(last) = last {
                assert!(held.is_empty(), "one last byte");
                held.extend_from_slice(&last);
            }
        }
        (now, held)
    }

    /// Whatever the chunking, the client gets its slice but its last byte
    /// before the proof, and exactly that byte is held for after it.
    #[test]
    fn the_last_byte_of_any_slice_waits_for_the_proof() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for size in [1, 7, 64, 999, 1000, 4096] {
            for (start, end) in [(0, 1000), (0, 1), (999, 1000), (100, 200), (63, 65), (500, 1000)] {
                let (now, held) = run(&blob, size, start, end);
                let (s, e) = (start as usize, end as usize);
                assert_eq!(now, &blob[s..e - 1], "chunks of {size}, [{start}, {end})");
                assert_eq!(held, &blob[e - 1..e], "chunks of {size}, [{start}, {end})");
            }
        }
    }

    #[test]
    fn an_empty_slice_takes_nothing() {
        assert_eq!(split(0, &Bytes::from_static(b"abc"), 0, 0), (None, None));
    }
}
