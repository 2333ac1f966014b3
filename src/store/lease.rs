//! Download leases: on a store shared by replicas, the replica that creates
//! `leases/<alg>/<hex>` (a conditional create: S3 `If-None-Match: *`) is the
//! one that fetches the blob from the upstream; the others follow by
//! waiting for the committed object. The lease names its holder and an
//! expiry; the holder renews it while downloading (`If-Match` on the
//! version it wrote), so a replica killed mid-download blocks the blob for
//! at most one expiry, after which another replica takes the lease over
//! (again `If-Match`, on the expired version it read: one winner).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::backend::{Backend, Key, PutMode, Version, Written};
use crate::oci::Digest;

/// The lease object's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    holder: String,
    /// Unix milliseconds.
    expires: u64,
}

/// What trying to take a lease found.
#[derive(Debug)]
pub enum LeaseState {
    /// This replica holds it: download, then release.
    Acquired(Lease),
    /// Another replica holds it until `expires` (Unix ms): follow.
    HeldElsewhere { holder: String, expires: u64 },
}

/// A held lease. Renew it more often than its time to live; release it
/// after the commit (or let it expire after a crash).
#[derive(Debug)]
pub struct Lease {
    backend: Arc<dyn Backend>,
    key: Key,
    holder: String,
    ttl: Duration,
    version: Mutex<Version>,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn body(holder: &str, ttl: Duration) -> Bytes {
    let expires = now_millis().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let record = Record {
        holder: holder.to_owned(),
        expires,
    };
    Bytes::from(serde_json::to_vec(&record).unwrap_or_default())
}

fn key(digest: &Digest) -> Key {
    Key::content("leases", digest)
}

/// Attempts at the conditional write before reporting the lease as held
/// (each conflict means another replica just wrote it).
const ATTEMPTS: usize = 4;

/// Take the lease of `digest` for `holder`, or report who holds it.
pub(super) fn acquire(
    backend: &Arc<dyn Backend>,
    digest: &Digest,
    holder: &str,
    ttl: Duration,
) -> Result<LeaseState, StoreError> {
    let key = key(digest);
    for _ in 0..ATTEMPTS {
        let current = backend.get(&key)?;
        let mode = match &current {
            None => PutMode::Create,
            Some(object) => match serde_json::from_slice::<Record>(&object.bytes) {
                // Live and someone else's: follow.
                Ok(r) if r.holder != holder && r.expires > now_millis() => {
                    return Ok(LeaseState::HeldElsewhere {
                        holder: r.holder,
                        expires: r.expires,
                    });
                }
                // Expired, ours from before, or unreadable: take it over.
                _ => PutMode::Update(object.version.clone()),
            },
        };
        if backend.put(&key, body(holder, ttl), mode, false)? == Written::Conflict {
            continue;
        }
        // Read back the version written (for renewals), and make sure the
        // object is ours: a store whose conditional writes are not atomic
        // can let two creates both succeed, and the later one wins.
        let Some(object) = backend.get(&key)? else { continue };
        match serde_json::from_slice::<Record>(&object.bytes) {
            Ok(r) if r.holder == holder => {
                return Ok(LeaseState::Acquired(Lease {
                    backend: backend.clone(),
                    key,
                    holder: holder.to_owned(),
                    ttl,
                    version: Mutex::new(object.version),
                }));
            }
            Ok(r) => {
                return Ok(LeaseState::HeldElsewhere {
                    holder: r.holder,
                    expires: r.expires,
                });
            }
            Err(_) => {}
        }
    }
    // Contended every time: behave as a follower for a while.
    Ok(LeaseState::HeldElsewhere {
        holder: String::from("(contended)"),
        expires: now_millis().saturating_add(1_000),
    })
}

impl Lease {
    /// Push the expiry out by the time to live. `false` if the lease was
    /// taken over (this replica stalled past its expiry): the download goes
    /// on, and at worst the blob is fetched twice.
    pub fn renew(&self) -> Result<bool, StoreError> {
        let version = self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let written = self
            .backend
            .put(&self.key, body(&self.holder, self.ttl), PutMode::Update(version), false)?;
        if written == Written::Conflict {
            return Ok(false);
        }
        if let Some(object) = self.backend.get(&self.key)? {
            *self.version.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = object.version;
        }
        Ok(true)
    }

    /// The download is over (committed or failed): let others lead.
    pub fn release(&self) -> Result<(), StoreError> {
        let still_ours = self
            .backend
            .get(&self.key)?
            .and_then(|o| serde_json::from_slice::<Record>(&o.bytes).ok())
            .is_some_and(|r| r.holder == self.holder);
        if still_ours {
            self.backend.delete(&self.key)?;
        }
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
