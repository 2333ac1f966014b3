//! The store's own cost, through the library API (no network):
//!
//! - opening a store of N blobs (the one walk of the blob directory at
//!   start, and the access index);
//! - the per-request overhead of a store hit (`Store::open_blob`: hold
//!   against eviction, open, mark served);
//! - one eviction pass that removes 10,000 blobs (what a cap lowered under
//!   a full store costs the commit that crosses it).
//!
//! Run: `cargo bench --bench store` (about 20 s). Environment:
//! `STORE_BENCH_BLOBS` = blobs in the store [10000].
//!
//! A std-only harness like `benches/verification.rs`: figures are printed,
//! nothing is asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis::oci::{Algorithm, Digest};
use portcullis::store::{Store, StoreOptions};

fn blob_path(root: &std::path::Path, d: &Digest) -> std::path::PathBuf {
    let hex = d.hex();
    root.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// `n` distinct 1 KiB blobs written straight into the layout.
fn fill(root: &std::path::Path, n: usize) -> Vec<Digest> {
    (0..n)
        .map(|i| {
            let mut bytes = vec![0u8; 1024];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let d = Digest::of(Algorithm::Sha256, &bytes);
            let path = blob_path(root, &d);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &bytes).expect("write blob");
            d
        })
        .collect()
}

fn per_call(label: &str, n: usize, elapsed: Duration) {
    println!(
        "{label:<44} {:>10.2} µs/op  ({n} ops in {:.3} s)",
        elapsed.as_secs_f64() * 1e6 / n as f64,
        elapsed.as_secs_f64()
    );
}

fn main() {
    let n: usize = std::env::var("STORE_BENCH_BLOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let digests = fill(dir.path(), n);
    println!("filled {n} blobs of 1 KiB in {:.2} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let store = Store::open_with(dir.path(), StoreOptions::default()).expect("open");
    println!(
        "open (walk {n} blobs, read the index)        {:>10.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    let rounds = 5 * n;
    let started = Instant::now();
    for i in 0..rounds {
        let opened = store.open_blob(&digests[i % n], true).expect("open blob");
        black_box(opened);
    }
    per_call("store hit: hold + open + mark served", rounds, started.elapsed());

    let started = Instant::now();
    store.usage.flush().expect("flush");
    println!(
        "flush the access index ({n} entries)         {:>10.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // A cap of one blob under a full store: one pass evicts everything else.
    let capped = Store::open_with(
        dir.path(),
        StoreOptions {
            max_bytes: Some(1024),
            ..StoreOptions::default()
        },
    )
    .expect("reopen with a cap");
    let started = Instant::now();
    let evicted = capped.gc().expect("gc");
    let elapsed = started.elapsed();
    println!(
        "evict {} blobs in one pass (incl. unlink)   {:>10.1} ms  ({:.1} µs/blob)",
        evicted.blobs.len(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / evicted.blobs.len().max(1) as f64
    );
}
