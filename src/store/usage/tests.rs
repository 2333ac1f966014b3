use bytes::Bytes;

use super::*;
use crate::oci::Algorithm;

fn put(backend: &Arc<dyn Backend>, bytes: &[u8]) -> Digest {
    let d = Digest::of(Algorithm::Sha256, bytes);
    let body = Bytes::copy_from_slice(bytes);
    backend
        .put(&BlobStore::key(&d), body, PutMode::Overwrite, false)
        .expect("write");
    d
}

fn exists(backend: &Arc<dyn Backend>, d: &Digest) -> bool {
    backend.size(&BlobStore::key(d)).expect("stat").is_some()
}

fn setup() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let backend = crate::store::backend::fs::FsBackend::new(dir.path().to_owned(), tmp);
    (dir, Arc::new(backend))
}

fn set_served(u: &Usage, d: &Digest, secs: u64) {
    if let Some(e) = u.state().blobs.get_mut(d) {
        e.last_served = secs;
    }
}

#[test]
fn the_least_recently_served_goes_first_and_pins_and_readers_stay() {
    let (_dir, blobs) = setup();
    let a = put(&blobs, &[1u8; 100]);
    let b = put(&blobs, &[2u8; 100]);
    let c = put(&blobs, &[3u8; 100]);
    let d = put(&blobs, &[4u8; 100]);
    let u = Arc::new(Usage::load(blobs.clone()).expect("load"));
    assert_eq!(u.total(), 400);
    for (digest, t) in [(&a, 10), (&b, 20), (&c, 30), (&d, 40)] {
        set_served(&u, digest, t);
    }
    u.pin(&a, "imported").expect("pin");
    let reading = u.hold(&b);

    // Cap 250: over by 150, low watermark 225: two blobs must go; the
    // oldest two (a pinned, b being read) stay, so c and d go.
    let evicted = u.evict_over(250, false).expect("evict");
    assert_eq!(evicted.blobs, vec![c.clone(), d.clone()]);
    assert_eq!(evicted.bytes, 200);
    assert_eq!(u.total(), 200);
    assert!(!exists(&blobs, &c));
    assert!(exists(&blobs, &a) && exists(&blobs, &b));

    drop(reading);
    let evicted = u.evict_over(150, true).expect("evict");
    assert_eq!(evicted.blobs, vec![b], "only the unpinned, unread one");
    assert_eq!(u.evict_over(1000, false).expect("no-op"), Evicted::default());
}

#[test]
fn access_times_pins_and_counters_survive_a_restart() {
    let (_dir, blobs) = setup();
    let a = put(&blobs, b"alpha");
    let b = put(&blobs, b"bravo");
    {
        let u = Arc::new(Usage::load(blobs.clone()).expect("load"));
        set_served(&u, &a, 5);
        set_served(&u, &b, 0);
        u.served(&b);
        u.pin(&a, "air gap").expect("pin");
        u.flush().expect("flush");
    }
    let u = Usage::load(blobs.clone()).expect("reload");
    assert!(u.is_pinned(&a));
    let stats = u.stats();
    assert_eq!((stats.blobs, stats.bytes, stats.pinned, stats.hits), (2, 10, 1, 1));
    let order: Vec<u64> = [&a, &b]
        .iter()
        .map(|d| u.state().blobs.get(*d).map_or(0, |e| e.last_served))
        .collect();
    assert_eq!(order[0], 5);
    assert!(order[1] > 1_000_000_000_000, "b's serve was recorded: {order:?}");
}

#[test]
fn a_commit_of_a_known_blob_is_not_counted_twice() {
    let (_dir, blobs) = setup();
    let u = Usage::load(blobs.clone()).expect("load");
    let d = Digest::of(Algorithm::Sha256, b"x");
    u.added(&d, 7, true);
    u.added(&d, 7, true);
    u.added(&d, 7, false);
    assert_eq!(u.total(), 7);
    u.forget(&d);
    assert_eq!(u.total(), 0);
}

// === replicas on one shared store ===

/// A store replicas share: an in-memory object store (atomic conditional writes).
fn shared() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(object_store::memory::InMemory::new());
    let backend =
        crate::store::backend::object::ObjectBackend::new(memory, "cache", dir.path().to_owned(), "memory".into())
            .expect("backend");
    let backend: Arc<dyn Backend> = Arc::new(backend);
    assert!(backend.shared());
    (dir, backend)
}

