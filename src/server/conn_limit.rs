//! Caps on open client connections, in total and per client address, so
//! that anonymous clients (slowloris, connection floods) cannot exhaust
//! file descriptors or memory. A connection over a cap is closed at once.
//! A client is an IPv4 address or an IPv6 /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::telemetry::metrics::ConnectionRefusal as Refusal;

/// The open-connection counters.
#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_client: usize,
}

/// Held for as long as a connection is open; dropping it frees the slots.
#[derive(Debug)]
pub struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    client: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_client: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            max_per_client,
        }
    }

    /// A slot for a new connection from `client`, or which cap is reached.
    pub fn admit(&self, client: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let client = client_key(client);
        let total = self.total.clone().try_acquire_owned().map_err(|_| Refusal::Global)?;
        let mut counts = lock(&self.per_client);
        let held = counts.entry(client).or_insert(0);
        if *held >= self.max_per_client {
            return Err(Refusal::PerClient);
        }
        *held += 1;
        Ok(ConnectionSlot {
            _total: total,
            client,
            per_client: self.per_client.clone(),
        })
    }

    /// Connections open from `client`.
    #[cfg(test)]
    pub fn open_from(&self, client: IpAddr) -> usize {
        lock(&self.per_client).get(&client_key(client)).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_client);
        if let Some(held) = counts.get_mut(&self.client) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                // No entry outlives its last connection: the map stays as
                // small as the set of connected clients.
                counts.remove(&self.client);
            }
        }
    }
}

/// Who a connection counts against: an IPv4 address (also when seen as
/// IPv4-mapped on a dual-stack socket), or an IPv6 /64, the smallest block
/// one subscriber is usually given (and how Docker Hub counts anonymous
/// pulls): per-address counting would let one IPv6 host open 2^64 times the
/// cap.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(std::net::Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// The counters stay consistent under a panic elsewhere (each update is a
/// single increment or decrement), so a poisoned lock is still usable.
fn lock(m: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn per_client_cap_leaves_other_clients_alone() {
        let limiter = ConnectionLimiter::new(10, 2);
        let a1 = limiter.admit(A).expect("first");
        let _a2 = limiter.admit(A).expect("second");
        assert_eq!(limiter.admit(A).err(), Some(Refusal::PerClient));
        let _b1 = limiter.admit(B).expect("another client is not affected");
        drop(a1);
        assert_eq!(limiter.open_from(A), 1);
        let _a3 = limiter.admit(A).expect("a closed connection frees its slot");
    }

    #[test]
    fn global_cap_and_release() {
        let limiter = ConnectionLimiter::new(2, 5);
        let a = limiter.admit(A).expect("first");
        let _b = limiter.admit(B).expect("second");
        assert_eq!(limiter.admit(A).err(), Some(Refusal::Global));
        // A refusal by the global cap takes no per-client slot.
        assert_eq!(limiter.open_from(A), 1);
        drop(a);
        assert_eq!(limiter.open_from(A), 0);
        assert!(limiter.admit(A).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_client() {
        let limiter = ConnectionLimiter::new(10, 1);
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let _a = limiter.admit(ip("2001:db8:1:2::1")).expect("first");
        assert_eq!(
            limiter.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::PerClient)
        );
        assert!(limiter.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _a = limiter.admit(A).expect("first");
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(limiter.admit(mapped).err(), Some(Refusal::PerClient));
    }
}
