//! The registry watch's state on disk: the last observation of each watched
//! tag (one small JSON file per watched repository) and one event queue per
//! sink (one file per event, named by sequence number), so a restart loses
//! neither what was seen nor what was not yet delivered.
//!
//! Layout: `watch/observations/<host>/<repo>/_watch.json`,
//! `watch/queues/<sink>/<seq:020>.json`. Paths come from validated types
//! and configured sink names only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

#[derive(Debug)]
pub struct WatchStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl WatchStore {
    pub(super) fn new(root: PathBuf, tmp: PathBuf) -> WatchStore {
        WatchStore { root, tmp }
    }

    fn observations_path(&self, host: &RegistryHost, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join("observations").join(host.as_str());
        for c in repo.components() {
            p.push(c);
        }
        p.join("_watch.json")
    }

    /// The last observations of `repo`'s watched tags (empty when never
    /// watched; an unreadable file is reported, a corrupt one is treated as
    /// never watched and logged).
    pub fn observations(&self, host: &RegistryHost, repo: &RepoName) -> Result<Observations, StoreError> {
        let path = self.observations_path(host, repo);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "watch observations unreadable; starting afresh");
                Observations::new()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Observations::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Replace `repo`'s observations (atomically).
    pub fn put_observations(&self, host: &RegistryHost, repo: &RepoName, obs: &Observations) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(obs).map_err(|e| StoreError::Io {
            action: "encode",
            path: self.observations_path(host, repo),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.tmp, &self.observations_path(host, repo), &bytes)
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
        WatchStore::new(dir.join("watch"), tmp)
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
