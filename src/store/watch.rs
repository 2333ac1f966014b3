//! The registry watch's state: the last observation of each watched tag
//! (one small JSON record per watched repository, in the store's backend,
//! so replicas on one bucket share it) and one event queue per sink (local
//! files, one per event, named by sequence number), so a restart loses
//! neither what was seen nor what was not yet delivered.
//!
//! Layout: `watch/observations/<host>/<repo>/_watch.json` (a backend key:
//! on the filesystem backend, the path under the data directory earlier
//! versions wrote), `watch/queues/<sink>/<seq:020>.json` (local). Keys and
//! paths come from validated types and configured sink names only.
//!
//! Replicas agree through conditional writes: an observation record is
//! created only if absent and replaced only at the version read
//! ([`WatchStore::update_observations`]); the watcher whose write succeeds
//! is the one that reports the change (see `watch::round`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::{Backend, BackendError, Key, PutMode, Version, Written};
use super::{StoreError, io_err, write_atomic};
use crate::oci::{Digest, RegistryHost, RepoName};

/// What a tag pointed to when last checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// `None`: the tag did not exist.
    pub digest: Option<Digest>,
    /// `allowed`, `denied` or `undecided` for `digest`.
    pub verdict: Option<String>,
    /// Unix seconds of the last verification of `digest`.
    pub verified_at: u64,
}

/// Observations of one repository's tags, by tag.
pub type Observations = BTreeMap<String, Observation>;

/// A repository's observations as read, with the version a conditional
/// update must name (`None`: no record yet, so the update creates it).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub observations: Observations,
    version: Option<Version>,
}

pub struct WatchStore {
    backend: Arc<dyn Backend>,
    /// Local directory of the queues.
    root: PathBuf,
    tmp: PathBuf,
}

impl std::fmt::Debug for WatchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl WatchStore {
    pub(super) fn new(backend: Arc<dyn Backend>, root: PathBuf, tmp: PathBuf) -> WatchStore {
        WatchStore { backend, root, tmp }
    }

    /// `watch/observations/<host>/<repo>/_watch.json`: repository
    /// components start with an alphanumeric, so `_watch.json` never
    /// collides with a nested repository.
    fn observations_key(host: &RegistryHost, repo: &RepoName) -> Result<Key, StoreError> {
        Key::new(
            ["watch", "observations", host.as_str()]
                .into_iter()
                .chain(repo.components())
                .chain(std::iter::once("_watch.json")),
        )
        .ok_or_else(|| BackendError::InvalidName(format!("{host}/{repo}")).into())
    }

    /// The last observations of `repo`'s watched tags (empty when never
    /// watched; an unreadable record is reported, a corrupt one is treated
    /// as never watched and logged).
    pub fn observations(&self, host: &RegistryHost, repo: &RepoName) -> Result<Observations, StoreError> {
        Ok(self.read_observations(host, repo)?.observations)
    }

    /// [`Self::observations`] with the version to update.
    pub fn read_observations(&self, host: &RegistryHost, repo: &RepoName) -> Result<Recorded, StoreError> {
        let key = Self::observations_key(host, repo)?;
        let Some(object) = self.backend.get(&key)? else {
            return Ok(Recorded::default());
        };
        let observations = serde_json::from_slice(&object.bytes).unwrap_or_else(|e| {
            tracing::warn!(%key, error = %e, "watch observations unreadable; starting afresh");
            Observations::new()
        });
        // A corrupt record keeps its version, so the next update replaces it.
        Ok(Recorded {
            observations,
            version: Some(object.version),
        })
    }

    /// Replace `repo`'s observations with `obs` if the record is still the
    /// one `read` came from (created if `read` found none). `Conflict`:
    /// another writer (a replica) changed it meanwhile; nothing was written.
    pub fn update_observations(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        read: &Recorded,
        obs: &Observations,
    ) -> Result<Written, StoreError> {
        let mode = match &read.version {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.clone()),
        };
        self.write(host, repo, obs, mode)
    }

    /// Replace `repo`'s observations unconditionally.
    pub fn put_observations(&self, host: &RegistryHost, repo: &RepoName, obs: &Observations) -> Result<(), StoreError> {
        self.write(host, repo, obs, PutMode::Overwrite).map(drop)
    }

    fn write(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        obs: &Observations,
        mode: PutMode,
    ) -> Result<Written, StoreError> {
        let key = Self::observations_key(host, repo)?;
        let bytes = serde_json::to_vec(obs).map_err(|source| BackendError::Encode {
            key: key.to_string(),
            source,
        })?;
        self.backend.put(&key, Bytes::from(bytes), mode, true)
    }

    /// The queue of sink `name` (a configured name: `[A-Za-z0-9_-]{1,64}`).
    pub fn queue(&self, name: &str) -> Result<EventQueue, StoreError> {
        EventQueue::open(self.root.join("queues").join(name), self.tmp.clone())
    }
}

