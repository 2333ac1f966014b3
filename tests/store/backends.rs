//! The storage seam: one test body over every backend — the local
//! filesystem, `object_store`'s `InMemory`, and a real S3 server (s3s-fs on
//! a loopback port). Records, conditional writes, streamed blobs committed
//! only with the proof, ranged reads, eviction after a re-listing, leases,
//! and (s3s-fs) the journal that lets a restart abort a killed run's uploads.
//! Races (leases, tags) run where conditional writes are atomic: the
//! filesystem backend and `InMemory` (s3s-fs checks, then renames).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use portcullis::oci::{Algorithm, Digest, RegistryHost, RepoName, Tag};
use portcullis::store::backend::fs::FsBackend;
use portcullis::store::backend::object::ObjectBackend;
use portcullis::store::backend::{Backend, Key, PutMode, Written};
use portcullis::store::{LeaseState, Store, StoreOptions};
use portcullis::verify::{BlobVerifier, DigestMatched};

use crate::support::s3::S3Server;

/// A backend under test and what keeps it alive.
struct Subject {
    name: &'static str,
    backend: Arc<dyn Backend>,
    dir: tempfile::TempDir,
    _server: Option<S3Server>,
}

fn fs() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
    let backend = FsBackend::new(dir.path().to_owned(), dir.path().join("tmp"));
    Subject {
        name: "fs",
        backend: Arc::new(backend),
        dir,
        _server: None,
    }
}

fn memory() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
    let store = Arc::new(object_store::memory::InMemory::new());
    let backend = ObjectBackend::new(store, "cache", dir.path().join("tmp"), "memory".into()).expect("backend");
    Subject {
        name: "memory",
        backend: Arc::new(backend),
        dir,
        _server: None,
    }
}

