//! `cluster:`: the replicas that share one bucket and know each other.
//!
//! ```yaml
//! cluster:
//!   peers: [10.0.0.1:5000, 10.0.0.2:5000, 10.0.0.3:5000]  # the same list on every replica
//!   keyFile: /etc/portcullis/cluster.key                   # or keyEnv: a shared secret
//!   self: 10.0.0.1:5000        # optional: found from the listen address otherwise
//!   caFile: /etc/portcullis/ca.pem  # optional: peers' TLS roots (listener with `tls:`)
//! ```
//!
//! Peers stream blobs to one another by digest, so the internal endpoint
//! must not be open: a key shared by the replicas is required, never inline
//! in the YAML.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::secret::{Secret, one_secret};

/// `cluster:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCluster {
    /// Every replica's `host:port` (its registry listener), itself included.
    pub peers: Vec<String>,
    /// This replica's entry of `peers`, when the listen address cannot tell.
    #[serde(rename = "self")]
    pub self_peer: Option<String>,
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// One replica's registry listener, as the peer list names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    host: String,
    port: u16,
}

impl PeerAddr {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    /// `host:port` or `[v6]:port`; the host is a DNS name or an address.
    fn from_str(s: &str) -> Result<PeerAddr, String> {
        let bad = || format!("{s:?} is not host:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(PeerAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// `cluster:` validated.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Sorted, without duplicates.
    pub peers: Vec<PeerAddr>,
    /// `self:`, if given (one of `peers`).
    pub self_peer: Option<PeerAddr>,
    /// Authenticates one replica to another.
    pub key: Secret,
    /// Roots for peers' TLS certificates (added to the system's).
    pub ca_file: Option<PathBuf>,
}

/// Shortest key accepted: 32 bytes, as the token key.
const MIN_KEY_BYTES: usize = 32;

pub(super) fn validate(raw: RawCluster, base: Option<&Path>) -> Result<ClusterConfig, (String, String)> {
    let err = |at: &str, m: String| (format!("cluster.{at}"), m);
    let mut peers = raw
        .peers
        .iter()
        .map(|p| p.parse::<PeerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| err("peers", m))?;
    if peers.is_empty() {
        return Err(err("peers", "list every replica's host:port, this one included".into()));
    }
    let listed = peers.len();
    peers.sort();
    peers.dedup();
    if peers.len() != listed {
        return Err(err("peers", "a replica is listed twice".into()));
    }
    let self_peer = match raw.self_peer {
        None => None,
        Some(s) => {
            let p: PeerAddr = s.parse().map_err(|m| err("self", m))?;
            if !peers.contains(&p) {
                return Err(err("self", format!("{p} is not one of `peers`")));
            }
            Some(p)
        }
    };
    let key = one_secret("key", None, raw.key_file.as_deref(), raw.key_env.as_deref(), base)
        .map_err(|m| err("key", m))?
        .ok_or_else(|| {
            err(
                "key",
                "peers stream blobs to each other: give `keyFile` or `keyEnv`, a secret shared by the replicas".into(),
            )
        })?;
    if key.expose_secret().len() < MIN_KEY_BYTES {
        return Err(err("key", format!("the key must be at least {MIN_KEY_BYTES} bytes")));
    }
    let ca_file = raw.ca_file.map(|p| match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    });
    Ok(ClusterConfig {
        peers,
        self_peer,
        key,
        ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        let p: PeerAddr = "Replica-1.example:5000".parse().expect("name");
        assert_eq!((p.host(), p.port()), ("replica-1.example", 5000));
        assert_eq!(p.to_string(), "replica-1.example:5000");
        let v6: PeerAddr = "[::1]:5000".parse().expect("v6");
        assert_eq!((v6.host(), v6.to_string().as_str()), ("::1", "[::1]:5000"));
        for bad in ["", "host", "host:", ":5000", "host:0", "host:99999", "a/b:1", "h st:1"] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
        }
    }
}
