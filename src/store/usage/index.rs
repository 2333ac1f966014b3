//! `index/usage.json` and `index/pins.json`: their stored form, the merge
//! of a replica's records into what the store holds, and the reads and
//! conditional writes both go through.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::TOMBSTONE_KEEP;
use crate::oci::Digest;
use crate::store::StoreError;
use crate::store::backend::{Backend, BackendError, Key, PutMode, Version, Written};

pub(super) const USAGE: &str = "index/usage.json";
pub(super) const PINS: &str = "index/pins.json";

/// `index/usage.json`. Files written before tombstones have none.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UsageFile {
    pub(super) last_served: BTreeMap<String, u64>,
    pub(super) hits: u64,
    pub(super) downloads: u64,
    /// Evicted or quarantined blobs and when (Unix ms).
    #[serde(default)]
    pub(super) removed: BTreeMap<String, u64>,
}

/// What one flush sends: this replica's view at the time of the snapshot.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) served: HashMap<Digest, u64>,
    pub(super) removed: HashMap<Digest, u64>,
    pub(super) hits: u64,
    pub(super) downloads: u64,
    pub(super) generation: u64,
}

/// The stored index merged with a replica's snapshot at `now`: per digest
/// the latest served time; removals (kept [`TOMBSTONE_KEEP`]) drop entries
/// not served since; entries of blobs the replica does not know that
/// nobody served since it listed the store (`listed_at`) are dropped (the
/// blob was not there: this keeps the index bounded); counters add the
/// replica's increments.
pub(super) fn merge(stored: UsageFile, snapshot: &Snapshot, now: u64, listed_at: u64) -> UsageFile {
    let mut removed = stored.removed;
    for (d, t) in &snapshot.removed {
        let at = removed.entry(d.to_string()).or_insert(*t);
        *at = (*at).max(*t);
    }
    removed.retain(|_, t| now.saturating_sub(*t) < TOMBSTONE_KEEP);
    let mine: HashMap<String, u64> = snapshot.served.iter().map(|(d, t)| (d.to_string(), *t)).collect();
    let mut last_served: BTreeMap<String, u64> = stored
        .last_served
        .into_iter()
        .filter(|(d, t)| mine.contains_key(d) || *t >= listed_at)
        .collect();
    for (d, t) in mine {
        let at = last_served.entry(d).or_insert(t);
        *at = (*at).max(t);
    }
    last_served.retain(|d, t| removed.get(d).is_none_or(|r| *r < *t));
    UsageFile {
        last_served,
        hits: stored.hits.saturating_add(snapshot.hits),
        downloads: stored.downloads.saturating_add(snapshot.downloads),
        removed,
    }
}

/// Conditional writes of one index tried before giving up: each conflict
/// means another replica's write just landed.
const ATTEMPTS: u32 = 12;

/// Run `attempt` (read, change, conditional write of `key`) until its write
/// lands, pausing after each conflict; `Contended` if it never does.
pub(super) fn until_written(
    key: &'static str,
    mut attempt: impl FnMut() -> Result<Written, StoreError>,
) -> Result<(), StoreError> {
    for n in 0..ATTEMPTS {
        if attempt()? == Written::Done {
            return Ok(());
        }
        backoff(n);
    }
    Err(BackendError::Contended {
        key: key.to_owned(),
        attempts: ATTEMPTS,
    }
    .into())
}

/// A short random pause after a lost conditional write, growing with the
/// attempt, so racing replicas spread out.
fn backoff(attempt: u32) {
    let base = 5u64 << attempt.min(6);
    std::thread::sleep(Duration::from_millis(base + fastrand::u64(..=base)));
}

/// A stored record (`None` if it does not parse) and its version.
pub(super) type Stored<T> = Option<(Option<T>, Version)>;

/// A stored index and its version; `Some((None, version))` when it does not
/// parse. The index is written atomically, so one that does not parse was
/// written by another version: it is replaced rather than refused (it holds
/// access times and pins of content that can be fetched again).
pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    backend: &dyn Backend,
    key: &'static str,
) -> Result<Stored<T>, StoreError> {
    let key = Key::fixed(key);
    Ok(backend
        .get(&key)?
        .map(|o| (serde_json::from_slice(&o.bytes).ok(), o.version)))
}

/// Pins by digest, and the version they were read at.
pub(super) type Pins = (BTreeMap<Digest, String>, Version);

/// The stored pins (entries whose digest does not parse are dropped).
pub(super) fn read_pins(backend: &dyn Backend) -> Result<Option<Pins>, StoreError> {
    Ok(
        read_json::<BTreeMap<String, String>>(backend, PINS)?.map(|(pins, version)| {
            let pins = pins
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(d, why)| d.parse().ok().map(|d| (d, why)))
                .collect();
            (pins, version)
        }),
    )
}

pub(super) fn write_json<T: Serialize>(
    backend: &dyn Backend,
    key: &Key,
    value: &T,
    mode: PutMode,
) -> Result<Written, StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|source| BackendError::Encode {
        key: key.to_string(),
        source,
    })?;
    backend.put(key, Bytes::from(bytes), mode, true)
}
