//! `storage.maxBytes`: least recently served first, and the store keeps
//! serving what it evicted.

use http::StatusCode;

use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{Image, OCI_MANIFEST, oci_image};
use crate::support::proxy::TestProxy;

pub const LAYER: usize = 100 * 1024;

/// Pull an image's manifest and blobs through the proxy, checking bytes.
pub async fn pull(proxy: &TestProxy, repo: &str, image: &Image) {
    let m = client::request(
        http::Method::GET,
        &proxy.url(&format!("/v2/{repo}/manifests/v1")),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    for blob in image.blobs() {
        let r = client::get(&proxy.url(&format!("/v2/{repo}/blobs/{}", blob.digest))).await;
        assert_eq!(r.bytes(), blob.bytes, "{repo} {}", blob.digest);
    }
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_served_blobs_go_first_and_come_back_verified() {
    let registry = Distribution::start().await;
    let images: Vec<Image> = (0..4).map(|i| oci_image(&[LAYER], 1200 + i)).collect();
    for (i, image) in images.iter().enumerate() {
        registry.push_image(&format!("test/app{i}"), "v1", image).await;
    }
    // Room for three images' layers (configs are a few hundred bytes).
    let cap = 3 * LAYER + 4096;
    let yaml = format!(
        "{}storage:\n  maxBytes: {cap}\n",
        Distribution::routing_config(&registry)
    );
    let proxy = TestProxy::start(&yaml).await;

    for (i, image) in images.iter().take(3).enumerate() {
        pull(&proxy, &format!("test/app{i}"), image).await;
        assert!(proxy.stores_blob(&image.layers[0].digest).await);
    }
    // app0 is served again: app1 is now the least recently served.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    pull(&proxy, "test/app0", &images[0]).await;
    pull(&proxy, "test/app3", &images[3]).await;
    assert!(proxy.stores_blob(&images[3].layers[0].digest).await);

    // Eviction runs in the commit that went over the cap.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while proxy.has_blob(&images[1].layers[0].digest) {
        assert!(std::time::Instant::now() < deadline, "app1's layer was not evicted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(proxy.has_blob(&images[0].layers[0].digest), "recently served: kept");
    assert!(proxy.has_blob(&images[3].layers[0].digest), "just committed: kept");
    // The metrics are updated once the commit that evicted returns, a
    // moment after the file is gone: wait for them.
    let text = loop {
        let text = String::from_utf8_lossy(&client::get(&proxy.admin_url("/metrics")).await.bytes()).into_owned();
        if metric(&text, "portcullis_store_evictions_total") >= 1.0 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no eviction counted: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let held = metric(&text, "portcullis_store_bytes");
    assert!(held <= cap as f64, "held {held} > cap {cap}");
    let on_disk = bytes_under(&proxy.data_dir.path().join("blobs"));
    assert_eq!(on_disk as f64, held, "the gauge is what the disk holds");

    // Evicted content is fetched again and verified.
    pull(&proxy, "test/app1", &images[1]).await;
    assert!(proxy.stores_blob(&images[1].layers[0].digest).await);
}

/// Bytes of the regular files under `dir`.
pub fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                bytes_under(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
