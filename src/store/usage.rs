//! What the blob store holds, and when each blob was last served: the
//! bookkeeping behind `storage.maxBytes`. The least recently *served* blob
//! goes first (recorded here, in memory, on every serve, and written to
//! `index/usage.json` once a minute and at shutdown — not file atimes, and
//! not a write per request; on a shared bucket each replica keeps its own
//! order and the index is last-writer-wins: it is a hint, not content). Pinned
//! blobs (content that cannot be fetched again, e.g. imported for an
//! air-gapped site) and blobs a response is reading are never evicted.
//!
//! Only blobs are counted and evicted: manifests, tags, verdicts and grants
//! are small beside them, and a grant whose blob was evicted stays true (the
//! blob is fetched and verified again on the next pull).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::backend::{Backend, Key, PutMode};
use super::blobs::{AREA, BlobStore};
use crate::oci::Digest;

/// After going over the cap, evict down to this share of it, so that one
/// eviction makes room for more than one commit.
const LOW_WATERMARK_PERCENT: u64 = 90;

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
    hits: u64,
    downloads: u64,
    dirty: bool,
}

/// `index/usage.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UsageFile {
    last_served: BTreeMap<String, u64>,
    hits: u64,
    downloads: u64,
}

/// The blob store's size, access order, pins and readers.
#[derive(Debug)]
pub struct Usage {
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
}

const USAGE: &str = "index/usage.json";
const PINS: &str = "index/pins.json";

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

impl Usage {
    /// List the blobs once (sizes; the digest from each key) and read the
    /// index (access times, pins, counters). A blob the index does not know
    /// counts as served when it was last modified.
    pub fn load(backend: Arc<dyn Backend>) -> Result<Usage, StoreError> {
        let file: UsageFile = read_json(&*backend, USAGE)?.unwrap_or_default();
        let pins: BTreeMap<String, String> = read_json(&*backend, PINS)?.unwrap_or_default();
        let mut state = State {
            hits: file.hits,
            downloads: file.downloads,
            pins: pins
                .into_iter()
                .filter_map(|(d, why)| d.parse().ok().map(|d| (d, why)))
                .collect(),
            ..State::default()
        };
        for (digest, size, modified) in list_blobs(&*backend)? {
            let last_served = file.last_served.get(&digest.to_string()).copied().unwrap_or(modified);
            state.total += size;
            state.blobs.insert(digest, Entry { size, last_served });
        }
        Ok(Usage {
            backend,
            state: Mutex::new(state),
        })
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
        s.dirty = true;
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
        s.dirty = true;
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
        let mut s = self.state();
        s.pins.insert(digest.clone(), reason.to_owned());
        self.write_pins(&s)
    }

