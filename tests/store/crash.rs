//! `kill -9` of the real binary at many points of downloads, commits and
//! evictions (a cap below what the pulls need keeps evicting), on each
//! backend: the local filesystem, and a real S3 server (s3s-fs, in this
//! process, so it outlives every kill). After every kill the store holds
//! nothing wrong (`store verify` with the same configuration, exit 0), a
//! restart cleans the partial files, and the content then pulls byte for
//! byte. On S3 the killed replica's download leases expire (the pull after
//! the last restart completes); what a kill leaves in the bucket is only
//! incomplete multipart uploads (never listed, never served), every one
//! the killed run journaled is aborted by the next start (the rest, killed
//! while being created, are the bucket lifecycle rule's), and a run that
//! is not killed leaves none.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use portcullis::oci::{Algorithm, Digest};

use crate::support::binary;
use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{Image, oci_image};
use crate::support::s3::S3Server;

const KILLS: u64 = 16;
const BUCKET: &str = "portcullis";

/// Where the store lives, and what differs between the backends.
enum Backend {
    Fs,
    S3(S3Server),
}

impl Backend {
    /// One layer per image big enough to be caught mid-download; on S3 more
    /// than one 8 MiB part, so that kills land between uploaded parts.
    fn layer(&self) -> usize {
        match self {
            Backend::Fs => 6 << 20,
            Backend::S3(_) => 10 << 20,
        }
    }

    /// How long after starting the pulls a kill comes (milliseconds).
    fn kill_window(&self) -> std::ops::Range<u64> {
        match self {
            Backend::Fs => 1..120,
            Backend::S3(_) => 1..400,
        }
    }

    fn config_yaml(&self, max_bytes: u64) -> String {
        match self {
            Backend::Fs => format!("storage:\n  maxBytes: {max_bytes}\n"),
            // One replica at a time: no grace for other replicas' serves,
            // so every round evicts as on the filesystem.
            Backend::S3(s3) => s3.storage_yaml(BUCKET, "cache/", Some(max_bytes)) + "    evictionGrace: 0s\n",
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Fs => Vec::new(),
            Backend::S3(s3) => s3.env(),
        }
    }

    /// Bytes of the committed blobs (`blobs/` in the data directory, or
    /// under the prefix in the s3s-fs bucket's directory).
    fn blob_bytes(&self, store: &std::path::Path) -> u64 {
        let mut dirs = vec![match self {
            Backend::Fs => store.join("blobs"),
            Backend::S3(s3) => s3.root.path().join(BUCKET).join("cache").join("blobs"),
        }];
        let mut total = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match entry.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(entry.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
        }
        total
    }

    /// Wait until every download lease in the bucket has expired (their
    /// holders were killed): the next run may then download any blob,
    /// instead of waiting for a dead holder (which the last run checks).
    async fn wait_out_leases(&self) {
        let Backend::S3(s3) = self else { return };
        let mut dirs = vec![s3.root.path().join(BUCKET).join("cache").join("leases")];
        let mut latest = 0u64;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(lease) =
                    serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap_or_default())
                {
                    latest = latest.max(lease["expires"].as_u64().unwrap_or(0));
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(latest.saturating_sub(now) + 50)).await;
    }

    /// The ids of multipart uploads started and neither completed nor
    /// aborted: s3s-fs keeps one `.upload-<id>.json` per upload in its root
    /// (and the parts beside it as `.upload_id-<id>.part-<n>`).
    fn open_uploads(&self) -> Vec<String> {
        let Backend::S3(s3) = self else { return Vec::new() };
        std::fs::read_dir(s3.root.path())
            .expect("s3 root")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| Some(n.strip_prefix(".upload-")?.strip_suffix(".json")?.to_owned()))
            .collect()
    }
}

/// A store, its configuration and its backend, kept across kills.
struct Subject {
    backend: Backend,
    store: PathBuf,
    config: String,
    _work: tempfile::TempDir,
}

impl Subject {
    fn new(backend: Backend, max_bytes: u64) -> Subject {
        let work = tempfile::tempdir().expect("work dir");
        let store = work.path().join("store");
        let config = work.path().join("config.yaml");
        std::fs::write(&config, backend.config_yaml(max_bytes)).expect("config");
        Subject {
            backend,
            store,
            config: config.to_string_lossy().into_owned(),
            _work: work,
        }
    }

    async fn serve(&self, upstream: &str) -> binary::Served {
        let logs = tempfile::tempdir().expect("logs");
        binary::serve_with_env(
            upstream,
            logs,
            &self.store,
            &["--integrity-only", "--config", &self.config],
            &self.backend.env(),
        )
        .await
    }

    /// `store verify` with the server's configuration (on S3: the bucket)
    /// finds nothing wrong and exits 0.
    async fn verify(&self, when: &str) {
        let args = ["store", "verify", "--config", &self.config, "--data-dir"].map(std::ffi::OsStr::new);
        let args: Vec<&std::ffi::OsStr> = args.into_iter().chain([self.store.as_os_str()]).collect();
        let (code, out, err) = binary::run_with_env(&args, None, Duration::from_secs(60), &self.backend.env()).await;
        assert_eq!(code, 0, "store verify {when}: {out}{err}");
        assert!(
            out.contains("ok: every file hashes to its digest") && !out.contains("MISMATCH"),
            "store verify {when}: {out}"
        );
    }

    /// The upload ids a killed run journaled in its temp directory (the
    /// next start aborts them).
    fn journaled_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.store.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "upload"))
            .filter_map(|e| {
                let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some(entry["id"].as_str()?.to_owned())
            })
            .collect()
    }

    /// None of `journaled` is still open (the start that just happened
    /// aborted them).
    fn assert_aborted(&self, journaled: &[String], when: &str) {
        let open = self.backend.open_uploads();
        let left: Vec<&String> = journaled.iter().filter(|id| open.contains(id)).collect();
        assert!(left.is_empty(), "{when}: journaled uploads still open: {left:?}");
    }

    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.store.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// GET `url` to the end; every failure is expected (the process dies).
