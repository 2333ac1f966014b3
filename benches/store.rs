//! The store's own cost, through the library API (no network):
//!
//! - opening a store of N blobs (the one walk of the blob directory at
//!   start, and the access index);
//! - the per-request overhead of a store hit (`Store::open_blob`: hold
//!   against eviction, open, mark served);
//! - one eviction pass that removes 10,000 blobs (what a cap lowered under
//!   a full store costs the commit that crosses it).
//!
//! The same on the S3 backend (a real S3 server, s3s-fs, in-process on a
//! loopback port: the figures are the protocol's and the backend's cost, not
//! a network's), and the throughput of one large blob written (cold: hashed,
//! written, committed) and read back (warm) through each backend.
//!
//! Run: `cargo bench --bench store` (about 2 minutes). Environment:
//! `STORE_BENCH_BLOBS` = blobs in the store [10000];
//! `STORE_BENCH_LARGE_MIB` = size of the large blob [512];
//! `STORE_BENCH_S3=0` skips the S3 backend.
//!
//! A std-only harness like `benches/verification.rs`: figures are printed,
//! nothing is asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use object_store::ObjectStoreExt as _;
use portcullis::oci::{Algorithm, Digest};
use portcullis::store::backend::Backend;
use portcullis::store::backend::fs::FsBackend;
use portcullis::store::backend::object::ObjectBackend;
use portcullis::store::{Store, StoreOptions};
use portcullis::verify::BlobVerifier;

#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;

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

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let n = env_or("STORE_BENCH_BLOBS", 10_000);
    local(n);
    let large = env_or("STORE_BENCH_LARGE_MIB", 512) << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
    let fs: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path().to_owned(), dir.path().join("tmp")));
    large_blob("local", &fs, dir.path(), large);
    if env_or("STORE_BENCH_S3", 1) == 0 {
        return;
    }
    let server = s3::S3Server::start(&["bench"]);
    let client = Arc::new(server.client("bench"));
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(work.path().join("tmp")).expect("tmp");
    let backend: Arc<dyn Backend> = Arc::new(
        ObjectBackend::new(client.clone(), "cache/", work.path().join("tmp"), "s3s-fs".into()).expect("backend"),
    );
    large_blob("s3 (s3s-fs)", &backend, work.path(), large);
    remote(n, &client, &backend, work.path());
}

/// Write `len` bytes through the store as a download does (hash and write,
/// commit with the proof), then read them back sequentially.
fn large_blob(label: &str, backend: &Arc<dyn Backend>, dir: &std::path::Path, len: usize) {
    const CHUNK: usize = 256 * 1024;
    let store = Store::with_backend(backend.clone(), dir, &StoreOptions::default()).expect("store");
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut hasher = portcullis::oci::DigestHasher::new(Algorithm::Sha256);
    for _ in 0..len / CHUNK {
        hasher.update(&chunk);
    }
    let digest = hasher.finish();
    let mib = (len >> 20) as f64;

    let started = Instant::now();
    let mut verifier = BlobVerifier::new(digest.clone(), Some(len as u64));
    let mut writer = store.blobs.writer(&digest).expect("writer");
    writer.reserve(len as u64).expect("reserve");
    for _ in 0..len / CHUNK {
        verifier.update(&chunk).expect("hash");
        writer.write(&chunk).expect("write");
    }
    let proof = verifier.finish().expect("proof");
    writer.commit(proof).expect("commit");
    let cold = started.elapsed();

    let started = Instant::now();
    let (reader, size, _held) = store.open_blob(&digest, true).expect("open").expect("present");
    let mut pos = 0;
    while pos < size {
        let want = (size - pos).min(CHUNK as u64) as usize;
        pos += black_box(reader.read_at(pos, BytesMut::zeroed(want)).expect("read")).len() as u64;
    }
    let warm = started.elapsed();
    println!(
        "{label:<12} {mib:.0} MiB blob: cold (hash + write + commit) {:>7.0} MB/s, warm (read) {:>7.0} MB/s",
        len as f64 / 1e6 / cold.as_secs_f64(),
        len as f64 / 1e6 / warm.as_secs_f64()
    );
}

/// Listing, hit overhead and one eviction pass of `n` blobs on S3.
fn remote(n: usize, client: &Arc<object_store::aws::AmazonS3>, backend: &Arc<dyn Backend>, dir: &std::path::Path) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let digests: Vec<Digest> = rt.block_on(async {
        futures_util::stream::iter(0..n)
            .map(|i| {
                let client = client.clone();
                async move {
                    let mut bytes = vec![0u8; 1024];
                    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    let d = Digest::of(Algorithm::Sha256, &bytes);
                    let hex = d.hex();
                    let path = object_store::path::Path::from(format!("cache/blobs/sha256/{}/{hex}", &hex[..2]));
                    client.put(&path, bytes.into()).await.expect("put");
                    d
                }
            })
            .buffer_unordered(32)
            .collect()
            .await
    });
    println!(
        "s3: filled {n} blobs of 1 KiB in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let store = Store::with_backend(backend.clone(), dir, &StoreOptions::default()).expect("open");
    println!(
        "s3: open (list {n} blobs, read the index)    {:>10.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let rounds = n.min(2_000);
    let started = Instant::now();
    for i in 0..rounds {
        black_box(store.open_blob(&digests[i % n], true).expect("open blob"));
    }
    per_call("s3: store hit: hold + HEAD + mark served", rounds, started.elapsed());
    let started = Instant::now();
    store.usage.flush().expect("flush");
    println!(
        "s3: flush the access index ({n} entries)     {:>10.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let capped = Store::with_backend(
        backend.clone(),
        dir,
        &StoreOptions {
            max_bytes: Some(1024),
            // One replica: no grace for other replicas' serves.
            eviction_grace: std::time::Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .expect("reopen with a cap");
    time_gc(&capped, "s3: evict {} blobs in one pass (bulk delete)");
}

/// Evict down to the store's cap now and print how long it took, under
/// `label` (its `{}` is the number of blobs evicted).
fn time_gc(store: &Store, label: &str) {
    let started = Instant::now();
    let evicted = store.gc().expect("gc");
    let elapsed = started.elapsed();
    let n = evicted.blobs.len();
    println!(
        "{} {:>10.1} ms  ({:.1} µs/blob)",
        label.replace("{}", &n.to_string()),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / n.max(1) as f64
    );
}

/// The local filesystem backend: open, hit overhead, index, eviction.
fn local(n: usize) {
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
    time_gc(&capped, "evict {} blobs in one pass (incl. unlink)  ");
}
