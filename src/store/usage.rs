//! What the blob store holds, and when each blob was last served: the
//! bookkeeping behind `storage.maxBytes`. The least recently *served* blob
//! goes first (recorded here, in memory, on every serve, and written to
//! `index/usage.json` every [`FLUSH_EVERY`] and at shutdown — not file
//! atimes, and not a write per request). Pinned blobs (content that cannot
//! be fetched again, e.g. imported for an air-gapped site) and blobs a
//! response is reading are never evicted.
//!
//! **Replicas on one bucket** share the index without any other server:
//! - a flush reads the stored index, merges it with what this replica
//!   recorded (per digest the latest served time wins; the hit and download
//!   counters add this replica's increments since its last flush; removals
//!   travel as tombstones, kept [`TOMBSTONE_KEEP`], so an entry of an
//!   evicted blob is not brought back by a replica that still remembers
//!   it), and writes the result conditionally (`If-None-Match: *` /
//!   `If-Match` on the version read), reading and merging again on a
//!   conflict: no replica's record is lost to another's flush. The merged
//!   times also flow back into this replica's order;
//! - blobs held by a response count as served at every flush, so a long
//!   stream stays recent in the shared index while it lasts;
//! - before choosing victims, a replica on a shared store flushes (the
//!   merge brings in the other replicas' times and removals) and re-reads
//!   the pins, and then never evicts a blob served, as far as the merged
//!   index says, within its grace (default [`DEFAULT_SHARED_GRACE`], longer
//!   than the flush interval); its removals are flushed right after.
//!
//! What remains: another replica's serve of a blob in the minute since that
//! replica's last flush is invisible, so a blob whose previous recorded
//! serve is older than the grace can be evicted while that replica starts
//! streaming it (the response ends early, the client retries, the blob is
//! fetched and verified again). Times are wall clocks: replicas' clocks
//! must agree to within a few seconds. Pins are read, changed and written
//! the same conditional way, so concurrent pins are not lost.
//!
//! Only blobs are counted and evicted: manifests, tags, verdicts and grants
//! are small beside them, and a grant whose blob was evicted stays true (the
//! blob is fetched and verified again on the next pull).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::index::{PINS, Snapshot, USAGE, UsageFile, merge, read_json, read_pins, until_written, write_json};
use super::StoreError;
use super::backend::{Backend, Key, PutMode, Written};
use super::blobs::{AREA, BlobStore};
use crate::oci::Digest;

/// After going over the cap, evict down to this share of it, so that one
/// eviction makes room for more than one commit.
const LOW_WATERMARK_PERCENT: u64 = 90;

/// How often a server writes the index (its timer; also at shutdown).
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// On a shared store, a blob served within this (by any replica, as the
/// merged index says) is not evicted: three flush intervals.
pub const DEFAULT_SHARED_GRACE: Duration = Duration::from_secs(180);

/// How long the index remembers an eviction (milliseconds): far longer than
/// any replica goes between flushes.
pub const TOMBSTONE_KEEP: u64 = 60 * 60 * 1000;

/// On a shared store, the merge before an eviction is skipped if one landed
/// this recently (milliseconds): commits past the cap come in bursts, and
/// while the grace keeps everything, each would read and write the whole
/// index. A few seconds of staleness are nothing beside the grace.
const RESYNC_AFTER: u64 = 5000;

/// One stored blob.
#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    /// Unix milliseconds.
    last_served: u64,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<Digest, Entry>,
    total: u64,
    pins: BTreeMap<Digest, String>,
    in_use: HashMap<Digest, usize>,
    /// Totals as last merged, plus this replica's increments since.
    hits: u64,
    downloads: u64,
    /// This replica's increments not yet in the stored index.
    pending_hits: u64,
    pending_downloads: u64,
    /// Blobs this replica removed (Unix ms), not yet in the stored index.
    removed: HashMap<Digest, u64>,
    /// Bumped on every change worth a flush.
    generation: u64,
    flushed_generation: u64,
    /// When the last merge landed (Unix ms).
    last_sync: u64,
}

impl State {
    fn touch(&mut self) {
        self.generation += 1;
    }

    fn dirty(&self) -> bool {
        self.generation != self.flushed_generation || !self.in_use.is_empty()
    }
}

