//! The admin listener: probes, and metrics that move by exact amounts
//! under a scripted workload, read by the real Prometheus parser in both
//! exposition formats.

use http::StatusCode;

use crate::prometheus::{self, Sample, value};
use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{OCI_MANIFEST, oci_image};
use crate::support::proxy::TestProxy;

/// Metrics and probes live on the admin port only: registry clients never
/// see them, and a probe never queues behind pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_on_the_admin_port_only() {
    let registry = Distribution::start().await;
    let proxy = TestProxy::with_default_upstream(&registry.url()).await;

    let health = client::get(&proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(&health.bytes()[..], b"ok\n");
    let ready = client::get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(client::head(&proxy.admin_url("/readyz")).await.status, StatusCode::OK);
    assert_eq!(
        client::get(&proxy.admin_url("/nothing")).await.status,
        StatusCode::NOT_FOUND
    );

    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = client::get(&proxy.url(path)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path} is not on the registry port");
    }

    // A store that cannot take a file is not ready (root ignores file
    // modes, so the spool directory is replaced by a plain file).
    let tmp = proxy.data_dir.path().join("tmp");
    std::fs::remove_dir_all(&tmp).expect("remove tmp");
    std::fs::write(&tmp, b"not a directory").expect("block tmp");
    let r = client::get(&proxy.admin_url("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&r.bytes()).into_owned();
    assert!(text.contains("store not writable"), "{text}");
    assert_eq!(
        client::get(&proxy.admin_url("/healthz")).await.status,
        StatusCode::OK,
        "still alive"
    );

    std::fs::remove_file(&tmp).expect("unblock tmp");
    std::fs::create_dir(&tmp).expect("restore tmp");
    assert_eq!(
        client::get(&proxy.admin_url("/readyz")).await.status,
        StatusCode::OK,
        "ready again"
    );
}

/// A scripted workload (a manifest, its three blobs cold then warm, a missing
/// blob, the version check) moves each counter by exactly what it did,
/// and the exposition parses in both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exact_amounts() {
    let registry = Distribution::start().await;
    let image = oci_image(&[300_000, 5_000], 1101);
    registry.push_image("test/app", "v1", &image).await;
    let proxy = TestProxy::with_default_upstream(&registry.url()).await;
    let host = registry.host();

    assert_eq!(client::get(&proxy.url("/v2/")).await.status, StatusCode::OK);
    let m = client::request(
        http::Method::GET,
        &proxy.url("/v2/test/app/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    let blob_bytes: usize = image.blobs().iter().map(|b| b.bytes.len()).sum();
    let blobs = image.blobs().len() as f64; // the config and two layers
    for blob in image.blobs() {
        let url = proxy.url(&format!("/v2/test/app/blobs/{}", blob.digest));
        assert_eq!(client::get(&url).await.bytes(), blob.bytes, "cold");
        assert!(proxy.stores_blob(&blob.digest).await, "committed");
        assert_eq!(client::get(&url).await.bytes(), blob.bytes, "warm");
    }
    let missing = format!("/v2/test/app/blobs/sha256:{}", "0".repeat(64));
    let not_found = client::get(&proxy.url(&missing)).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let error_body = not_found.bytes().len(); // the OCI error JSON counts as served

    let scrape = |openmetrics: bool| {
        let url = proxy.admin_url("/metrics");
        async move {
            let accept = if openmetrics {
                "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
            } else {
                "text/plain"
            };
            let r = client::request(http::Method::GET, &url, &[("accept", accept)]).await;
            assert_eq!(r.status, StatusCode::OK);
            let content_type = r.header("content-type").unwrap_or_default().to_owned();
            let expected = if openmetrics {
                "application/openmetrics-text"
            } else {
                "text/plain"
            };
            assert!(content_type.starts_with(expected), "{content_type}");
            prometheus::parse(&String::from_utf8_lossy(&r.bytes()), openmetrics)
        }
    };
    for openmetrics in [false, true] {
        let samples = scrape(openmetrics).await;
        let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
        let req = |route: &str, status: &str| {
            v(
                "portcullis_requests_total",
                &[("route", route), ("method", "GET"), ("status", status)],
            )
        };
        let format = if openmetrics { "OpenMetrics" } else { "classic" };
        assert_eq!(req("base", "2xx"), 1.0, "{format}");
        assert_eq!(req("manifest", "2xx"), 1.0, "{format}");
        assert_eq!(req("blob", "2xx"), 2.0 * blobs, "{format}");
        assert_eq!(req("blob", "4xx"), 1.0, "{format}");
        let cache = |route: &str, outcome: &str| {
            v(
                "portcullis_cache_requests_total",
                &[("route", route), ("outcome", outcome)],
            )
        };
        assert_eq!(cache("blob", "miss"), blobs, "{format}");
        assert_eq!(cache("blob", "hit"), blobs, "{format}");
        assert_eq!(cache("manifest", "miss"), 1.0, "{format}");
        assert_eq!(
            v("portcullis_request_duration_seconds_count", &[("route", "blob")]),
            2.0 * blobs + 1.0,
            "{format}"
        );
        let served = (image.manifest.bytes.len() + 2 * blob_bytes + error_body) as f64;
        assert_eq!(
            v("portcullis_served_bytes_total", &[("registry", &host)]),
            served,
            "{format}"
        );
        let fetched = (image.manifest.bytes.len() + blob_bytes) as f64;
        assert_eq!(
            v("portcullis_upstream_fetched_bytes_total", &[("registry", &host)]),
            fetched,
            "{format}: every byte fetched once"
        );
        assert_eq!(
            v(
                "portcullis_upstream_requests_total",
                &[("registry", &host), ("status", "404")]
            ),
            1.0,
            "{format}"
        );
        assert_eq!(
            v(
                "portcullis_admissions_total",
                &[("verdict", "allow"), ("rule", "-"), ("mode", "integrity-only")]
            ),
            1.0,
            "{format}"
        );
        assert_eq!(v("portcullis_downloads_in_flight", &[]), 0.0, "{format}");
        assert_eq!(v("portcullis_store_bytes", &[]), blob_bytes as f64, "{format}");
        assert_eq!(
            v("portcullis_policy_info", &[("revision", "integrity-only")]),
            1.0,
            "{format}"
        );
        assert_eq!(v("portcullis_integrity_failures_total", &[]), 0.0, "{format}");
        assert_types(&samples);
    }
}

/// The families a dashboard relies on have the right types.
fn assert_types(samples: &[Sample]) {
    let type_of = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.family_type.clone())
            .unwrap_or_else(|| panic!("no sample named {name}"))
    };
    assert_eq!(type_of("portcullis_requests_total"), "counter");
    assert_eq!(type_of("portcullis_request_duration_seconds_bucket"), "histogram");
    assert_eq!(type_of("portcullis_downloads_in_flight"), "gauge");
}
