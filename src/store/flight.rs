//! Single flight per digest: the first request for a missing blob leads its
//! download; concurrent requests follow the leader's spool instead of
//! fetching again.
//!
//! Leaders are bounded: each holds one of a fixed number of download slots
//! until its flight ends, so anonymous requests for many different cold
//! blobs cannot open unbounded upstream downloads and temp files. Followers
//! of a running download take no slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::spool::Spool;
use crate::oci::Digest;

type FlightMap<E> = Arc<Mutex<HashMap<Digest, Arc<Spool<E>>>>>;

/// The in-progress downloads.
#[derive(Debug)]
pub struct Flights<E> {
    map: FlightMap<E>,
    slots: Arc<Semaphore>,
    max_downloads: usize,
    /// How long a would-be leader waits for a slot.
    wait: Duration,
    /// Wakes waiting requests when a download starts: one waiting for a
    /// slot may now follow instead.
    started: Notify,
}

/// Every download slot stayed taken for the whole wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{max_downloads} blob downloads are already running and none finished within {waited:?}; retry later")]
pub struct Busy {
    pub max_downloads: usize,
    pub waited: Duration,
}

impl<E> Flights<E> {
    /// At most `max_downloads` leaders at once; a new one waits up to
    /// `wait` for a slot.
    pub fn new(max_downloads: usize, wait: Duration) -> Flights<E> {
        let max_downloads = max_downloads.clamp(1, Semaphore::MAX_PERMITS);
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            slots: Arc::new(Semaphore::new(max_downloads)),
            max_downloads,
            wait,
            started: Notify::new(),
        }
    }
}

/// The outcome of joining a flight.
pub enum Join<E: Clone + Send + Sync + 'static> {
    /// This caller must download; the flight ends when the `Lead` drops.
    Leader(Lead<E>),
    /// Someone is already downloading: read their spool.
    Follower(Arc<Spool<E>>),
}

/// The leader's handle. Dropping it ends the flight: later requests start a
/// new one (or find the committed blob). A spool still without a verdict is
/// marked abandoned so followers never wait forever.
pub struct Lead<E: Clone + Send + Sync + 'static> {
    spool: Arc<Spool<E>>,
    digest: Digest,
    map: FlightMap<E>,
    /// Released when the flight ends.
    _slot: OwnedSemaphorePermit,
}

impl<E: Clone + Send + Sync + 'static> Lead<E> {
    pub fn spool(&self) -> &Arc<Spool<E>> {
        &self.spool
    }
}

impl<E: Clone + Send + Sync + 'static> Drop for Lead<E> {
    fn drop(&mut self) {
        self.spool.abandon();
        if let Ok(mut map) = self.map.lock()
            && map.get(&self.digest).is_some_and(|s| Arc::ptr_eq(s, &self.spool))
        {
            map.remove(&self.digest);
        }
    }
}

impl<E: Clone + Send + Sync + 'static> Flights<E> {
    /// Follow the download of `digest` in progress, or lead a new one once
    /// a download slot is free (waiting at most the configured time).
    pub async fn join(&self, digest: &Digest) -> Result<Join<E>, Busy> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let slot = loop {
            // Registered before the check, so a download that starts in
            // between still wakes this request.
            let started = self.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            if let Some(spool) = joinable(&self.lock(), digest) {
                return Ok(Join::Follower(spool));
            }
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => break slot,
                    // The semaphore is never closed.
                    Err(_) => return Err(self.busy()),
                },
                () = &mut started => continue,
                () = tokio::time::sleep_until(deadline) => return Err(self.busy()),
            }
        };
        let mut map = self.lock();
        // Someone may have started this download while we waited: follow
        // it, and the unused slot goes back at once.
        if let Some(spool) = joinable(&map, digest) {
            return Ok(Join::Follower(spool));
        }
        let spool = Arc::new(Spool::new());
        map.insert(digest.clone(), spool.clone());
        drop(map);
        self.started.notify_waiters();
        Ok(Join::Leader(Lead {
            spool,
            digest: digest.clone(),
            map: self.map.clone(),
            _slot: slot,
        }))
    }

    /// A download slot for a download nothing follows (a pass-through
    /// while the store refuses writes), waiting at most the configured time;
    /// it is free again when the permit drops.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Busy> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            // Timed out, or closed (never: the semaphore is never closed).
            Ok(Err(_)) | Err(_) => Err(self.busy()),
        }
    }

    fn busy(&self) -> Busy {
        Busy {
            max_downloads: self.max_downloads,
            waited: self.wait,
        }
    }

    /// The map holds no invariant a panic could break half-way (single
    /// inserts and removes), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, Arc<Spool<E>>>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A download of `digest` worth following. One that already failed is not