async fn fetch_ignoring_errors(url: String) {
    use http_body_util::BodyExt as _;
    let http: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let Ok(uri) = url.parse::<http::Uri>() else { return };
    if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(20), http.get(uri)).await {
        let _ = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect()).await;
    }
}

/// Start every manifest and blob GET at once.
fn pull_all(base: &str, images: &[Image]) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let mut urls = vec![format!("{base}/v2/test/c{i}/manifests/v1")];
        urls.extend(
            image
                .blobs()
                .iter()
                .map(|b| format!("{base}/v2/test/c{i}/blobs/{}", b.digest)),
        );
        tasks.extend(urls.into_iter().map(|u| tokio::spawn(fetch_ignoring_errors(u))));
    }
    tasks
}

/// Kill the binary `KILLS` times at random points of pulling four images
/// (room for two), checking the store after each kill, then pull every
/// blob from a restarted binary.
async fn kill_9_at_many_points(backend: Backend, seed: u64) {
    let started = Instant::now();
    let layer = backend.layer();
    let registry = Distribution::start().await;
    let images: Vec<Image> = (0..4).map(|i| oci_image(&[layer, 64 * 1024], 1400 + i)).collect();
    for (i, image) in images.iter().enumerate() {
        registry.push_image(&format!("test/c{i}"), "v1", image).await;
    }
    // Room for two images: every round evicts.
    let cap = 2 * layer as u64 + (512 << 10);
    let subject = Subject::new(backend, cap);
    let window = subject.backend.kill_window();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut killed_mid_download = 0;
    // Uploads the last killed run journaled, and how many in all.
    let mut journaled: Vec<String> = Vec::new();
    let mut journaled_total = 0;

    for round in 0..KILLS {
        // On S3 the killed runs' leases keep their blobs from the next runs
        // for up to 10 s; twice, let them expire so that kills land in
        // downloads of every blob.
        if round % 6 == 5 {
            subject.backend.wait_out_leases().await;
        }
        let mut served = subject.serve(&registry.url()).await;
        assert_eq!(
            subject.tmp_files(),
            0,
            "round {round}: partial files of the killed run were cleaned at start"
        );
        subject.assert_aborted(&journaled, &format!("round {round}"));
        let tasks = pull_all(&format!("http://{}", served.listen), &images);
        // Somewhere in downloads, commits or evictions.
        tokio::time::sleep(Duration::from_millis(rng.u64(window.clone()))).await;
        served.child.kill().await.expect("kill -9");
        if subject.tmp_files() > 0 {
            killed_mid_download += 1;
        }
        journaled = subject.journaled_uploads();
        journaled_total += journaled.len();
        for t in tasks {
            let _ = t.await;
        }
        subject.verify(&format!("after kill {round}")).await;
    }
    let orphans = subject.backend.open_uploads();
    eprintln!(
        "{killed_mid_download} of {KILLS} kills left partial downloads behind; {journaled_total} uploads journaled \
         by killed runs, {} open now",
        orphans.len()
    );
    assert!(killed_mid_download > 0, "no kill landed in the middle of a download");

    // After the last kill: a restart serves every byte right (on S3, once
    // the killed replica's leases have expired: the pulls wait for that,
    // at most one lease time to live).
    let pulled = Instant::now();
    let mut served = subject.serve(&registry.url()).await;
    subject.assert_aborted(&journaled, "the last start");
    let base = format!("http://{}", served.listen);
    for (i, image) in images.iter().enumerate() {
        for blob in image.blobs() {
            let url = format!("{base}/v2/test/c{i}/blobs/{}", blob.digest);
            let r = tokio::time::timeout(Duration::from_secs(30), client::get(&url))
                .await
                .unwrap_or_else(|_| panic!("c{i} {}: blocked past any lease's expiry", blob.digest));
            assert_eq!(r.status, http::StatusCode::OK, "c{i} {}", blob.digest);
            assert_eq!(Digest::of(Algorithm::Sha256, &r.bytes()), blob.digest, "c{i}");
            assert_eq!(r.bytes(), blob.bytes, "c{i} {}", blob.digest);
        }
    }
    eprintln!("the pull after the last kill took {:?}", pulled.elapsed());
    // A clean stop (SIGTERM: commits in flight finish).
    served.signal("TERM");
    let stopped = tokio::time::timeout(Duration::from_secs(60), served.child.wait()).await;
    assert!(matches!(stopped, Ok(Ok(_))), "SIGTERM: {stopped:?}");
    subject.verify("after the last run").await;
    let held = subject.backend.blob_bytes(&subject.store);
    assert!(held <= cap, "the cap held (evictions ran): {held} > {cap}");
    // A run that was not killed aborted every upload it did not complete
    // (an eviction or a failed download drops its sink): no new orphans.
    // What is left was killed while being created, before its journal
    // entry: the bucket's lifecycle rule is for those.
    let after = subject.backend.open_uploads();
    assert!(
        after.iter().all(|u| orphans.contains(u)),
        "uploads left by a run that was not killed: {:?}",
        after.iter().filter(|u| !orphans.contains(u)).collect::<Vec<_>>()
    );
    eprintln!("{} uploads left that no journal named", after.len());
    eprintln!("{:?} in all", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_many_points_leaves_nothing_wrong() {
    kill_9_at_many_points(Backend::Fs, 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_many_points_on_s3_leaves_nothing_wrong() {
    kill_9_at_many_points(Backend::S3(S3Server::start(&[BUCKET])), 15).await;
}