/// The blob store's size, access order, pins and readers.
#[derive(Debug)]
pub struct Usage {
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
    /// When the blobs were listed at load (Unix ms): an index entry of a
    /// blob this replica does not know and nobody served since was not in
    /// the store then, and is dropped at the next flush.
    listed_at: u64,
    /// On a shared store: see [`DEFAULT_SHARED_GRACE`]. Zero otherwise.
    grace: Duration,
}

/// What an eviction removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub blobs: Vec<Digest>,
    pub bytes: u64,
}

/// A snapshot for `portcullis store stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageStats {
    pub blobs: usize,
    pub bytes: u64,
    pub pinned: usize,
    pub pinned_bytes: u64,
    /// Blob requests served from the store, and blobs downloaded into it,
    /// since the index was created.
    pub hits: u64,
    pub downloads: u64,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Usage {
    /// List the blobs once (sizes; the digest from each key) and read the
    /// index (access times, pins, counters). A blob the index does not know
    /// counts as served when it was last modified. On a shared backend the
    /// eviction grace is [`DEFAULT_SHARED_GRACE`] (see [`Usage::with_grace`]).
    pub fn load(backend: Arc<dyn Backend>) -> Result<Usage, StoreError> {
        let listed_at = now_millis();
        let file: UsageFile = read_json(&*backend, USAGE)?.and_then(|(f, _)| f).unwrap_or_default();
        let pins = read_pins(&*backend)?.map(|(p, _)| p).unwrap_or_default();
        let mut state = State {
            hits: file.hits,
            downloads: file.downloads,
            pins,
            ..State::default()
        };
        for (digest, size, modified) in list_blobs(&*backend)? {
            let last_served = file.last_served.get(&digest.to_string()).copied().unwrap_or(modified);
            state.total += size;
            state.blobs.insert(digest, Entry { size, last_served });
        }
        let grace = if backend.shared() {
            DEFAULT_SHARED_GRACE
        } else {
            Duration::ZERO
        };
        Ok(Usage {
            backend,
            state: Mutex::new(state),
            listed_at,
            grace,
        })
    }

    /// On a shared store, evict no blob served within `grace` (by any
    /// replica, as far as the merged index says); ignored on a store no
    /// other process shares (its readers are all in this process).
    pub fn with_grace(mut self, grace: Duration) -> Usage {
        if self.backend.shared() {
            self.grace = grace;
        }
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters, not invariants
        // of content: carry on with them.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes of blobs held.
    pub fn total(&self) -> u64 {
        self.state().total
    }

    /// A response is about to read `digest` from the store: it is not
    /// evicted until the guard drops.
    pub fn hold(self: &Arc<Self>, digest: &Digest) -> InUse {
        let mut s = self.state();
        *s.in_use.entry(digest.clone()).or_insert(0) += 1;
        InUse {
            usage: self.clone(),
            digest: digest.clone(),
        }
    }

    /// `digest` was served from the store: it moves to the back of the
    /// eviction order (in memory; the periodic flush writes the index).
    pub fn served(&self, digest: &Digest) {
        let mut s = self.state();
        s.hits += 1;
        s.pending_hits += 1;
        s.touch();
        if let Some(e) = s.blobs.get_mut(digest) {
            e.last_served = now_millis();
        }
    }

    /// `digest` is stored (found by a read: another replica may have
    /// committed it): count it if this replica did not know it.
    pub fn known(&self, digest: &Digest, size: u64) {
        let mut s = self.state();
        if !s.blobs.contains_key(digest) {
            s.total += size;
            s.blobs.insert(
                digest.clone(),
                Entry {
                    size,
                    last_served: now_millis(),
                },
            );
        }
    }

    /// A verified blob was committed; `new` is false when it was already
    /// there (a concurrent commit of the same digest).
    pub fn added(&self, digest: &Digest, size: u64, new: bool) {
        let mut s = self.state();
        s.downloads += 1;
        s.pending_downloads += 1;
        s.touch();
        if new && !s.blobs.contains_key(digest) {
            s.total += size;
        }
        s.blobs.insert(
            digest.clone(),
            Entry {
                size,
                last_served: now_millis(),
            },
        );
    }

    /// Never evict `digest` (content that cannot be fetched again).
    pub fn pin(&self, digest: &Digest, reason: &str) -> Result<(), StoreError> {
        self.change_pins(|pins| {
            pins.insert(digest.clone(), reason.to_owned());
        })
    }

    pub fn unpin(&self, digest: &Digest) -> Result<(), StoreError> {
        self.change_pins(|pins| {
            pins.remove(digest);
        })
    }

    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.state().pins.contains_key(digest)
    }

    /// When over `cap`, evict least recently served blobs (neither pinned
    /// nor being read, nor on a shared store served within the grace) down
    /// to the low watermark; `to_cap` evicts only down to the cap itself
    /// (`store gc`). Files are removed under the lock, so a response either
    /// holds its blob first or finds it gone (and fetches it again), never
    /// a file vanishing between the check and the read.
    ///
    /// On a shared store the index is merged (and the pins re-read) first,
    /// and the removals are flushed after; a failure to merge first is
    /// returned, and nothing is evicted on stale times.
    pub fn evict_over(&self, cap: u64, to_cap: bool) -> Result<Evicted, StoreError> {
        if self.total() <= cap {
            return Ok(Evicted::default());
        }
        let shared = self.backend.shared();
        if shared && now_millis().saturating_sub(self.state().last_sync) >= RESYNC_AFTER {
            self.sync()?;
            self.reload_pins()?;
        }
        let evicted = self.evict_locked(cap, to_cap)?;
        if shared
            && !evicted.blobs.is_empty()
            && let Err(e) = self.sync()
        {
            // The next flush carries them.
            tracing::warn!(error = %e, "cannot record evictions in the shared access index");
        }
        Ok(evicted)
    }

    fn evict_locked(&self, cap: u64, to_cap: bool) -> Result<Evicted, StoreError> {
        let mut s = self.state();
        if s.total <= cap {
            return Ok(Evicted::default());
        }
        let target = if to_cap { cap } else { cap / 100 * LOW_WATERMARK_PERCENT };
        let now = now_millis();
        let recent = now.saturating_sub(millis(self.grace));
        let mut order: Vec<(u64, Digest)> = s
            .blobs
            .iter()
            .filter(|(d, e)| {
                !s.pins.contains_key(*d)
                    && s.in_use.get(*d).is_none_or(|n| *n == 0)
                    && (self.grace.is_zero() || e.last_served < recent)
            })
            .map(|(d, e)| (e.last_served, d.clone()))
            .collect();
        order.sort();
        // Choose first, then remove in one batch (one request per thousand
        // on S3), still under the lock.
        let mut left = s.total;
        let victims: Vec<Digest> = order
            .into_iter()
            .map(|(_, d)| d)
            .take_while(|d| {
                let over = left > target;
                left = left.saturating_sub(s.blobs.get(d).map_or(0, |e| e.size));
                over
            })
            .collect();
        let keys: Vec<_> = victims.iter().map(BlobStore::key).collect();
        self.backend.delete_many(&keys)?;
        let mut evicted = Evicted::default();
        for digest in victims {
            if let Some(e) = s.blobs.remove(&digest) {
                s.total = s.total.saturating_sub(e.size);
                evicted.bytes += e.size;
            }
            s.removed.insert(digest.clone(), now);
            evicted.blobs.push(digest);
        }
        s.touch();
        Ok(evicted)
    }

    /// Forget a blob removed by someone else (`store verify` quarantine).
    pub fn forget(&self, digest: &Digest) {
        let mut s = self.state();
        if let Some(e) = s.blobs.remove(digest) {
            s.total = s.total.saturating_sub(e.size);
        }
        s.removed.insert(digest.clone(), now_millis());
        s.touch();
    }

    /// Merge what this replica recorded into the stored index, if anything
    /// changed (or a response holds a blob).
    pub fn flush(&self) -> Result<(), StoreError> {
        if !self.state().dirty() {
            return Ok(());
        }
        self.sync()
    }

    /// Read, merge, write conditionally; on a conflict read and merge
    /// again. The merged times and removals then flow into this replica.
    fn sync(&self) -> Result<(), StoreError> {
        until_written(USAGE, || {
            let snapshot = self.snapshot();
            let (stored, version) = match read_json::<UsageFile>(&*self.backend, USAGE)? {
                Some((file, version)) => (file.unwrap_or_default(), Some(version)),
                None => (UsageFile::default(), None),
            };
            let now = now_millis();
            let merged = merge(stored, &snapshot, now, self.listed_at);
            let mode = version.map_or(PutMode::Create, PutMode::Update);
            let written = write_json(&*self.backend, &Key::fixed(USAGE), &merged, mode)?;
            if written == Written::Done {
                self.adopt(&merged, &snapshot, now);
            }
            Ok(written)
        })
    }

    fn snapshot(&self) -> Snapshot {
        let s = self.state();
        let now = now_millis();
        let mut served: HashMap<Digest, u64> = s.blobs.iter().map(|(d, e)| (d.clone(), e.last_served)).collect();
        // Being read right now: as recent as it gets.
        for d in s.in_use.keys() {
            if let Some(t) = served.get_mut(d) {
                *t = now;
            }
        }
        Snapshot {
            served,
            removed: s.removed.clone(),
            hits: s.pending_hits,
            downloads: s.pending_downloads,
            generation: s.generation,
        }
    }

    /// After `merged` was written from `snapshot`: take the other
    /// replicas' later times and removals, and count what was sent as sent.
    fn adopt(&self, merged: &UsageFile, snapshot: &Snapshot, now: u64) {
        let mut s = self.state();
        let s = &mut *s;
        s.pending_hits = s.pending_hits.saturating_sub(snapshot.hits);
        s.pending_downloads = s.pending_downloads.saturating_sub(snapshot.downloads);
        s.hits = merged.hits.saturating_add(s.pending_hits);
        s.downloads = merged.downloads.saturating_add(s.pending_downloads);
        for (d, t) in &snapshot.removed {
            if s.removed.get(d) == Some(t) {
                s.removed.remove(d);
            }
        }
        let mut gone = Vec::new();
        for (d, e) in &mut s.blobs {
            let key = d.to_string();
            if let Some(t) = merged.last_served.get(&key) {
                e.last_served = e.last_served.max(*t);
            }
            // Removed by a replica after anyone last served it here.
            if merged.removed.get(&key).is_some_and(|r| *r >= e.last_served) {
                gone.push(d.clone());
            }
        }
        for d in gone {
            if let Some(e) = s.blobs.remove(&d) {
                s.total = s.total.saturating_sub(e.size);
            }
        }
        if s.generation == snapshot.generation {
            s.flushed_generation = s.generation;
        }
        s.last_sync = now;
    }

    /// Take the stored pins (another replica may have pinned since).
    fn reload_pins(&self) -> Result<(), StoreError> {
        let pins = read_pins(&*self.backend)?.map(|(p, _)| p).unwrap_or_default();
        self.state().pins = pins;
        Ok(())
    }

    /// Read the stored pins, change them, write them conditionally (again
    /// on a conflict), and keep the result.
    fn change_pins(&self, change: impl Fn(&mut BTreeMap<Digest, String>)) -> Result<(), StoreError> {
        until_written(PINS, || {
            let (mut pins, version) = match read_pins(&*self.backend)? {
                Some((pins, version)) => (pins, Some(version)),
                None => (BTreeMap::new(), None),
            };
            change(&mut pins);
            let file: BTreeMap<String, &String> = pins.iter().map(|(d, why)| (d.to_string(), why)).collect();
            let mode = version.map_or(PutMode::Create, PutMode::Update);
            let written = write_json(&*self.backend, &Key::fixed(PINS), &file, mode)?;
            if written == Written::Done {
                self.state().pins = pins;
            }
            Ok(written)
        })
    }

    pub fn stats(&self) -> UsageStats {
        let s = self.state();
        let pinned_bytes = s.pins.keys().filter_map(|d| s.blobs.get(d)).map(|e| e.size).sum();
        UsageStats {
            blobs: s.blobs.len(),
            bytes: s.total,
            pinned: s.pins.len(),
            pinned_bytes,
            hits: s.hits,
            downloads: s.downloads,
        }
    }

    fn release(&self, digest: &Digest) {
        let mut s = self.state();
        if let Some(n) = s.in_use.get_mut(digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_use.remove(digest);
            }
        }
    }
}

/// A blob being read; see [`Usage::hold`].
#[derive(Debug)]
pub struct InUse {
    usage: Arc<Usage>,
    digest: Digest,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.usage.release(&self.digest);
    }
}

/// Every stored blob whose key is a digest: (digest, size, modification
/// time in Unix milliseconds).
pub(super) fn list_blobs(backend: &dyn Backend) -> Result<Vec<(Digest, u64, u64)>, StoreError> {
    let Some(prefix) = Key::new([AREA]) else {
        return Ok(Vec::new());
    };
    Ok(backend
        .list(&prefix)?
        .into_iter()
        .filter_map(|l| Some((l.key.content_digest(AREA)?, l.size, l.modified)))
        .collect())
}

mod index;
#[cfg(test)]
mod tests;