/// joined: its leader may not have left the map yet, and a retry deserves a
/// fresh attempt.
fn joinable<E: Clone + Send + Sync + 'static>(
    map: &HashMap<Digest, Arc<Spool<E>>>,
    digest: &Digest,
) -> Option<Arc<Spool<E>>> {
    map.get(digest).filter(|spool| !spool.has_failed()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use crate::store::SpoolState;

    fn flights(max: usize) -> Flights<String> {
        Flights::new(max, Duration::from_millis(100))
    }

    async fn join(flights: &Flights<String>, d: &Digest) -> Join<String> {
        flights.join(d).await.expect("a free download slot")
    }

    #[tokio::test]
    async fn one_leader_many_followers_then_a_new_flight() {
        let flights = flights(4);
        let d = Digest::of(Algorithm::Sha256, b"x");
        let Join::Leader(lead) = join(&flights, &d).await else {
            panic!("first caller leads")
        };
        let Join::Follower(f) = join(&flights, &d).await else {
            panic!("second caller follows")
        };
        assert!(Arc::ptr_eq(&f, lead.spool()));
        let rx = f.subscribe();
        drop(lead);
        assert!(matches!(*rx.borrow(), SpoolState::Abandoned));
        assert!(matches!(join(&flights, &d).await, Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_failed_download_still_in_the_map_is_not_joined() {
        let flights = flights(4);
        let d = Digest::of(Algorithm::Sha256, b"x");
        let Join::Leader(lead) = join(&flights, &d).await else {
            panic!("first caller leads")
        };
        lead.spool().fail("upstream broke".into());
        // The failed leader has not dropped its handle yet.
        let Join::Leader(second) = join(&flights, &d).await else {
            panic!("a retry after a failure leads a new download")
        };
        assert!(!Arc::ptr_eq(second.spool(), lead.spool()));
        drop(lead); // must not remove the new flight
        assert!(matches!(join(&flights, &d).await, Join::Follower(_)));
    }

    #[tokio::test]
    async fn leaders_are_bounded_and_followers_are_free() {
        let flights = flights(2);
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| Digest::of(Algorithm::Sha256, x));
        let Join::Leader(lead_a) = join(&flights, &a).await else {
            panic!("a leads")
        };
        let Join::Leader(_lead_b) = join(&flights, &b).await else {
            panic!("b leads")
        };
        // Following a running download needs no slot.
        assert!(matches!(join(&flights, &a).await, Join::Follower(_)));
        let busy = flights.join(&c).await.err().expect("no third leader");
        assert_eq!(busy.max_downloads, 2);
        // A finished flight frees its slot for a waiting leader.
        let waiting = flights.join(&c);
        drop(lead_a);
        assert!(matches!(waiting.await, Ok(Join::Leader(_))));
    }

    /// Two requests for the same blob wait for the one slot; when the first
    /// gets it and starts the download, the second follows at once instead
    /// of waiting for a slot of its own (and failing with `Busy`).
    #[tokio::test]
    async fn a_request_waiting_for_a_slot_follows_a_download_that_starts() {
        let flights = Arc::new(Flights::<String>::new(1, Duration::from_secs(5)));
        let busy_digest = Digest::of(Algorithm::Sha256, b"busy");
        let d = Digest::of(Algorithm::Sha256, b"d");
        let Ok(Join::Leader(holder)) = flights.join(&busy_digest).await else {
            panic!("the only slot")
        };
        let spawn_join = |flights: Arc<Flights<String>>, d: Digest| {
            tokio::spawn(async move {
                match flights.join(&d).await {
                    Ok(Join::Leader(lead)) => {
                        // Lead for a while, holding the slot.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        drop(lead);
                        "leader"
                    }
                    Ok(Join::Follower(_)) => "follower",
                    Err(_) => "busy",
                }
            })
        };
        let first = spawn_join(flights.clone(), d.clone());
        let second = spawn_join(flights.clone(), d.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        drop(holder);
        let mut roles = [first.await.expect("task"), second.await.expect("task")];
        roles.sort_unstable();
        assert_eq!(roles, ["follower", "leader"]);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