    pub fn unpin(&self, digest: &Digest) -> Result<(), StoreError> {
        let mut s = self.state();
        s.pins.remove(digest);
        self.write_pins(&s)
    }

    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.state().pins.contains_key(digest)
    }

    /// When over `cap`, evict least recently served blobs (neither pinned
    /// nor being read) down to the low watermark; `to_cap` evicts only down
    /// to the cap itself (`store gc`). Files are removed under the lock, so
    /// a response either holds its blob first or finds it gone (and fetches
    /// it again), never a file vanishing between the check and the read.
    pub fn evict_over(&self, cap: u64, to_cap: bool) -> Result<Evicted, StoreError> {
        let mut s = self.state();
        if s.total <= cap {
            return Ok(Evicted::default());
        }
        let target = if to_cap { cap } else { cap / 100 * LOW_WATERMARK_PERCENT };
        let mut order: Vec<(u64, Digest)> = s
            .blobs
            .iter()
            .filter(|(d, _)| !s.pins.contains_key(*d) && s.in_use.get(*d).is_none_or(|n| *n == 0))
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
            evicted.blobs.push(digest);
        }
        s.dirty = true;
        Ok(evicted)
    }

    /// Forget a blob removed by someone else (`store verify` quarantine).
    pub fn forget(&self, digest: &Digest) {
        let mut s = self.state();
        if let Some(e) = s.blobs.remove(digest) {
            s.total = s.total.saturating_sub(e.size);
            s.dirty = true;
        }
    }

    /// Write the access times and counters if they changed.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut s = self.state();
        if !s.dirty {
            return Ok(());
        }
        let file = UsageFile {
            last_served: s.blobs.iter().map(|(d, e)| (d.to_string(), e.last_served)).collect(),
            hits: s.hits,
            downloads: s.downloads,
        };
        write_json(&*self.backend, USAGE, &file)?;
        s.dirty = false;
        Ok(())
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

    fn write_pins(&self, s: &State) -> Result<(), StoreError> {
        let pins: BTreeMap<String, &String> = s.pins.iter().map(|(d, why)| (d.to_string(), why)).collect();
        write_json(&*self.backend, PINS, &pins)
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

fn read_json<T: for<'de> Deserialize<'de>>(backend: &dyn Backend, key: &'static str) -> Result<Option<T>, StoreError> {
    let key = Key::fixed(key);
    // The index is written atomically; one that does not parse was
    // written by another version: start over rather than refuse to run
    // (it holds access times, not content).
    Ok(backend.get(&key)?.and_then(|o| serde_json::from_slice(&o.bytes).ok()))
}

fn write_json<T: Serialize>(backend: &dyn Backend, key: &'static str, value: &T) -> Result<(), StoreError> {
    let key = Key::fixed(key);
    let bytes = serde_json::to_vec(value).map_err(|source| super::BackendError::Encode {
        key: key.to_string(),
        source,
    })?;
    backend.put(&key, Bytes::from(bytes), PutMode::Overwrite, true)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn put(backend: &Arc<dyn Backend>, bytes: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, bytes);
        let body = Bytes::copy_from_slice(bytes);
        backend
            .put(&BlobStore::key(&d), body, PutMode::Overwrite, false)
            .expect("write");
        d
    }

    fn exists(backend: &Arc<dyn Backend>, d: &Digest) -> bool {
        backend.size(&BlobStore::key(d)).expect("stat").is_some()
    }

    fn setup() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let backend = crate::store::backend::fs::FsBackend::new(dir.path().to_owned(), tmp);
        (dir, Arc::new(backend))
    }

    fn set_served(u: &Usage, d: &Digest, secs: u64) {
        if let Some(e) = u.state().blobs.get_mut(d) {
            e.last_served = secs;
        }
    }

    #[test]
    fn the_least_recently_served_goes_first_and_pins_and_readers_stay() {
        let (_dir, blobs) = setup();
        let a = put(&blobs, &[1u8; 100]);
        let b = put(&blobs, &[2u8; 100]);
        let c = put(&blobs, &[3u8; 100]);
        let d = put(&blobs, &[4u8; 100]);
        let u = Arc::new(Usage::load(blobs.clone()).expect("load"));
        assert_eq!(u.total(), 400);
        for (digest, t) in [(&a, 10), (&b, 20), (&c, 30), (&d, 40)] {
            set_served(&u, digest, t);
        }
        u.pin(&a, "imported").expect("pin");
        let reading = u.hold(&b);

        // Cap 250: over by 150, low watermark 225: two blobs must go; the
        // oldest two (a pinned, b being read) stay, so c and d go.
        let evicted = u.evict_over(250, false).expect("evict");
        assert_eq!(evicted.blobs, vec![c.clone(), d.clone()]);
        assert_eq!(evicted.bytes, 200);
        assert_eq!(u.total(), 200);
        assert!(!exists(&blobs, &c));
        assert!(exists(&blobs, &a) && exists(&blobs, &b));

        drop(reading);
        let evicted = u.evict_over(150, true).expect("evict");
        assert_eq!(evicted.blobs, vec![b], "only the unpinned, unread one");
        assert_eq!(u.evict_over(1000, false).expect("no-op"), Evicted::default());
    }

    #[test]
    fn access_times_pins_and_counters_survive_a_restart() {
        let (_dir, blobs) = setup();
        let a = put(&blobs, b"alpha");
        let b = put(&blobs, b"bravo");
        {
            let u = Arc::new(Usage::load(blobs.clone()).expect("load"));
            set_served(&u, &a, 5);
            set_served(&u, &b, 0);
            u.served(&b);
            u.pin(&a, "air gap").expect("pin");
            u.flush().expect("flush");
        }
        let u = Usage::load(blobs.clone()).expect("reload");
        assert!(u.is_pinned(&a));
        let stats = u.stats();
        assert_eq!((stats.blobs, stats.bytes, stats.pinned, stats.hits), (2, 10, 1, 1));
        let order: Vec<u64> = [&a, &b]
            .iter()
            .map(|d| u.state().blobs.get(*d).map_or(0, |e| e.last_served))
            .collect();
        assert_eq!(order[0], 5);
        assert!(order[1] > 1_000_000_000_000, "b's serve was recorded: {order:?}");
    }

    #[test]
    fn a_commit_of_a_known_blob_is_not_counted_twice() {
        let (_dir, blobs) = setup();
        let u = Usage::load(blobs.clone()).expect("load");
        let d = Digest::of(Algorithm::Sha256, b"x");
        u.added(&d, 7, true);
        u.added(&d, 7, true);
        u.added(&d, 7, false);
        assert_eq!(u.total(), 7);
        u.forget(&d);
        assert_eq!(u.total(), 0);
    }
}