/// A durable FIFO of encoded events: pushed (fsynced) before delivery is
/// attempted, removed only after the receiver acknowledged it.
#[derive(Debug)]
pub struct EventQueue {
    dir: PathBuf,
    tmp: PathBuf,
    /// Sequence numbers present, oldest first, and the next one to use.
    state: Mutex<(std::collections::VecDeque<u64>, u64)>,
}

impl EventQueue {
    fn open(dir: PathBuf, tmp: PathBuf) -> Result<EventQueue, StoreError> {
        std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let mut seqs: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io_err("list", &dir))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(sequence_of))
            .collect();
        seqs.sort_unstable();
        let next = seqs.last().map_or(0, |s| s + 1);
        Ok(EventQueue {
            dir,
            tmp,
            state: Mutex::new((seqs.into(), next)),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<u64>, u64)> {
        // A panic while holding the lock leaves consistent data (each step
        // completes before the state changes), so a poisoned lock is used.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Append `event`, durably. Returns the queue's length.
    pub fn push(&self, event: &[u8]) -> Result<usize, StoreError> {
        let mut state = self.locked();
        let seq = state.1;
        write_atomic(&self.tmp, &self.path(seq), event)?;
        state.0.push_back(seq);
        state.1 = seq + 1;
        Ok(state.0.len())
    }

    /// The oldest event not yet removed: its sequence number and bytes.
    pub fn front(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(seq) = self.locked().0.front().copied() else {
            return Ok(None);
        };
        let path = self.path(seq);
        std::fs::read(&path)
            .map(|b| Some((seq, b)))
            .map_err(io_err("read", &path))
    }

    /// Remove event `seq` after its delivery.
    pub fn remove(&self, seq: u64) -> Result<(), StoreError> {
        let path = self.path(seq);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        self.locked().0.retain(|s| *s != seq);
        Ok(())
    }

    /// Set event `seq` aside as `<seq>.json.unreadable` (kept for
    /// inspection) so that the events behind it can be delivered.
    pub fn quarantine(&self, seq: u64) -> Result<PathBuf, StoreError> {
        let path = self.path(seq);
        let aside = path.with_extension("json.unreadable");
        std::fs::rename(&path, &aside).map_err(io_err("rename", &path))?;
        self.locked().0.retain(|s| *s != seq);
        Ok(aside)
    }

    pub fn len(&self) -> usize {
        self.locked().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn queue_dir(root: &Path, name: &str) -> PathBuf {
        root.join("queues").join(name)
    }

    fn store(dir: &Path) -> WatchStore {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let backend = crate::store::backend::fs::FsBackend::new(dir.to_owned(), tmp.clone());
        WatchStore::new(Arc::new(backend), dir.join("watch"), tmp)
    }

    /// Two replicas' watch stores on one in-memory bucket (each with its
    /// own local directory, as replicas have).
    fn replicas_on_memory(a: &Path, b: &Path) -> (WatchStore, WatchStore) {
        let bucket = Arc::new(object_store::memory::InMemory::new());
        let open = |dir: &Path| {
            let tmp = dir.join("tmp");
            std::fs::create_dir_all(&tmp).expect("tmp");
            let backend = crate::store::backend::object::ObjectBackend::new(
                bucket.clone(),
                "cache",
                tmp.clone(),
                "memory".into(),
            )
            .expect("backend");
            WatchStore::new(Arc::new(backend), dir.join("watch"), tmp)
        };
        (open(a), open(b))
    }

    fn ids() -> (RegistryHost, RepoName) {
        ("r.test".parse().expect("host"), "a/b".parse().expect("repo"))
    }

    fn seen(tag: &str, byte: u8) -> Observations {
        let mut obs = Observations::new();
        obs.insert(
            tag.into(),
            Observation {
                digest: Some(Digest::of(crate::oci::Algorithm::Sha256, &[byte])),
                verdict: Some("allowed".into()),
                verified_at: u64::from(byte),
            },
        );
        obs
    }

    /// Both replicas read the same record and write: exactly one write
    /// lands, the other is told and finds the winner's observations.
    fn one_of_two_interleaved_updates_wins(a: &WatchStore, b: &WatchStore) {
        let (h, r) = ids();
        let (read_a, read_b) = (
            a.read_observations(&h, &r).expect("read"),
            b.read_observations(&h, &r).expect("read"),
        );
        assert_eq!(
            a.update_observations(&h, &r, &read_a, &seen("stable", 1))
                .expect("create"),
            Written::Done
        );
        assert_eq!(
            b.update_observations(&h, &r, &read_b, &seen("stable", 2))
                .expect("create"),
            Written::Conflict,
            "a second create loses"
        );
        let fresh_b = b.read_observations(&h, &r).expect("reread");
        assert_eq!(fresh_b.observations, seen("stable", 1), "the loser reads the winner's");
        // Next change: both hold the same version; one update wins again.
        let fresh_a = a.read_observations(&h, &r).expect("read");
        assert_eq!(
            b.update_observations(&h, &r, &fresh_b, &seen("stable", 3))
                .expect("update"),
            Written::Done
        );
        assert_eq!(
            a.update_observations(&h, &r, &fresh_a, &seen("stable", 4))
                .expect("update"),
            Written::Conflict,
            "an update at a stale version loses"
        );
        assert_eq!(a.observations(&h, &r).expect("read"), seen("stable", 3));
    }

    #[test]
    fn interleaved_updates_on_a_shared_bucket_have_one_winner() {
        let (da, db) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (a, b) = replicas_on_memory(da.path(), db.path());
        one_of_two_interleaved_updates_wins(&a, &b);
        // The queues stay each replica's own.
        a.queue("soc").expect("queue").push(b"e").expect("push");
        assert!(b.queue("soc").expect("queue").is_empty());
    }

    #[test]
    fn interleaved_updates_on_one_data_directory_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        one_of_two_interleaved_updates_wins(&store(dir.path()), &store(dir.path()));
    }

    /// The filesystem backend keeps the path earlier versions wrote, so an
    /// existing data directory's observations are read (and updated).
    #[test]
    fn observations_written_by_earlier_versions_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, r) = ids();
        let path = dir.path().join("watch/observations/r.test/a/b/_watch.json");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, serde_json::to_vec(&seen("stable", 9)).expect("encode")).expect("write");
        let s = store(dir.path());
        let read = s.read_observations(&h, &r).expect("read");
        assert_eq!(read.observations, seen("stable", 9));
        assert_eq!(
            s.update_observations(&h, &r, &read, &seen("stable", 10))
                .expect("update"),
            Written::Done
        );
        let on_disk: Observations = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("decode");
        assert_eq!(on_disk, seen("stable", 10));
    }

    /// A corrupt record reads as never watched, and is replaced by the
    /// next update (its version is kept).
    #[test]
    fn a_corrupt_record_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, r) = ids();
        let path = dir.path().join("watch/observations/r.test/a/b/_watch.json");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"{not json").expect("write");
        let s = store(dir.path());
        let read = s.read_observations(&h, &r).expect("read");
        assert!(read.observations.is_empty());
        assert_eq!(
            s.update_observations(&h, &r, &read, &seen("stable", 1))
                .expect("update"),
            Written::Done
        );
        assert_eq!(s.observations(&h, &r).expect("read"), seen("stable", 1));
    }

    #[test]
    fn queue_is_fifo_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let q = s.queue("hook").expect("queue");
        for i in 0..3 {
            q.push(format!("e{i}").as_bytes()).expect("push");
        }
        let (seq, bytes) = q.front().expect("read").expect("front");
        assert_eq!(bytes, b"e0");
        q.remove(seq).expect("remove");
        drop(q);
        let q = s.queue("hook").expect("reopen");
        assert_eq!(q.len(), 2);
        assert_eq!(q.front().expect("read").expect("front").1, b"e1");
        assert_eq!(q.push(b"e3").expect("push"), 3);
        assert!(
            queue_dir(&dir.path().join("watch"), "hook")
                .join(format!("{:020}.json", 3))
                .is_file()
        );
        let aside = q.quarantine(1).expect("quarantine");
        assert!(aside.ends_with(format!("{:020}.json.unreadable", 1)), "{aside:?}");
        assert_eq!(q.front().expect("read").expect("front").1, b"e2");
        drop(q);
        assert_eq!(s.queue("hook").expect("reopen").len(), 2, "set aside, not queued again");
    }

    #[test]
    fn observations_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let (h, r): (RegistryHost, RepoName) = ("r.test".parse().expect("host"), "a/b".parse().expect("repo"));
        assert!(s.observations(&h, &r).expect("read").is_empty());
        let mut obs = Observations::new();
        obs.insert(
            "stable".into(),
            Observation {
                digest: Some(Digest::of(crate::oci::Algorithm::Sha256, b"x")),
                verdict: Some("allowed".into()),
                verified_at: 7,
            },
        );
        s.put_observations(&h, &r, &obs).expect("write");
        assert_eq!(s.observations(&h, &r).expect("read"), obs);
    }
}
