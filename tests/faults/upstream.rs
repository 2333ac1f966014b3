//! Upstream 5xx, 429, slow bodies and headers, and outages with the stale tag fallback.

use super::common::*;

// --- upstream errors and retries ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_5xx_are_retried() {
    let (fake, proxy, image) = setup(&[100_000], 16).await;
    let (m, layer) = (&image.manifest, &image.layers[0]);
    fake.set_fault(
        &m.digest,
        Fault::Status {
            code: 500,
            times: 1,
            retry_after: None,
        },
    );
    fake.set_fault(
        &layer.digest,
        Fault::Status {
            code: 503,
            times: 2,
            retry_after: None,
        },
    );

    assert_good_manifest(&proxy, &m.digest, m).await;
    assert_eq!(fake.manifest_requests("GET", REPO, &m.digest), 2);
    assert_good_blob(&proxy, layer).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 3);
    assert_served_from_cache(&fake, &proxy, layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_503_is_a_gateway_error() {
    let (fake, proxy, image) = setup(&[100_000], 17).await;
    let layer = &image.layers[0];
    fake.set_fault(EVERYWHERE, Fault::always(503));

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    assert_eq!(fake.blob_gets(REPO, &layer.digest), ATTEMPTS, "bounded retries");
    assert_blob_not_stored(&proxy, &layer.digest).await;

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    assert_eq!(fake.manifest_requests("HEAD", REPO, "v1"), ATTEMPTS);
    assert!(!proxy.has_manifest(&image.manifest.digest));

    fake.clear_faults();
    assert_good_manifest(&proxy, "v1", &image.manifest).await;
    assert_good_blob(&proxy, layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_is_passed_on_with_retry_after() {
    let (fake, proxy, image) = setup(&[100_000], 18).await;
    let layer = &image.layers[0];
    fake.set_fault(
        EVERYWHERE,
        Fault::Status {
            code: 429,
            times: usize::MAX,
            retry_after: Some(7),
        },
    );

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(
        fake.manifest_requests("HEAD", REPO, "v1"),
        1,
        "429 is not retried by the proxy"
    );

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_error(&resp, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 1);
    assert_blob_not_stored(&proxy, &layer.digest).await;
}

// --- slow upstreams -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_beyond_idle_timeout_is_aborted() {
    let (fake, proxy, image) = setup(&[4 * CHUNK], 19).await;
    let layer = &image.layers[0];
    fake.set_fault(
        &layer.digest,
        Fault::SlowBody {
            delay: Duration::from_millis(2500),
        },
    );

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, TIMED_OUT);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_served_from_cache(&fake, &proxy, layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_beyond_header_timeout_are_504() {
    let (fake, proxy, image) = setup(&[1000], 20).await;
    let (m, layer) = (&image.manifest, &image.layers[0]);
    fake.set_fault(
        EVERYWHERE,
        Fault::SlowHeaders {
            delay: Duration::from_millis(1500),
        },
    );

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_error(&resp, StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE");
    assert_eq!(fake.blob_gets(REPO, &layer.digest), ATTEMPTS);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    let resp = client::get(&manifest_url(&proxy, &m.digest)).await;
    assert_error(&resp, StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE");
    assert!(!proxy.has_manifest(&m.digest));

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_good_manifest(&proxy, &m.digest, m).await;
}

// --- upstream outages -----------------------------------------------------------------

async fn assert_stale(proxy: &TestProxy, m: &Blob) {
    for method in [Method::GET, Method::HEAD] {
        let resp = client::request(method.clone(), &manifest_url(proxy, "v1"), &[]).await;
        assert_eq!(resp.status, StatusCode::OK, "{method}: {resp:?}");
        assert_eq!(
            resp.header("docker-content-digest"),
            Some(m.digest.to_string().as_str())
        );
        let warning = resp.header("warning").expect("Warning header on a stale answer");
        assert!(warning.starts_with("299 - \""), "{warning}");
        assert!(warning.contains("last verified digest"), "{warning}");
        if method == Method::GET {
            assert_eq!(resp.bytes(), m.bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_serves_last_verified_tag_with_warning() {
    let (mut fake, proxy, image) = setup(&[1000], 21).await;
    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("warning"), None);

    fake.stop().await;
    assert_stale(&proxy, &image.manifest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503_serves_last_verified_tag_with_warning() {
    let (fake, proxy, image) = setup(&[1000], 22).await;
    assert_good_manifest(&proxy, "v1", &image.manifest).await;

    fake.set_fault(EVERYWHERE, Fault::always(503));
    assert_stale(&proxy, &image.manifest).await;
    // A tag never seen has nothing to fall back on.
    let resp = client::get(&manifest_url(&proxy, "v2")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
}

/// The stale fallback must name the last *verified* digest: a tag that moved
/// to content that failed verification does not replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fallback_ignores_a_digest_that_failed_verification() {
    let (mut fake, proxy, a) = setup(&[1000], 27).await;
    assert_good_manifest(&proxy, "v1", &a.manifest).await;

    let b = oci_image(&[2000], 28);
    fake.tag(REPO, "v1", &b.manifest);
    fake.set_fault(&b.manifest.digest, Fault::WrongManifestBytes);
    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNKNOWN");

    fake.stop().await;
    assert_stale(&proxy, &a.manifest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_refused_once_older_than_max_staleness() {
    let mut fake = FakeRegistry::start().await;
    let image = oci_image(&[1000], 23);
    fake.put_image(REPO, "v1", &image);
    let proxy = proxy_for(&fake, &format!("{FAST}cache:\n  maxStaleness: 2s\n")).await;
    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_eq!(resp.status, StatusCode::OK);

    fake.stop().await;
    // Within the bound: the last verified digest, with the warning.
    assert_stale(&proxy, &image.manifest).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Past it: refused as the upstream failure it is.
    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{resp:?}");
    assert_eq!(resp.header("warning"), None);
}
