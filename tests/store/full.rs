//! Disk full (issue 10, crash-safe): pulls keep working, streamed and
//! verified but not cached, the condition is logged and counted once, and
//! caching resumes when space returns.
//!
//! - the built binary on a size-limited tmpfs (mounted here, as root)
//!   smaller than an image's layer, pulled with skopeo; then the tmpfs is
//!   remounted larger and the same pull caches;
//! - an in-process proxy over an in-memory bucket behind a backend wrapper
//!   that refuses every write while a switch is on;
//! - a control beside each: with room, the same pull caches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;

use crate::cap::metric;
use crate::support;
use crate::support::binary::{self, Served};
use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::fake::{FakeRegistry, Fault};
use crate::support::images::{Image, oci_image};

/// Larger than the small filesystem's free space.
const LAYER: usize = 12 << 20;
const SMALL_FS: &str = "8m";
const ROOMY_FS: &str = "64m";

/// The WARN line of a new condition, and the INFO line of its end.
const REFUSES: &str = "the store refuses writes";
const RESUMED: &str = "caching resumed";

/// A tmpfs of a given size mounted on a temp directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount it, or fail the test saying why (these tests run as root and
    /// never skip).
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (these tests need root, CAP_SYS_ADMIN): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Give the filesystem `size` bytes, keeping its content.
    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot remount {} with size={size}: {}",
            self.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process still holding a file there (the killed
        // server's last descriptors) must not keep the mount.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the filesystem at `dir` to the last byte; the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    for block in [64 * 1024, 1] {
        let bytes = vec![0x5a_u8; block];
        loop {
            match file.write(&bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
    }
    path
}

/// Where the binary's filesystem store keeps a committed blob.
fn blob_file(store: &Path, digest: &portcullis::oci::Digest) -> PathBuf {
    let hex = digest.hex();
    store
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// `skopeo copy` of `test/app:v1` through the server; every blob and the
/// manifest must arrive with their digests.
async fn skopeo_pull(served: &Served, image: &Image) {
    let dest = tempfile::tempdir().expect("dest");
    support::skopeo_copy_exact(
        &format!("docker://{}/test/app:v1", served.listen),
        &format!("dir:{}", dest.path().display()),
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo through portcullis: {e}\n{}", served.log_text()));
    let manifest = std::fs::read(dest.path().join("manifest.json")).expect("manifest");
    assert_eq!(manifest, image.manifest.bytes, "the manifest's bytes");
    for blob in image.blobs() {
        let copied = std::fs::read(dest.path().join(blob.digest.hex())).expect("blob file");
        assert!(copied == blob.bytes, "{}: the bytes skopeo got differ", blob.digest);
    }
}

async fn metrics_text(served: &Served) -> String {
    let r = client::get(&format!("http://{}/metrics", served.admin)).await;
    String::from_utf8_lossy(&r.bytes()).into_owned()
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Wait for the background commit of `digest` (it follows the response).
async fn committed(store: &Path, digest: &portcullis::oci::Digest) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if blob_file(store, digest).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn serve_on(registry: &Distribution, store: &Path) -> Served {
    let logs = tempfile::tempdir().expect("logs");
    binary::serve_in(&registry.url(), logs, store, &["--integrity-only"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_serves_pulls_uncached_counts_once_and_caches_again_when_space_returns() {
    support::require_tool("skopeo");
    let registry = Distribution::start().await;
    let image = oci_image(&[LAYER], 1610);
    registry.push_image("test/app", "v1", &image).await;
    let layer = &image.layers[0];
    let fs = Tmpfs::mount(SMALL_FS);
    let served = serve_on(&registry, fs.path()).await;

    for _ in 0..3 {
        skopeo_pull(&served, &image).await;
    }
    // A Range and a HEAD are served uncached too, the Range's bytes exact
    // and the HEAD's length verified.
    let url = format!("http://{}/v2/test/app/blobs/{}", served.listen, layer.digest);
    let part = client::request(http::Method::GET, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{}", served.log_text());
    assert_eq!(part.bytes(), layer.bytes.slice(100..200));
    let head = client::request(http::Method::HEAD, &url, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some(LAYER.to_string().as_str()));

    assert!(
        committed(fs.path(), &image.config.digest).await,
        "the small config blob still fits and is cached"
    );

    // Not even room for the readiness probe's file: still ready, since
    // pulls work, and a pull does.
    let filler = fill(fs.path());
    let ready = client::get(&format!("http://{}/readyz", served.admin)).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "a full disk keeps the server ready: {:?}",
        ready.bytes()
    );
    skopeo_pull(&served, &image).await;
    std::fs::remove_file(&filler).expect("remove the filler");

    assert!(
        !blob_file(fs.path(), &layer.digest).exists(),
        "the layer was not cached"
    );
    let text = metrics_text(&served).await;
    assert_eq!(
        metric(&text, r#"portcullis_store_write_failures_total{reason="no_space"}"#),
        1.0,
        "one condition, counted once across every pull:\n{text}"
    );
    assert_eq!(metric(&text, "portcullis_store_caching"), 0.0, "{text}");
    let log = served.log_text();
    assert_eq!(lines_with(&log, REFUSES), 1, "one WARN line:\n{log}");
    assert!(
        log.lines().any(|l| l.contains(REFUSES) && l.contains("WARN")),
        "at WARN:\n{log}"
    );
    assert_eq!(lines_with(&log, RESUMED), 0, "{log}");
    assert_eq!(
        std::fs::read_dir(fs.path().join("tmp")).map(|d| d.count()).unwrap_or(0),
        0,
        "no partial file left behind"
    );

    // Space returns: the next pull caches the layer, the condition ends.
    fs.resize(ROOMY_FS);
    skopeo_pull(&served, &image).await;
    assert!(committed(fs.path(), &layer.digest).await, "cached once there is room");
    let before = metric(
        &metrics_text(&served).await,
        r#"portcullis_cache_requests_total{route="blob",outcome="hit"}"#,
    );
    skopeo_pull(&served, &image).await;
    let text = metrics_text(&served).await;
    assert!(
        metric(&text, r#"portcullis_cache_requests_total{route="blob",outcome="hit"}"#) > before,
        "the next pull is a store hit:\n{text}"
    );
    assert_eq!(
        metric(&text, r#"portcullis_store_write_failures_total{reason="no_space"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "portcullis_store_caching"), 1.0, "{text}");
    let log = served.log_text();
    assert_eq!(lines_with(&log, RESUMED), 1, "one INFO line:\n{log}");
    assert_eq!(lines_with(&log, REFUSES), 1, "{log}");
    drop(served);
}

/// Control: the same pull on a tmpfs with room caches the layer at once,
/// and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_with_room_the_same_pull_caches() {
    support::require_tool("skopeo");
    let registry = Distribution::start().await;
    let image = oci_image(&[LAYER], 1610);
    registry.push_image("test/app", "v1", &image).await;
    let fs = Tmpfs::mount(ROOMY_FS);
    let served = serve_on(&registry, fs.path()).await;

    skopeo_pull(&served, &image).await;
    assert!(
        committed(fs.path(), &image.layers[0].digest).await,
        "the layer is cached"
    );
    let text = metrics_text(&served).await;
    assert!(
        !text.contains("portcullis_store_write_failures_total{"),
        "nothing counted:\n{text}"
    );
    assert_eq!(metric(&text, "portcullis_store_caching"), 1.0, "{text}");
    let log = served.log_text();
    assert_eq!(lines_with(&log, REFUSES), 0, "{log}");
    drop(served);
}

// === a bucket that refuses writes ===

use portcullis::store::backend::object::ObjectBackend;
use portcullis::store::backend::{Backend, BlobReader, BlobSink, Key, Listed, Object, PutMode, Written};
use portcullis::store::{BackendError, StoreError};

/// A backend whose writes (records and blobs) fail while `refusing` is on,
/// as an S3 bucket that is full, over quota or denies `PutObject`; while
/// `mid_upload` is on, a blob upload starts and fails after its first part.
#[derive(Debug)]
struct Refusing {
    inner: Arc<dyn Backend>,
    refusing: Arc<AtomicBool>,
    mid_upload: Arc<AtomicBool>,
}

/// Bytes a blob upload takes before it fails (`Refusing::mid_upload`).
const UPLOAD_FAILS_AFTER: u64 = 100 * 1024;

/// A blob sink that fails once it took [`UPLOAD_FAILS_AFTER`] bytes.
#[derive(Debug)]
struct FailingMidUpload {
    inner: Box<dyn BlobSink>,
    key: String,
    written: u64,
}

impl BlobSink for FailingMidUpload {
    fn reader(&self) -> Result<std::fs::File, StoreError> {
        self.inner.reader()
    }
    fn reserve(&mut self, len: u64) -> Result<(), StoreError> {
        self.inner.reserve(len)
    }
    fn write(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        self.written += chunk.len() as u64;
        if self.written > UPLOAD_FAILS_AFTER {
            return Err(BackendError::Object {
                action: "upload part",
                key: self.key.clone(),
                source: object_store::Error::Generic {
                    store: "refusing",
                    source: "the upload failed mid-way (test switch)".into(),
                },
            }
            .into());
        }
        self.inner.write(chunk)
    }
    fn commit(self: Box<Self>, proof: &portcullis::verify::DigestMatched) -> Result<bool, StoreError> {
        self.inner.commit(proof)
    }
}

impl Refusing {
    fn check(&self, action: &'static str, key: &Key) -> Result<(), StoreError> {
        if !self.refusing.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(BackendError::Object {
            action,
            key: key.to_string(),
            source: object_store::Error::Generic {
                store: "refusing",
                source: "the bucket refuses writes (test switch)".into(),
            },
        }
        .into())
    }
}

impl Backend for Refusing {
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn describe(&self) -> String {
        format!("refusing {}", self.inner.describe())
    }
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        self.inner.get(key)
    }
    fn put(&self, key: &Key, bytes: Bytes, mode: PutMode, durable: bool) -> Result<Written, StoreError> {
        self.check("put", key)?;
        self.inner.put(key, bytes, mode, durable)
    }
    fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &Key) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(prefix)
    }
    fn open(&self, key: &Key) -> Result<Option<(BlobReader, u64)>, StoreError> {
        self.inner.open(key)
    }
    fn blob_sink(&self, key: &Key, digest: &portcullis::oci::Digest) -> Result<Box<dyn BlobSink>, StoreError> {
        self.check("upload", key)?;
        let sink = self.inner.blob_sink(key, digest)?;
        if !self.mid_upload.load(Ordering::SeqCst) {
            return Ok(sink);
        }
        Ok(Box::new(FailingMidUpload {
            inner: sink,
            key: key.to_string(),
            written: 0,
        }))
    }
    fn quarantine(&self, key: &Key, name: &str) -> Result<String, StoreError> {
        self.inner.quarantine(key, name)
    }
    fn check_writable(&self) -> Result<(), StoreError> {
        self.check("put", &Key::new(["tmp", "ready"]).expect("key"))?;
        self.inner.check_writable()
    }
    fn available_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.inner.available_bytes()
    }
}

/// An in-process proxy (integrity-only) in front of `fake`, its store a
/// `Refusing` in-memory bucket.
fn proxy_over(
    fake: &FakeRegistry,
    refusing: &Arc<AtomicBool>,
    mid_upload: &Arc<AtomicBool>,
) -> (Arc<portcullis::proxy::Proxy>, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("data dir");
    let tmp = data.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let bucket = Arc::new(object_store::memory::InMemory::new());
    let inner: Arc<dyn Backend> = Arc::new(ObjectBackend::new(bucket, "cache", tmp, "memory".into()).expect("backend"));
    let backend: Arc<dyn Backend> = Arc::new(Refusing {
        inner,
        refusing: refusing.clone(),
        mid_upload: mid_upload.clone(),
    });
    let yaml = format!(
        "upstreams:\n  - {{ host: \"{}\", url: \"{}\", insecurePlainHttp: true }}\n",
        fake.host(),
        fake.url()
    );
    let overrides = portcullis::config::Overrides {
        data_dir: Some(data.path().to_owned()),
        integrity_only: true,
        ..Default::default()
    };
    let config = portcullis::config::Config::from_yaml(&yaml, "refusing bucket test", &overrides).expect("config");
    let options = portcullis::proxy::ProxyOptions {
        backend: Some(backend),
        ..Default::default()
    };
    let proxy = portcullis::proxy::Proxy::with_options(
        Arc::new(config),
        portcullis::telemetry::audit::AuditSink::memory(),
        options,
    )
    .expect("proxy");
    (proxy, data)
}

/// Pull `repo:v1` in-process: the manifest, then every blob's bytes (or
/// the error that ended a body).
async fn pull_in_process(
    proxy: &portcullis::proxy::Proxy,
    host: &str,
    repo: &str,
    image: &Image,
) -> Result<(), String> {
    let name: portcullis::oci::RepoName = repo.parse().expect("repo");
    let target = proxy.target(host, &name).expect("an allow-listed upstream");
    let reference = portcullis::oci::Reference::Tag("v1".parse().expect("tag"));
    let who = portcullis::telemetry::Requester {
        client: "127.0.0.1".into(),
        identity: "anonymous".into(),
    };
    let accept = http::HeaderValue::from_static(support::images::OCI_MANIFEST);
    let m = proxy
        .manifest(&target, &reference, Some(&accept), &who)
        .await
        .map_err(|e| format!("manifest: {e}"))?;
    assert_eq!(m.manifest.digest(), &image.manifest.digest);
    for blob in image.blobs() {
        get_blob(proxy, host, repo, blob).await?;
    }
    Ok(())
}

/// GET one blob in-process and compare its bytes.
async fn get_blob(
    proxy: &portcullis::proxy::Proxy,
    host: &str,
    repo: &str,
    blob: &support::images::Blob,
) -> Result<(), String> {
    let name: portcullis::oci::RepoName = repo.parse().expect("repo");
    let target = proxy.target(host, &name).expect("an allow-listed upstream");
    let served = proxy
        .blob(&target, &blob.digest, None, false)
        .await
        .map_err(|e| format!("blob {}: {e}", blob.digest))?;
    assert_eq!(served.size, blob.bytes.len() as u64);
    let body = served.body.expect("a GET has a body");
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("blob {} body: {e}", blob.digest))?
        .to_bytes();
    assert!(bytes == blob.bytes, "{}: the bytes served differ", blob.digest);
    Ok(())
}

async fn stored(proxy: &portcullis::proxy::Proxy, digest: &portcullis::oci::Digest) -> bool {
    let (store, d) = (proxy.store().clone(), digest.clone());
    tokio::task::spawn_blocking(move || store.blobs.contains(&d))
        .await
        .expect("task")
        .expect("store readable")
}

/// Wait for a background commit.
async fn eventually_stored(proxy: &portcullis::proxy::Proxy, digest: &portcullis::oci::Digest) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if stored(proxy, digest).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_refusing_writes_serves_pulls_uncached_and_caches_again_when_it_accepts() {
    let fake = FakeRegistry::start().await;
    let (control, image) = (oci_image(&[300 * 1024], 1620), oci_image(&[300 * 1024], 1621));
    fake.put_image("test/control", "v1", &control);
    fake.put_image("test/app", "v1", &image);
    let refusing = Arc::new(AtomicBool::new(false));
    let (proxy, _data) = proxy_over(&fake, &refusing, &Arc::new(AtomicBool::new(false)));
    let host = fake.host();
    let failures = |p: &portcullis::proxy::Proxy| {
        metric(
            &p.metrics().render(false),
            r#"portcullis_store_write_failures_total{reason="backend"}"#,
        )
    };
    let caching = |p: &portcullis::proxy::Proxy| metric(&p.metrics().render(false), "portcullis_store_caching");

    // Control: the bucket takes writes, the pull caches.
    pull_in_process(&proxy, &host, "test/control", &control)
        .await
        .expect("control pull");
    assert!(
        eventually_stored(&proxy, &control.layers[0].digest).await,
        "control cached"
    );
    assert_eq!((failures(&proxy), caching(&proxy)), (0.0, 1.0));

    // The bucket refuses: every pull works, nothing is cached, one count.
    refusing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        pull_in_process(&proxy, &host, "test/app", &image)
            .await
            .expect("a pull while the bucket refuses writes");
    }
    for blob in image.blobs() {
        assert!(!stored(&proxy, &blob.digest).await, "{} was not cached", blob.digest);
    }
    let layer = &image.layers[0];
    // Requests at once (a leader and followers of one refused download):
    // each is served, uncached.
    let together = (0..4).map(|_| get_blob(&proxy, &host, "test/app", layer));
    for r in futures_util::future::join_all(together).await {
        r.expect("a concurrent request while the bucket refuses writes");
    }
    assert!(!stored(&proxy, &layer.digest).await);
    assert_eq!(failures(&proxy), 1.0, "counted once for the condition");
    assert_eq!(caching(&proxy), 0.0);
    let gets_before = fake.blob_gets("test/app", &layer.digest);

    // Uncached bytes are verified all the same: a flipped byte aborts the
    // response (never completes it), and is counted as an integrity failure.
    let integrity = |p: &portcullis::proxy::Proxy| {
        metric(
            &p.metrics().render(false),
            r#"portcullis_integrity_failures_total{kind="blob"}"#,
        )
    };
    let integrity_before = integrity(&proxy);
    fake.set_fault(&layer.digest, Fault::FlipByte { at: 1000 });
    let err = pull_in_process(&proxy, &host, "test/app", &image)
        .await
        .expect_err("a wrong byte must not be served whole");
    assert!(err.contains("body"), "the body was aborted: {err}");
    assert_eq!(integrity(&proxy), integrity_before + 1.0);
    fake.clear_faults();
    assert!(
        fake.blob_gets("test/app", &layer.digest) > gets_before,
        "uncached: each pull fetched it again"
    );

    // The bucket accepts again: the next pull caches, the condition ends.
    refusing.store(false, Ordering::SeqCst);
    pull_in_process(&proxy, &host, "test/app", &image)
        .await
        .expect("pull after the bucket accepts again");
    assert!(eventually_stored(&proxy, &layer.digest).await, "cached again");
    assert_eq!((failures(&proxy), caching(&proxy)), (1.0, 1.0));
    let gets = fake.blob_gets("test/app", &layer.digest);
    pull_in_process(&proxy, &host, "test/app", &image)
        .await
        .expect("a pull from the store");
    assert_eq!(fake.blob_gets("test/app", &layer.digest), gets, "served from the store");
}

/// A write that fails in the middle of a download (here the bucket; on a
/// disk, an upstream without a length to reserve): responses already have
/// bytes, so that download fails, its response is aborted and never
/// completed, nothing is committed, and the condition is counted once.
/// Once uploads work again, the next pull caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_failing_mid_upload_aborts_that_download_and_counts_the_condition() {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[300 * 1024], 1630);
    fake.put_image("test/app", "v1", &image);
    let mid_upload = Arc::new(AtomicBool::new(true));
    let (proxy, _data) = proxy_over(&fake, &Arc::new(AtomicBool::new(false)), &mid_upload);
    let host = fake.host();
    let layer = &image.layers[0];
    let failures = |p: &portcullis::proxy::Proxy| {
        metric(
            &p.metrics().render(false),
            r#"portcullis_store_write_failures_total{reason="backend"}"#,
        )
    };

    for _ in 0..2 {
        let err = pull_in_process(&proxy, &host, "test/app", &image)
            .await
            .expect_err("the download whose upload failed is aborted");
        assert!(err.contains(&layer.digest.to_string()), "the layer's response: {err}");
        assert!(!stored(&proxy, &layer.digest).await, "nothing committed");
    }
    assert_eq!(failures(&proxy), 1.0, "one condition");
    assert_eq!(metric(&proxy.metrics().render(false), "portcullis_store_caching"), 0.0);

    mid_upload.store(false, Ordering::SeqCst);
    pull_in_process(&proxy, &host, "test/app", &image)
        .await
        .expect("uploads work again");
    assert!(eventually_stored(&proxy, &layer.digest).await, "cached");
    assert_eq!(failures(&proxy), 1.0);
    assert_eq!(metric(&proxy.metrics().render(false), "portcullis_store_caching"), 1.0);
}
