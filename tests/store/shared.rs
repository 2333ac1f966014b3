//! The access index of replicas on one bucket (`store::usage`): two or more
//! `Store`s over one `InMemory` object store (atomic conditional writes, as
//! on S3). A blob one replica served recently is not evicted by another;
//! both replicas' records survive their flushes; replicas flushing at the
//! same moment lose nothing; pins written at once are all kept.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use portcullis::oci::{Algorithm, Digest};
use portcullis::store::backend::object::ObjectBackend;
use portcullis::store::backend::{Backend, Key};
use portcullis::store::{Store, StoreOptions};
use portcullis::verify::{BlobVerifier, DigestMatched};

const BLOB: usize = 100_000;

fn proof(bytes: &[u8]) -> DigestMatched {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let mut v = BlobVerifier::new(digest, Some(bytes.len() as u64));
    v.update(bytes).expect("update");
    v.finish().expect("proof")
}

/// One bucket, each replica with its own data directory.
struct Bucket {
    backend: Arc<dyn Backend>,
    dirs: Vec<tempfile::TempDir>,
}

impl Bucket {
    fn new() -> Bucket {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        let memory = Arc::new(object_store::memory::InMemory::new());
        let backend = ObjectBackend::new(memory, "cache", dir.path().join("tmp"), "memory".into()).expect("backend");
        Bucket {
            backend: Arc::new(backend),
            dirs: vec![dir],
        }
    }

    /// A replica on this bucket.
    fn replica(&mut self, max_bytes: Option<u64>, grace: Duration) -> Store {
        let dir = tempfile::tempdir().expect("data dir");
        let options = StoreOptions {
            max_bytes,
            eviction_grace: grace,
            ..StoreOptions::default()
        };
        let store = Store::with_backend(self.backend.clone(), dir.path(), &options).expect("store");
        self.dirs.push(dir);
        store
    }

    /// The stored index, as JSON.
    fn index(&self) -> serde_json::Value {
        let object = self
            .backend
            .get(&Key::new(["index", "usage.json"]).expect("key"))
            .expect("get")
            .expect("the index exists");
        serde_json::from_slice(&object.bytes).expect("json")
    }
}

/// Commit `n` distinct blobs through `store` (oldest first).
fn commit(store: &Store, n: u8) -> Vec<Digest> {
    (0..n)
        .map(|i| {
            let bytes = vec![i; BLOB];
            let d = Digest::of(Algorithm::Sha256, &bytes);
            let mut w = store.blobs.writer(&d).expect("writer");
            w.write(&Bytes::from(bytes.clone())).expect("write");
            let added = w.commit(proof(&bytes)).expect("commit");
            store.record_commit(&d, BLOB as u64, added).expect("record");
            d
        })
        .collect()
}

fn serve(store: &Store, d: &Digest) {
    let (_, _, _held) = store.open_blob(d, true).expect("open").expect("present");
}

fn last_served(index: &serde_json::Value, d: &Digest) -> u64 {
    index["lastServed"][d.to_string()].as_u64().unwrap_or(0)
}

#[test]
fn a_blob_served_recently_on_one_replica_is_not_evicted_by_another() {
    let mut bucket = Bucket::new();
    let grace = Duration::from_secs(1);
    let a = bucket.replica(None, grace);
    let blobs = commit(&a, 4);
    a.usage.flush().expect("flush");
    // B starts now: it knows the four blobs in commit order.
    let b = bucket.replica(Some(250_000), grace);
    std::thread::sleep(grace + Duration::from_millis(200));
    // A serves the oldest, and reads the second right now.
    serve(&a, &blobs[0]);
    let (_reader, _, reading) = a.open_blob(&blobs[1], false).expect("open").expect("present");
    a.usage.flush().expect("a's periodic flush");

    // B must evict two; by its own order it would take the two oldest.
    let evicted = b.gc().expect("gc");
    assert_eq!(evicted.blobs, vec![blobs[2].clone(), blobs[3].clone()]);
    assert!(a.blobs.contains(&blobs[0]).expect("contains"));
    assert!(a.blobs.contains(&blobs[1]).expect("contains"));
    drop(reading);
    // A learns of the eviction at its next flush and stops counting them.
    serve(&a, &blobs[0]);
    a.usage.flush().expect("flush");
    assert_eq!(a.blob_bytes(), 2 * BLOB as u64);
}

#[test]
fn both_replicas_records_survive_their_flushes() {
    let mut bucket = Bucket::new();
    let a = bucket.replica(None, Duration::ZERO);
    let blobs = commit(&a, 4);
    a.usage.flush().expect("flush");
    let committed = last_served(&bucket.index(), &blobs[3]);
    let b = bucket.replica(None, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(20));
    serve(&a, &blobs[0]);
    serve(&b, &blobs[1]);
    b.usage.flush().expect("b flushes");
    a.usage.flush().expect("a flushes after b");

    let index = bucket.index();
    assert!(last_served(&index, &blobs[0]) > committed, "a's serve: {index}");
    assert!(
        last_served(&index, &blobs[1]) > committed,
        "b's serve survived a's flush: {index}"
    );
    assert_eq!(index["hits"], 2, "{index}");
    assert_eq!(index["downloads"], 4, "{index}");

    // A third replica evicting to two blobs keeps the two served ones.
    let c = bucket.replica(Some(2 * BLOB as u64), Duration::ZERO);
    let evicted = c.gc().expect("gc");
    assert_eq!(evicted.blobs, vec![blobs[2].clone(), blobs[3].clone()]);
    assert_eq!(c.usage.stats().hits, 2);
}

#[test]
fn a_concurrent_flush_race_loses_nothing() {
    const REPLICAS: usize = 6;
    let mut bucket = Bucket::new();
    let first = bucket.replica(None, Duration::ZERO);
    let blobs = commit(&first, REPLICAS as u8);
    first.usage.flush().expect("flush");
    let committed = last_served(&bucket.index(), &blobs[REPLICAS - 1]);
    let replicas: Vec<Store> = (0..REPLICAS).map(|_| bucket.replica(None, Duration::ZERO)).collect();
    std::thread::sleep(Duration::from_millis(20));
    for (r, d) in replicas.iter().zip(&blobs) {
        serve(r, d);
    }
    let barrier = std::sync::Barrier::new(REPLICAS);
    std::thread::scope(|scope| {
        for r in &replicas {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                r.usage.flush().expect("flush");
            });
        }
        // Pins written at the same moment, too.
        for (r, d) in replicas.iter().zip(&blobs) {
            scope.spawn(move || r.usage.pin(d, "imported").expect("pin"));
        }
    });
    let index = bucket.index();
    assert_eq!(index["hits"], REPLICAS, "every replica's hit, once: {index}");
    for d in &blobs {
        assert!(last_served(&index, d) > committed, "{d} lost in the race: {index}");
    }
    let fresh = bucket.replica(None, Duration::ZERO);
    assert_eq!(fresh.usage.stats().pinned, REPLICAS, "every pin kept");
}
