//! `kill -9` of the real binary at many points of downloads, commits and
//! evictions (a cap below what the pulls need keeps evicting): after every
//! kill the store holds nothing wrong (`store verify`), a restart cleans
//! the partial files, and the content then pulls byte for byte.

use std::time::Duration;

use crate::support::binary;
use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{Image, oci_image};

const LAYER: usize = 6 << 20;
const KILLS: u64 = 16;

fn verify_store(store: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["store", "verify", "--data-dir"])
        .arg(store)
        .output()
        .expect("store verify");
    assert!(
        out.status.success(),
        "store verify after kill -9: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_many_points_leaves_nothing_wrong() {
    let registry = Distribution::start().await;
    let images: Vec<Image> = (0..4).map(|i| oci_image(&[LAYER, 64 * 1024], 1400 + i)).collect();
    for (i, image) in images.iter().enumerate() {
        registry.push_image(&format!("test/c{i}"), "v1", image).await;
    }
    let work = tempfile::tempdir().expect("work dir");
    let store = work.path().join("store");
    let config = work.path().join("config.yaml");
    // Room for two images: every round evicts.
    std::fs::write(&config, format!("storage:\n  maxBytes: {}\n", 2 * LAYER + (512 << 10))).expect("config");
    let config = config.to_string_lossy().into_owned();
    let mut rng = fastrand::Rng::with_seed(14);
    let mut killed_mid_download = 0;

    for round in 0..KILLS {
        let logs = tempfile::tempdir().expect("logs");
        let mut served = binary::serve_in(
            &registry.url(),
            logs,
            &store,
            &["--integrity-only", "--config", &config],
        )
        .await;
        let tmp_left = std::fs::read_dir(store.join("tmp")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            tmp_left, 0,
            "round {round}: partial files of the killed run were cleaned at start"
        );
        let tasks = pull_all(&format!("http://{}", served.listen), &images);
        // Somewhere in downloads, commits or evictions.
        tokio::time::sleep(Duration::from_millis(rng.u64(1..120))).await;
        served.child.kill().await.expect("kill -9");
        if std::fs::read_dir(store.join("tmp")).map(|d| d.count()).unwrap_or(0) > 0 {
            killed_mid_download += 1;
        }
        for t in tasks {
            let _ = t.await;
        }
        verify_store(&store);
    }

    eprintln!("{killed_mid_download} of {KILLS} kills left partial downloads behind");
    assert!(killed_mid_download > 0, "no kill landed in the middle of a download");

    // After the last kill: a restart serves every byte right.
    let logs = tempfile::tempdir().expect("logs");
    let served = binary::serve_in(
        &registry.url(),
        logs,
        &store,
        &["--integrity-only", "--config", &config],
    )
    .await;
    let base = format!("http://{}", served.listen);
    for (i, image) in images.iter().enumerate() {
        for blob in image.blobs() {
            let r = client::get(&format!("{base}/v2/test/c{i}/blobs/{}", blob.digest)).await;
            assert_eq!(r.bytes(), blob.bytes, "c{i} {}", blob.digest);
        }
    }
    drop(served);
    verify_store(&store);
}
