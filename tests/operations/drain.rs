//! Graceful restart: SIGTERM in the middle of a large pull. The pull
//! completes with the right digest, `/readyz` fails at once, the registry
//! port stops accepting, and the process exits 0 with the blob committed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::oci::{Algorithm, Digest};

use crate::support::binary;
use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{OCI_MANIFEST, oci_image};

const LAYER: usize = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_pull_lets_it_finish() {
    let registry = Distribution::start().await;
    let image = oci_image(&[LAYER], 1102);
    registry.push_image("test/big", "v1", &image).await;
    let served = binary::serve(&registry.url(), &["--integrity-only"]).await;
    let base = format!("http://{}", served.listen);
    let manifest = client::request(
        http::Method::GET,
        &format!("{base}/v2/test/big/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(manifest.status, StatusCode::OK);

    let layer = &image.layers[0];
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("{base}/v2/test/big/blobs/{}", layer.digest)
        .parse()
        .expect("uri");
    let resp = http.get(uri).await.expect("blob response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = Vec::with_capacity(LAYER);
    while received.len() < (1 << 20) {
        let frame = body.frame().await.expect("a frame").expect("body bytes");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }

    served.signal("TERM");
    let admin = format!("http://{}/readyz", served.admin);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client::get(&admin).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(String::from_utf8_lossy(&r.bytes()).contains("draining"));
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {} after SIGTERM", r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(&served.listen).await.is_err(),
        "the registry port still accepts after SIGTERM"
    );

    // The pull that was in flight completes, byte for byte.
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the in-flight pull completes");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(received.len(), LAYER);
    assert_eq!(Digest::of(Algorithm::Sha256, &received), layer.digest);
    drop(body);
    drop(http);

    let mut served = served;
    let status = tokio::time::timeout(Duration::from_secs(30), served.child.wait())
        .await
        .expect("exits after draining")
        .expect("exit status");
    assert!(status.success(), "exit {status:?}; log:\n{}", served.log_text());
    let hex = layer.digest.hex();
    let stored = served.data.path().join("store/blobs/sha256").join(&hex[..2]).join(&hex);
    assert!(stored.is_file(), "the verified blob was committed before exit");
    assert!(served.log_text().contains("drained"), "{}", served.log_text());
}