fn s3() -> Subject {
    let server = S3Server::start(&["portcullis"]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
    let client = Arc::new(server.client("portcullis"));
    let backend = ObjectBackend::new(client, "cache/", dir.path().join("tmp"), "s3s-fs".into()).expect("backend");
    Subject {
        name: "s3s-fs",
        backend: Arc::new(backend),
        dir,
        _server: Some(server),
    }
}

fn proof(bytes: &[u8]) -> DigestMatched {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let mut v = BlobVerifier::new(digest, Some(bytes.len() as u64));
    v.update(bytes).expect("update");
    v.finish().expect("proof")
}

fn key(parts: &[&str]) -> Key {
    Key::new(parts.iter().copied()).expect("key")
}

/// Records: get, put in every mode, conflicts, delete, size, list.
fn records(s: &Subject) {
    let b = &s.backend;
    let k = key(&["tags", "registry.test", "app", "_tags", "v1"]);
    assert!(b.get(&k).expect("get").is_none(), "{}", s.name);
    assert_eq!(
        b.put(&k, Bytes::from_static(b"one"), PutMode::Create, true)
            .expect("create"),
        Written::Done
    );
    assert_eq!(
        b.put(&k, Bytes::from_static(b"two"), PutMode::Create, true)
            .expect("create again"),
        Written::Conflict,
        "{}: If-None-Match",
        s.name
    );
    let first = b.get(&k).expect("get").expect("present");
    assert_eq!(&first.bytes[..], b"one");
    assert_eq!(
        b.put(
            &k,
            Bytes::from_static(b"two"),
            PutMode::Update(first.version.clone()),
            true
        )
        .expect("update"),
        Written::Done
    );
    assert_eq!(
        b.put(&k, Bytes::from_static(b"three"), PutMode::Update(first.version), true)
            .expect("stale update"),
        Written::Conflict,
        "{}: If-Match with a stale version",
        s.name
    );
    assert_eq!(&b.get(&k).expect("get").expect("present").bytes[..], b"two");
    assert_eq!(b.size(&k).expect("size"), Some(3));
    let listed = b.list(&key(&["tags"])).expect("list");
    assert_eq!(listed.len(), 1, "{}", s.name);
    assert_eq!(listed[0].key, k);
    b.delete(&k).expect("delete");
    b.delete(&k).expect("delete absent");
    assert!(b.get(&k).expect("get").is_none());
}

/// A streamed blob over several parts: visible only after a commit with
/// the proof; a dropped writer leaves nothing; ranged reads anywhere.
fn blobs(s: &Subject) {
    let store = Store::with_backend(s.backend.clone(), s.dir.path(), &StoreOptions::default()).expect("store");
    // 20 MiB + a bit: three parts on an object store.
    let bytes: Vec<u8> = (0..20 * 1024 * 1024 + 12_345).map(|i: u32| (i % 251) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &bytes);

    let mut dropped = store.blobs.writer(&digest).expect("writer");
    dropped.write(&Bytes::copy_from_slice(&bytes[..1000])).expect("write");
    drop(dropped);
    assert!(!store.blobs.contains(&digest).expect("contains"), "{}", s.name);

    let mut w = store.blobs.writer(&digest).expect("writer");
    for chunk in bytes.chunks(64 * 1024) {
        w.write(&Bytes::copy_from_slice(chunk)).expect("write");
    }
    assert!(
        !store.blobs.contains(&digest).expect("contains"),
        "{}: nothing visible before the commit",
        s.name
    );
    assert!(w.commit(proof(b"other")).is_err(), "a proof for another digest");
    assert!(!store.blobs.contains(&digest).expect("contains"));

    let mut w = store.blobs.writer(&digest).expect("writer");
    for chunk in bytes.chunks(64 * 1024) {
        w.write(&Bytes::copy_from_slice(chunk)).expect("write");
    }
    assert_eq!(w.commit(proof(&bytes)).expect("commit"), bytes.len() as u64);
    let (reader, len, _held) = store.open_blob(&digest, true).expect("open").expect("present");
    assert_eq!(len, bytes.len() as u64);
    // Sequential reads (one GET on S3), then a jump back, then the tail.
    let mut pos = 0usize;
    while pos < bytes.len() {
        let n = (bytes.len() - pos).min(256 * 1024);
        let chunk = reader.read_at(pos as u64, BytesMut::zeroed(n)).expect("read");
        assert_eq!(&chunk[..], &bytes[pos..pos + n], "{} at {pos}", s.name);
        pos += n;
    }
    let chunk = reader.read_at(7, BytesMut::zeroed(10)).expect("read");
    assert_eq!(&chunk[..], &bytes[7..17]);
    assert!(reader.read_at(len - 1, BytesMut::zeroed(2)).is_err(), "past the end");
    assert!(store.verify().expect("verify").quarantined.is_empty(), "{}", s.name);
}

/// Eviction past the cap after a re-open: sizes from the listing, the
/// least recently served first, the usage index kept as an object.
fn eviction(s: &Subject) {
    let blobs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100_000]).collect();
    {
        let store = Store::with_backend(s.backend.clone(), s.dir.path(), &StoreOptions::default()).expect("store");
        for b in &blobs {
            let d = Digest::of(Algorithm::Sha256, b);
            let mut w = store.blobs.writer(&d).expect("writer");
            w.write(&Bytes::copy_from_slice(b)).expect("write");
            let added = w.commit(proof(b)).expect("commit");
            store.record_commit(&d, b.len() as u64, added).expect("record");
            std::thread::sleep(Duration::from_millis(5));
        }
        store.usage.flush().expect("flush");
    }
    // One replica: no grace for other replicas' serves.
    let options = StoreOptions {
        max_bytes: Some(250_000),
        eviction_grace: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = Store::with_backend(s.backend.clone(), s.dir.path(), &options).expect("reopen");
    assert_eq!(store.blob_bytes(), 400_000, "{}: sizes from the listing", s.name);
    let evicted = store.gc().expect("gc");
    let first = Digest::of(Algorithm::Sha256, &blobs[0]);
    let second = Digest::of(Algorithm::Sha256, &blobs[1]);
    assert_eq!(evicted.blobs, vec![first.clone(), second.clone()], "{}", s.name);
    assert!(!store.blobs.contains(&first).expect("contains"));
    assert_eq!(store.blob_bytes(), 200_000);
}

/// Leases: one holder; the others see it; an expired lease is taken over.
fn leases(s: &Subject) {
    let store = Store::with_backend(s.backend.clone(), s.dir.path(), &StoreOptions::default()).expect("store");
    let d = Digest::of(Algorithm::Sha256, b"leased");
    let LeaseState::Acquired(lease) = store.lease(&d, "r1", Duration::from_millis(300)).expect("lease") else {
        panic!("{}: the first replica takes the lease", s.name)
    };
    assert!(matches!(
        store.lease(&d, "r2", Duration::from_secs(10)).expect("lease"),
        LeaseState::HeldElsewhere { ref holder, .. } if holder == "r1"
    ));
    assert!(lease.renew().expect("renew"));
    std::thread::sleep(Duration::from_millis(400));
    let LeaseState::Acquired(taken) = store.lease(&d, "r2", Duration::from_secs(10)).expect("lease") else {
        panic!("{}: an expired lease is taken over", s.name)
    };
    assert!(!lease.renew().expect("renew"), "the old holder lost it");
    lease.release().expect("release leaves the new holder's lease");
    assert!(matches!(
        store.lease(&d, "r3", Duration::from_secs(10)).expect("lease"),
        LeaseState::HeldElsewhere { .. }
    ));
    taken.release().expect("release");
    assert!(matches!(
        store.lease(&d, "r3", Duration::from_secs(10)).expect("lease"),
        LeaseState::Acquired(_)
    ));
}