fn stored_index(backend: &Arc<dyn Backend>) -> UsageFile {
    read_json::<UsageFile>(&**backend, USAGE)
        .expect("read")
        .and_then(|(f, _)| f)
        .expect("index")
}

fn served_at(u: &Usage, d: &Digest) -> u64 {
    u.state().blobs.get(d).map_or(0, |e| e.last_served)
}

#[test]
fn merge_keeps_the_latest_time_adds_counters_and_applies_removals() {
    let (a, b, c, gone, stale) = ("a", "b", "c", "gone", "stale");
    let stored = UsageFile {
        last_served: [(a, 50), (b, 10), (gone, 5), (stale, 1)]
            .into_iter()
            .map(|(d, t)| (d.to_owned(), t))
            .collect(),
        hits: 7,
        downloads: 3,
        removed: [(gone.to_owned(), 8)].into_iter().collect(),
    };
    let d = |s: &[u8]| Digest::of(crate::oci::Algorithm::Sha256, s);
    let (x, y) = (d(b"x"), d(b"y"));
    let snapshot = Snapshot {
        served: [(x.clone(), 40), (y.clone(), 90)].into_iter().collect(),
        removed: HashMap::new(),
        hits: 2,
        downloads: 1,
        generation: 0,
    };
    // Names that are not digests stand in for other replicas' entries.
    let merged = merge(stored, &snapshot, 100, 2);
    assert_eq!(merged.last_served.get(a), Some(&50), "another replica's time stays");
    assert_eq!(merged.last_served.get(b), Some(&10));
    assert_eq!(merged.last_served.get(&x.to_string()), Some(&40), "ours joins");
    assert_eq!(merged.last_served.get(&y.to_string()), Some(&90));
    assert!(!merged.last_served.contains_key(gone), "removed after its last serve");
    assert!(
        !merged.last_served.contains_key(stale),
        "not there at our listing, nobody served it since"
    );
    assert!(!merged.last_served.contains_key(c));
    assert_eq!((merged.hits, merged.downloads), (9, 4), "increments add up");
    assert_eq!(merged.removed.get(gone), Some(&8));

    // Our time wins where it is later; a removal travels; old tombstones go.
    let later = Snapshot {
        served: [(x.clone(), 60)].into_iter().collect(),
        removed: [(y.clone(), 95)].into_iter().collect(),
        hits: 0,
        downloads: 0,
        generation: 0,
    };
    let merged = merge(merged, &later, 8 + TOMBSTONE_KEEP, 2);
    assert_eq!(merged.last_served.get(&x.to_string()), Some(&60));
    assert!(!merged.last_served.contains_key(&y.to_string()), "y removed at 95 > 90");
    assert!(!merged.removed.contains_key(gone), "kept only TOMBSTONE_KEEP");
}

#[test]
fn both_replicas_records_survive_their_flushes() {
    let (_dir, backend) = shared();
    let x = put(&backend, b"xray");
    let y = put(&backend, b"yankee");
    let a = Usage::load(backend.clone()).expect("a");
    let b = Usage::load(backend.clone()).expect("b");
    set_served(&a, &x, 1_000);
    set_served(&a, &y, 1_000);
    set_served(&b, &x, 1_000);
    set_served(&b, &y, 1_000);
    a.served(&x);
    b.served(&y);
    b.served(&y);
    a.flush().expect("a flushes");
    b.flush().expect("b flushes after, and keeps a's record");
    let index = stored_index(&backend);
    assert!(
        index.last_served[&x.to_string()] > 1_000,
        "a's serve of x survived b's flush"
    );
    assert!(index.last_served[&y.to_string()] > 1_000, "b's serve of y");
    assert_eq!(index.hits, 3, "three serves in all, each counted once");
    // b took a's time of x into its own order.
    assert!(served_at(&b, &x) > 1_000);
    assert_eq!(b.stats().hits, 3);
    // Flushing again adds nothing twice.
    a.served(&x);
    a.flush().expect("again");
    b.flush().expect("b has nothing new");
    assert_eq!(stored_index(&backend).hits, 4);
}

