//! Rendezvous (highest random weight) hashing: every replica computes, for
//! a key, a weight per peer and picks the heaviest. Replicas with the same
//! peer list agree without talking, and removing a peer moves only the keys
//! it led (as zot and Kraken place blobs on their members).

use sha2::{Digest as _, Sha256};

/// The weight of `peer` for `key`: the first eight bytes of
/// SHA-256(peer ‖ 0 ‖ key). A cryptographic hash, so no client can steer
/// many keys to one replica by choosing names.
fn weight(peer: &str, key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update([0]);
    h.update(key);
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The index in `peers` of the one that leads `key` (`None` if empty). Ties
/// (equal weights) go to the first in the order given, which every replica
/// shares because the list is sorted.
pub fn leader<S: AsRef<str>>(peers: &[S], key: &[u8]) -> Option<usize> {
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| (weight(p.as_ref(), key), std::cmp::Reverse(i)))
        .max()
        .map(|(_, std::cmp::Reverse(i))| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEERS: [&str; 3] = ["10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.3:5000"];
    /// Leaders of `k0`…`k7`, computed independently (Python's hashlib).
    const PINNED: [usize; 8] = [2, 1, 1, 0, 0, 1, 2, 0];

    #[test]
    fn every_peer_leads_a_fair_share() {
        let mut led = [0usize; 3];
        for i in 0..3000u32 {
            let l = leader(&PEERS, format!("sha256:{i:064x}").as_bytes()).expect("a leader");
            led[l] += 1;
        }
        assert!(led.iter().all(|&n| (850..=1150).contains(&n)), "{led:?}");
    }

    #[test]
    fn removing_a_peer_moves_only_the_keys_it_led() {
        let two = [PEERS[0], PEERS[2]];
        for i in 0..1000u32 {
            let key = format!("k{i}");
            let before = PEERS[leader(&PEERS, key.as_bytes()).expect("leader")];
            let after = two[leader(&two, key.as_bytes()).expect("leader")];
            if before != PEERS[1] {
                assert_eq!(before, after, "{key} moved although its leader stayed");
            }
        }
    }

    /// The weights are fixed by the names: another process (built from
    /// the same code) picks the same leader. Pinned values guard the hash
    /// input against a change that replicas of two versions would disagree on.
    #[test]
    fn weights_are_stable_across_processes() {
        assert_eq!(leader::<&str>(&[], b"k"), None);
        let owned: Vec<String> = PEERS.iter().map(|p| (*p).to_owned()).collect();
        for i in 0..100u32 {
            let key = format!("blob\0sha256:{i:064x}");
            assert_eq!(leader(&PEERS, key.as_bytes()), leader(&owned, key.as_bytes()));
        }
        let picked: Vec<usize> = (0..8u32)
            .filter_map(|i| leader(&PEERS, format!("k{i}").as_bytes()))
            .collect();
        assert_eq!(picked, PINNED);
    }
}