/// Eight replicas race for one lease and for one tag: one lease holder,
/// one tag history.
fn races(s: &Subject) {
    let store =
        Arc::new(Store::with_backend(s.backend.clone(), s.dir.path(), &StoreOptions::default()).expect("store"));
    let d = Digest::of(Algorithm::Sha256, b"raced");
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let holders: Vec<bool> = (0..8)
        .map(|i| {
            let (store, d, barrier) = (store.clone(), d.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                matches!(
                    store
                        .lease(&d, &format!("r{i}"), Duration::from_secs(30))
                        .expect("lease"),
                    LeaseState::Acquired(_)
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(holders.iter().filter(|h| **h).count(), 1, "{}: {holders:?}", s.name);

    let host: RegistryHost = "registry.test".parse().expect("host");
    let repo: RepoName = "team/app".parse().expect("repo");
    let tag: Tag = "latest".parse().expect("tag");
    let firsts: Vec<bool> = (0..8)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let (host, repo, tag) = (host.clone(), repo.clone(), tag.clone());
            std::thread::spawn(move || {
                let digest = Digest::of(Algorithm::Sha256, format!("{i}").as_bytes());
                barrier.wait();
                store
                    .tags
                    .record(&host, &repo, &tag, &digest)
                    .expect("record")
                    .is_none()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(
        firsts.iter().filter(|f| **f).count(),
        1,
        "{}: exactly one replica created the tag, the others saw a predecessor: {firsts:?}",
        s.name
    );
}

#[test]
fn filesystem_backend() {
    let s = fs();
    records(&s);
    blobs(&s);
    eviction(&fs());
    leases(&fs());
    races(&fs());
}

#[test]
fn in_memory_object_store() {
    let s = memory();
    records(&s);
    blobs(&s);
    eviction(&memory());
    leases(&memory());
    races(&memory());
}

#[test]
fn s3_server_s3s_fs() {
    let s = s3();
    records(&s);
    blobs(&s);
    eviction(&s3());
    leases(&s3());
}

/// A run killed mid-download (here: a sink never dropped) leaves its
/// multipart upload open and journaled in the temp directory; the next
/// start aborts it and clears the journal.
#[test]
fn an_upload_a_killed_run_left_is_aborted_at_the_next_start() {
    let server = S3Server::start(&["portcullis"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let open_uploads = || {
        std::fs::read_dir(server.root.path())
            .expect("root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
            .count()
    };
    let journal = || {
        std::fs::read_dir(&tmp)
            .expect("tmp")
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "upload"))
            .count()
    };
    let client = Arc::new(server.client("portcullis"));
    let backend = ObjectBackend::new(client, "cache/", tmp.clone(), "s3s-fs".into()).expect("backend");
    let bytes = vec![7u8; 1000];
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    let mut sink = backend
        .blob_sink(&Key::content("blobs", &digest), &digest)
        .expect("sink");
    sink.write(&Bytes::from(bytes)).expect("write");
    // As after kill -9: no drop, no abort.
    std::mem::forget(sink);
    assert_eq!((open_uploads(), journal()), (1, 1));

    let restarted = ObjectBackend::new(
        Arc::new(server.client("portcullis")),
        "cache/",
        tmp.clone(),
        "s3s-fs".into(),
    )
    .expect("backend");
    assert_eq!(restarted.abort_abandoned_uploads().expect("abort"), 1);
    assert_eq!((open_uploads(), journal()), (0, 0));
    assert_eq!(restarted.abort_abandoned_uploads().expect("again"), 0);

    // A sink dropped without a commit aborts its upload itself.
    let sink = restarted
        .blob_sink(&Key::content("blobs", &digest), &digest)
        .expect("sink");
    drop(sink);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_uploads() + journal() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped sink's upload stayed open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