#[test]
fn a_blob_another_replica_served_within_the_grace_is_not_evicted() {
    let (_dir, backend) = shared();
    let blobs: Vec<Digest> = (0..4u8).map(|i| put(&backend, &[i; 100])).collect();
    let a = Arc::new(
        Usage::load(backend.clone())
            .expect("a")
            .with_grace(Duration::from_secs(60)),
    );
    let b = Usage::load(backend.clone())
        .expect("b")
        .with_grace(Duration::from_secs(60));
    // Everything long unserved as both replicas see it; then a serves the
    // oldest, and flushes (its minute tick).
    for (i, d) in blobs.iter().enumerate() {
        set_served(&a, d, 1_000 + i as u64);
        set_served(&b, d, 1_000 + i as u64);
    }
    a.served(&blobs[0]);
    a.flush().expect("a flushes");
    // A stream a is in the middle of counts as served at a's flush.
    let reading = a.hold(&blobs[1]);
    a.flush().expect("a flushes while reading");

    // b must free 200 of 400: without the merge it would take 0 and 1.
    let evicted = b.evict_over(250, false).expect("evict");
    assert_eq!(evicted.blobs, vec![blobs[2].clone(), blobs[3].clone()]);
    assert!(exists(&backend, &blobs[0]) && exists(&backend, &blobs[1]));
    // b's removals are in the index at once; a drops them at its next flush.
    let index = stored_index(&backend);
    assert!(index.removed.contains_key(&blobs[2].to_string()));
    assert!(!index.last_served.contains_key(&blobs[3].to_string()));
    drop(reading);
    a.served(&blobs[0]);
    a.flush().expect("a learns");
    assert_eq!(a.total(), 200, "a no longer counts what b evicted");
    assert!(
        !stored_index(&backend).last_served.contains_key(&blobs[2].to_string()),
        "a does not bring back what b evicted"
    );
    // Past the grace they go like any other.
    set_served(&b, &blobs[0], 2_000);
    set_served(&b, &blobs[1], 2_000);
    let mut file = stored_index(&backend);
    file.last_served.values_mut().for_each(|t| *t = 2_000);
    write_json(&*backend, &Key::fixed(USAGE), &file, PutMode::Overwrite).expect("age the index");
    // As if RESYNC_AFTER had passed since b's last merge.
    b.state().last_sync = 0;
    let evicted = b.evict_over(50, true).expect("evict");
    assert_eq!(evicted.blobs.len(), 2);
}

#[test]
fn concurrent_flushes_lose_nothing() {
    const REPLICAS: usize = 8;
    let (_dir, backend) = shared();
    let blobs: Vec<Digest> = (0..REPLICAS as u8).map(|i| put(&backend, &[i; 10])).collect();
    let replicas: Vec<Usage> = (0..REPLICAS)
        .map(|_| {
            let u = Usage::load(backend.clone()).expect("load");
            blobs.iter().for_each(|d| set_served(&u, d, 1_000));
            u
        })
        .collect();
    for (u, d) in replicas.iter().zip(&blobs) {
        u.served(d);
    }
    let barrier = std::sync::Barrier::new(REPLICAS);
    std::thread::scope(|scope| {
        for u in &replicas {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                u.flush().expect("flush");
            });
        }
    });
    let index = stored_index(&backend);
    assert_eq!(index.hits, REPLICAS as u64, "every replica's hit counted once");
    for d in &blobs {
        assert!(
            index.last_served[&d.to_string()] > 1_000,
            "{d}: its serve survived the race"
        );
    }
}

#[test]
fn concurrent_pins_are_all_kept() {
    let (_dir, backend) = shared();
    let blobs: Vec<Digest> = (0..4u8).map(|i| put(&backend, &[i; 10])).collect();
    let replicas: Vec<Usage> = (0..4).map(|_| Usage::load(backend.clone()).expect("load")).collect();
    std::thread::scope(|scope| {
        for (u, d) in replicas.iter().zip(&blobs) {
            scope.spawn(move || u.pin(d, "imported").expect("pin"));
        }
    });
    let fresh = Usage::load(backend.clone()).expect("reload");
    assert!(blobs.iter().all(|d| fresh.is_pinned(d)), "{:?}", fresh.stats());
    replicas[0].unpin(&blobs[1]).expect("unpin");
    let fresh = Usage::load(backend.clone()).expect("reload");
    assert_eq!(fresh.stats().pinned, 3);
    assert!(!fresh.is_pinned(&blobs[1]));
}
