//! Single flight per digest: the first request for a missing blob leads its
//! download; concurrent requests follow the leader's spool instead of
//! fetching again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::spool::Spool;
use crate::oci::Digest;

type FlightMap<E> = Arc<Mutex<HashMap<Digest, Arc<Spool<E>>>>>;

/// The in-progress downloads.
#[derive(Debug)]
pub struct Flights<E> {
    map: FlightMap<E>,
}

impl<E> Default for Flights<E> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
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
    /// Lead a new download of `digest`, or follow the one in progress.
    pub fn join(&self, digest: &Digest) -> Join<E> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A download that already failed is not joined: its leader may not
        // have left the map yet, and a retry deserves a fresh attempt.
        if let Some(spool) = map.get(digest)
            && !spool.has_failed()
        {
            return Join::Follower(spool.clone());
        }
        let spool = Arc::new(Spool::new());
        map.insert(digest.clone(), spool.clone());
        Join::Leader(Lead {
            spool,
            digest: digest.clone(),
            map: self.map.clone(),
        })
    }

    /// The spool of an in-progress download, if any (for HEAD requests).
    pub fn current(&self, digest: &Digest) -> Option<Arc<Spool<E>>> {
        self.map.lock().ok().and_then(|m| m.get(digest).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use crate::store::SpoolState;

    #[test]
    fn one_leader_many_followers_then_a_new_flight() {
        let flights: Flights<String> = Flights::default();
        let d = Digest::of(Algorithm::Sha256, b"x");
        let Join::Leader(lead) = flights.join(&d) else {
            panic!("first caller leads")
        };
        let Join::Follower(f) = flights.join(&d) else {
            panic!("second caller follows")
        };
        assert!(Arc::ptr_eq(&f, lead.spool()));
        let rx = f.subscribe();
        drop(lead);
        assert!(matches!(*rx.borrow(), SpoolState::Abandoned));
        assert!(matches!(flights.join(&d), Join::Leader(_)));
    }

    #[test]
    fn a_failed_download_still_in_the_map_is_not_joined() {
        let flights: Flights<String> = Flights::default();
        let d = Digest::of(Algorithm::Sha256, b"x");
        let Join::Leader(lead) = flights.join(&d) else {
            panic!("first caller leads")
        };
        lead.spool().fail("upstream broke".into());
        // The failed leader has not dropped its handle yet.
        let Join::Leader(second) = flights.join(&d) else {
            panic!("a retry after a failure leads a new download")
        };
        assert!(!Arc::ptr_eq(second.spool(), lead.spool()));
        drop(lead); // must not remove the new flight
        assert!(matches!(flights.join(&d), Join::Follower(_)));
    }
}
