//! Replicas that know each other (`cluster.peers`): for every blob digest and
//! every tag, rendezvous hashing over the shared peer list names one leading
//! replica. The leader downloads a cold blob (once, under the bucket's lease)
//! and the others stream it from the leader while it arrives instead of
//! waiting for the committed object; the leader's upstream `HEAD` resolves a
//! tag for every replica asking at the same time.
//!
//! A peer coordinates; it is never trusted for content: a streamed blob is
//! hashed again by the follower, and a tag's digest is fetched and verified
//! by digest like an upstream's answer. When the leader cannot be reached,
//! or its peer list differs (it answers `421`), the replica falls back to
//! the bucket's lease or its own `HEAD`.
//!
//! Imports: `oci`, `config`, `upstream` (the blob body and HEAD types).

pub mod client;
pub mod ring;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

pub use client::{PeerClient, PeerError, TagAnswer};

use crate::config::{Config, PeerAddr};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

/// Who leads one blob or tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader<'a> {
    /// This replica.
    Me,
    /// Another replica.
    Peer(&'a PeerAddr),
}

/// Why the cluster could not be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cluster.peers: this replica is not in the list ({listen} matches none of {peers}); set `cluster.self` to its entry"
    )]
    SelfNotFound { listen: SocketAddr, peers: String },
    #[error("cluster.peers: {listen} matches several entries ({matches}); set `cluster.self` to this replica's")]
    SelfAmbiguous { listen: SocketAddr, matches: String },
    #[error("cluster.caFile: {0}")]
    Client(String),
}

/// The peer list, this replica's place in it, and the client to the others.
#[derive(Debug)]
pub struct Cluster {
    peers: Vec<PeerAddr>,
    /// `peers` as the ring hashes them.
    names: Vec<String>,
    me: usize,
    client: PeerClient,
    key: crate::config::Secret,
}

impl Cluster {
    /// The cluster of `config` (`None` without `cluster:`). Finds this
    /// replica in the list by `cluster.self`, or by the listen address.
    pub fn from_config(config: &Config) -> Result<Option<Cluster>, ClusterError> {
        let Some(c) = &config.cluster else {
            return Ok(None);
        };
        let me = match &c.self_peer {
            Some(p) => c.peers.iter().position(|q| q == p),
            None => None,
        };
        let me = match me {
            Some(i) => i,
            None => find_self(&c.peers, config.listen)?,
        };
        let client = PeerClient::new(
            c.key.clone(),
            config.tls.is_some(),
            c.ca_file.as_deref(),
            config.upstream_policy.body_idle_timeout,
        )
        .map_err(ClusterError::Client)?;
        Ok(Some(Cluster {
            names: c.peers.iter().map(ToString::to_string).collect(),
            peers: c.peers.clone(),
            me,
            client,
            key: c.key.clone(),
        }))
    }

    pub fn me(&self) -> &PeerAddr {
        &self.peers[self.me]
    }

    pub fn peers(&self) -> &[PeerAddr] {
        &self.peers
    }

    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// Whether a request carries the cluster key.
    pub fn authorized(&self, header: Option<&http::HeaderValue>) -> bool {
        client::authorized(&self.key, header)
    }

    fn leader(&self, key: &[u8]) -> Leader<'_> {
        match ring::leader(&self.names, key) {
            Some(i) if i != self.me => Leader::Peer(&self.peers[i]),
            _ => Leader::Me,
        }
    }

    /// The replica that downloads `digest` for all.
    pub fn blob_leader(&self, digest: &Digest) -> Leader<'_> {
        self.leader(&blob_key(digest))
    }

    /// The replica that resolves `tag` of `repo` on `upstream` for all.
    pub fn tag_leader(&self, upstream: &RegistryHost, repo: &RepoName, tag: &Tag) -> Leader<'_> {
        self.leader(format!("tag\0{upstream}\0{repo}\0{tag}").as_bytes())
    }
}

/// What the ring hashes for a blob (public so that operators' tools and
/// tests can tell which replica leads a digest: [`ring::leader`] over the
/// sorted peer list).
pub fn blob_key(digest: &Digest) -> Vec<u8> {
    format!("blob\0{digest}").into_bytes()
}

impl Cluster {}

/// This replica's entry: the one whose port is the listen port and whose
/// host resolves to the listen address (or, listening on every address, to
/// an address of this machine).
fn find_self(peers: &[PeerAddr], listen: SocketAddr) -> Result<usize, ClusterError> {
    let matches: Vec<usize> = peers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.port() == listen.port() && resolves_here(p, listen.ip()))
        .map(|(i, _)| i)
        .collect();
    let list = |ix: &mut dyn Iterator<Item = &PeerAddr>| ix.map(ToString::to_string).collect::<Vec<_>>().join(", ");
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(ClusterError::SelfNotFound {
            listen,
            peers: list(&mut peers.iter()),
        }),
        many => Err(ClusterError::SelfAmbiguous {
            listen,
            matches: list(&mut many.iter().map(|&i| &peers[i])),
        }),
    }
}

fn resolves_here(peer: &PeerAddr, listen: IpAddr) -> bool {
    let Ok(addrs) = (peer.host(), peer.port()).to_socket_addrs() else {
        return false;
    };
    addrs.map(|a| a.ip()).any(|ip| {
        if listen.is_unspecified() {
            is_local(ip)
        } else {
            ip == listen
        }
    })
}

/// An address of this machine: one a socket can bind to.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(list: &[&str]) -> Vec<PeerAddr> {
        list.iter().map(|p| p.parse().expect("peer")).collect()
    }

    #[test]
    fn this_replica_is_found_by_its_listen_address() {
        let p = peers(&["127.0.0.1:5000", "127.0.0.1:5001", "192.0.2.7:5000"]);
        let listen: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
        assert_eq!(find_self(&p, listen).ok(), Some(1));
        // Listening everywhere: the entry on a local address, not the
        // documentation address of another machine.
        let any: SocketAddr = "0.0.0.0:5000".parse().expect("addr");
        assert_eq!(find_self(&p, any).ok(), Some(0));
        let none: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
        assert!(matches!(find_self(&p, none), Err(ClusterError::SelfNotFound { .. })));
        let twice = peers(&["127.0.0.1:5000", "localhost:5000"]);
        assert!(matches!(
            find_self(&twice, "0.0.0.0:5000".parse().expect("addr")),
            Err(ClusterError::SelfAmbiguous { .. })
        ));
    }
}
