//! Fault injection: a fake upstream that misbehaves on purpose, and exact
//! assertions on what the client gets, what the proxy stores (nothing wrong,
//! ever) and how it recovers once the upstream behaves again.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::oci::{Algorithm, Digest};
use support::client::{self, Resp};
use support::fake::{CHUNK, EVERYWHERE, FakeRegistry, Fault};
use support::images::{Blob, Image, OCI_LAYER, oci_image, random_bytes, referrer};
use support::proxy::TestProxy;

const REPO: &str = "test/app";

/// Short timeouts and fast retries so faults resolve quickly.
const FAST: &str = "  bodyIdleTimeout: 1s\n  responseHeaderTimeout: 1s\n  retryAttempts: 3\n  retryBackoff: 10ms\n";
const ATTEMPTS: usize = 3;

// --- helpers -------------------------------------------------------------------

/// A proxy whose default upstream is `fake`, with `defaults` as its
/// `upstreamDefaults` block.
async fn proxy_for(fake: &FakeRegistry, defaults: &str) -> TestProxy {
    let host = fake.host();
    let yaml = format!(
        "defaultUpstream: {host}\nupstreams:\n  - host: {host}\n    url: {url}\n    insecurePlainHttp: true\nupstreamDefaults:\n{defaults}",
        url = fake.url()
    );
    TestProxy::start(&yaml).await
}

/// A fake with one image tagged `v1` and a proxy in front of it.
async fn setup(layers: &[usize], seed: u64) -> (FakeRegistry, TestProxy, Image) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(layers, seed);
    fake.put_image(REPO, "v1", &image);
    let proxy = proxy_for(&fake, FAST).await;
    (fake, proxy, image)
}

fn manifest_url(proxy: &TestProxy, reference: impl std::fmt::Display) -> String {
    proxy.url(&format!("/v2/{REPO}/manifests/{reference}"))
}

fn blob_url(proxy: &TestProxy, digest: &Digest) -> String {
    proxy.url(&format!("/v2/{REPO}/blobs/{digest}"))
}

fn sha256(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).to_string()
}

/// Wait (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// After a failure: no blob under the digest, no partial file left.
async fn assert_blob_not_stored(proxy: &TestProxy, digest: &Digest) {
    eventually("no partial downloads remain", || proxy.temp_files() == 0).await;
    assert!(!proxy.has_blob(digest), "a failed blob must not be stored");
}

/// How a proxy reports a broken download it detected before sending any
/// header: status and OCI code.
type Early = (StatusCode, &'static str);
/// The bytes failed verification.
const INTEGRITY: Early = (StatusCode::BAD_GATEWAY, "UNKNOWN");
/// The upstream connection broke.
const BROKEN: Early = (StatusCode::BAD_GATEWAY, "UNAVAILABLE");
/// The upstream went quiet.
const TIMED_OUT: Early = (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE");

/// A refused blob. Normally the headers (200, full `Content-Length`) are out
/// before the failure is known, so the body is aborted short of its length.
/// When the whole download fails before the response starts (small blob,
/// fast upstream, busy machine) the proxy can still say so properly: `early`.
fn assert_aborted_blob(resp: &Resp, blob: &Blob, early: Early) {
    if resp.status != StatusCode::OK {
        return assert_error(resp, early.0, early.1);
    }
    assert_eq!(
        resp.header("content-length"),
        Some(blob.bytes.len().to_string().as_str())
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(blob.digest.to_string().as_str())
    );
    match &resp.body {
        Ok(b) => panic!("body must be aborted, but {} bytes completed", b.len()),
        Err(e) => assert!(e.contains("IncompleteBody"), "expected a truncated body, got {e}"),
    }
}

fn assert_error(resp: &Resp, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.error_code(), code, "{resp:?}");
}

/// A good GET of `blob` through the proxy: exact bytes, then stored.
async fn assert_good_blob(proxy: &TestProxy, blob: &Blob) {
    let resp = client::get(&blob_url(proxy, &blob.digest)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(blob.digest.to_string().as_str())
    );
    assert_eq!(resp.bytes(), blob.bytes);
    assert!(
        proxy.has_blob(&blob.digest),
        "a verified blob is stored before its last byte is sent"
    );
}

/// A cached blob is served again without any upstream request.
async fn assert_served_from_cache(fake: &FakeRegistry, proxy: &TestProxy, blob: &Blob) {
    let before = fake.total_requests();
    assert_good_blob(proxy, blob).await;
    assert_eq!(
        fake.total_requests(),
        before,
        "a cached blob must not touch the upstream"
    );
}

/// A good GET of a manifest: exact bytes, digest header, content type.
async fn assert_good_manifest(proxy: &TestProxy, reference: impl std::fmt::Display, m: &Blob) {
    let resp = client::get(&manifest_url(proxy, reference)).await;
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(m.digest.to_string().as_str())
    );
    assert_eq!(resp.header("content-type"), Some(m.media_type.as_str()));
    assert_eq!(resp.bytes(), m.bytes);
}

/// A response read frame by frame: what arrived before the body ended, and
/// how it ended.
struct Partial {
    status: StatusCode,
    headers: HeaderMap,
    received: Vec<u8>,
    end: Result<(), String>,
}

impl Partial {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A refused (part of a) blob whose response promised `len` bytes with
    /// `status`: the client never gets all of them (the last byte is held
    /// back until verification), or gets the `early` error instead.
    fn assert_withheld(&self, status: StatusCode, len: usize, early: Early) {
        if self.status != status {
            assert_eq!((self.status, &self.end), (early.0, &Ok(())));
            let error: serde_json::Value = serde_json::from_slice(&self.received).expect("error JSON");
            assert_eq!(error["errors"][0]["code"], early.1);
            return;
        }
        assert_eq!(self.header("content-length"), Some(len.to_string().as_str()));
        let received = self.received.len();
        assert!(
            received < len,
            "received {received} of {len} bytes of unverified content"
        );
        assert!(
            self.end.as_ref().is_err_and(|e| e.contains("IncompleteBody")),
            "{:?}",
            self.end
        );
    }
}

/// GET, keeping whatever arrives even if the body is aborted.
async fn get_partial(url: &str, headers: &[(&str, &str)]) -> Partial {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response headers");
    let (parts, mut body) = resp.into_parts();
    let mut received = Vec::new();
    let end = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Ok(frame)) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Some(Err(e)) => break Err(format!("{e:?}")),
        }
    };
    Partial {
        status: parts.status,
        headers: parts.headers,
        received,
        end,
    }
}

// --- manifests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_wrong_bytes_by_digest_is_refused() {
    let (fake, proxy, image) = setup(&[1000], 1).await;
    let m = &image.manifest;
    fake.set_fault(&m.digest, Fault::WrongManifestBytes);

    let resp = client::get(&manifest_url(&proxy, &m.digest)).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNKNOWN");
    assert!(!proxy.has_manifest(&m.digest));

    fake.clear_faults();
    assert_good_manifest(&proxy, &m.digest, m).await;
    assert!(proxy.has_manifest(&m.digest));
    let gets = fake.manifest_requests("GET", REPO, &m.digest);
    assert_eq!(gets, 2);
    assert_good_manifest(&proxy, &m.digest, m).await;
    assert_eq!(
        fake.total_requests(),
        2,
        "a manifest by digest is immutable: served from cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_wrong_bytes_by_tag_is_refused() {
    let (fake, proxy, image) = setup(&[1000], 2).await;
    let m = &image.manifest;
    fake.set_fault(&m.digest, Fault::WrongManifestBytes);

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNKNOWN");
    assert!(!proxy.has_manifest(&m.digest));
    assert_eq!(fake.manifest_requests("HEAD", REPO, "v1"), 1);
    assert_eq!(fake.manifest_requests("GET", REPO, &m.digest), 1);

    fake.clear_faults();
    assert_good_manifest(&proxy, "v1", m).await;
    assert!(proxy.has_manifest(&m.digest));
    assert_good_manifest(&proxy, "v1", m).await;
    // The tag is re-resolved (HEAD) each time; the bytes come from the cache.
    assert_eq!(fake.manifest_requests("HEAD", REPO, "v1"), 3);
    assert_eq!(fake.manifest_requests("GET", REPO, &m.digest), 2);
    assert_eq!(fake.manifest_requests("GET", REPO, "v1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_docker_content_digest_is_refused() {
    let (fake, proxy, image) = setup(&[1000], 3).await;
    let m = &image.manifest;
    fake.set_fault(&m.digest, Fault::LyingDigestHeader);

    let resp = client::get(&manifest_url(&proxy, &m.digest)).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNKNOWN");
    assert!(!proxy.has_manifest(&m.digest));

    fake.clear_faults();
    assert_good_manifest(&proxy, &m.digest, m).await;
    assert!(proxy.has_manifest(&m.digest));
}

/// An upstream that omits the digest on HEAD is asked by tag; a lying
/// `Docker-Content-Digest` on that GET is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_digest_on_get_by_tag_is_refused() {
    let (fake, proxy, image) = setup(&[1000], 4).await;
    let m = &image.manifest;
    fake.set_fault("v1", Fault::HeadWithoutDigest);
    fake.set_fault("v1", Fault::LyingDigestHeader);

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNKNOWN");
    assert_eq!(
        fake.manifest_requests("GET", REPO, "v1"),
        1,
        "digest-less HEAD falls back to GET by tag"
    );
    assert!(!proxy.has_manifest(&m.digest));

    fake.clear_faults();
    fake.set_fault("v1", Fault::HeadWithoutDigest);
    assert_good_manifest(&proxy, "v1", m).await;
    assert!(proxy.has_manifest(&m.digest));
}

/// A HEAD that names a digest the upstream does not have: the proxy asks for
/// exactly that digest and reports it unknown; nothing else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_digest_on_head_serves_nothing() {
    let (fake, proxy, image) = setup(&[1000], 5).await;
    fake.set_fault("v1", Fault::LyingDigestHeader);

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    assert!(!proxy.has_manifest(&image.manifest.digest));
    assert_eq!(fake.manifest_requests("GET", REPO, &image.manifest.digest), 0);
}

// --- blobs -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_with_flipped_byte_is_aborted_and_not_stored() {
    let (fake, proxy, image) = setup(&[1 << 20], 6).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, Fault::FlipByte { at: 1000 });

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, INTEGRITY);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 2);
    assert_served_from_cache(&fake, &proxy, layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_is_aborted_and_not_stored() {
    let (fake, proxy, image) = setup(&[1 << 20], 7).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, Fault::Truncate { at: 600_000 });

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, BROKEN);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_served_from_cache(&fake, &proxy, layer).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_blob_is_aborted_and_not_stored() {
    let (fake, proxy, image) = setup(&[1 << 20], 8).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, Fault::DropMidBlob { after: 5 * CHUNK });

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, BROKEN);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_served_from_cache(&fake, &proxy, layer).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 2);
}

/// Holdback: a client that does not verify digests never receives a
/// complete wrong blob, whatever its size and wherever the bad byte is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_blob_never_delivers_its_final_byte() {
    let fake = FakeRegistry::start().await;
    let proxy = proxy_for(&fake, FAST).await;
    let cases = [(100, 99), (100, 0), (3 * CHUNK + 17, 3 * CHUNK + 16), (2 << 20, 5)];
    for (i, (len, flip)) in cases.into_iter().enumerate() {
        let blob = Blob::new(OCI_LAYER, random_bytes(len, 100 + i as u64));
        fake.put_blob(REPO, &blob);
        fake.set_fault(&blob.digest, Fault::FlipByte { at: flip });
        get_partial(&blob_url(&proxy, &blob.digest), &[])
            .await
            .assert_withheld(StatusCode::OK, len, INTEGRITY);
        assert_blob_not_stored(&proxy, &blob.digest).await;
    }
}

/// A Range on a cold blob whose bytes are wrong: the slice is aborted too,
/// even though the corrupt byte lies outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_of_wrong_blob_is_aborted() {
    let (fake, proxy, image) = setup(&[1 << 20], 9).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, Fault::FlipByte { at: (1 << 20) - 1 });

    let range = get_partial(&blob_url(&proxy, &layer.digest), &[("range", "bytes=0-99")]).await;
    range.assert_withheld(StatusCode::PARTIAL_CONTENT, 100, INTEGRITY);
    if range.status == StatusCode::PARTIAL_CONTENT {
        assert_eq!(range.header("content-range"), Some("bytes 0-99/1048576"));
    }
    assert_blob_not_stored(&proxy, &layer.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_cold_blob_is_206_with_the_right_slice() {
    let (fake, proxy, image) = setup(&[1 << 20], 10).await;
    let layer = &image.layers[0];

    let resp = client::request(
        Method::GET,
        &blob_url(&proxy, &layer.digest),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.header("content-range"), Some("bytes 1000-1999/1048576"));
    assert_eq!(resp.header("content-length"), Some("1000"));
    assert_eq!(resp.bytes(), layer.bytes.slice(1000..2000));

    // The whole blob was fetched once, verified and stored.
    eventually("the blob is stored", || proxy.has_blob(&layer.digest)).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 1);
    let before = fake.total_requests();
    let resp = client::request(Method::GET, &blob_url(&proxy, &layer.digest), &[("range", "bytes=-10")]).await;
    assert_eq!(resp.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes(), layer.bytes.slice((1 << 20) - 10..));
    assert_eq!(fake.total_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_upstream_download() {
    let (fake, proxy, image) = setup(&[4 << 20], 11).await;
    let layer = image.layers[0].clone();
    fake.set_fault(
        &layer.digest,
        Fault::SlowBody {
            delay: Duration::from_millis(10),
        },
    );

    let url = blob_url(&proxy, &layer.digest);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::get(&url).await })
        })
        .collect();
    for c in clients {
        let resp = c.await.expect("client task");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.bytes(), layer.bytes);
    }
    assert_eq!(
        fake.blob_gets(REPO, &layer.digest),
        1,
        "single flight: one upstream GET for 8 clients"
    );
    assert!(proxy.has_blob(&layer.digest));
}

// --- tags that move ----------------------------------------------------------------

/// The proxy resolves the tag with HEAD, then fetches by that digest: a tag
/// pushed in between cannot mix two manifests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moving_after_head_serves_the_resolved_digest() {
    let (fake, proxy, a) = setup(&[1000], 12).await;
    let b = oci_image(&[2000], 13);
    fake.put_manifest(REPO, &b.manifest);
    fake.set_fault("v1", Fault::TagMovesAfterHead { to: b.manifest.clone() });

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let claimed = resp.header("docker-content-digest").expect("digest header").to_owned();
    assert_eq!(
        sha256(&resp.bytes()),
        claimed,
        "bytes must hash to the digest served with them"
    );
    assert_eq!(claimed, a.manifest.digest.to_string(), "the digest the HEAD resolved");
    assert_eq!(fake.manifest_requests("GET", REPO, "v1"), 0);
}

/// Without a digest on HEAD the proxy GETs by tag and gets the moved tag:
/// it serves that manifest, consistently, under its own digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moving_before_get_by_tag_is_served_consistently() {
    let (fake, proxy, a) = setup(&[1000], 14).await;
    let b = oci_image(&[2000], 15);
    fake.put_manifest(REPO, &b.manifest);
    fake.set_fault("v1", Fault::HeadWithoutDigest);
    fake.set_fault("v1", Fault::TagMovesAfterHead { to: b.manifest.clone() });

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let claimed = resp.header("docker-content-digest").expect("digest header").to_owned();
    assert_eq!(
        sha256(&resp.bytes()),
        claimed,
        "bytes must hash to the digest served with them"
    );
    assert_eq!(claimed, b.manifest.digest.to_string());
    assert_eq!(
        resp.header("content-length"),
        Some(b.manifest.bytes.len().to_string().as_str())
    );
    assert!(proxy.has_manifest(&b.manifest.digest));
    assert!(!proxy.has_manifest(&a.manifest.digest));
}

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

// --- authentication and redirects ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_flow_with_cached_token() {
    let (fake, proxy, image) = setup(&[1000, 2000], 23).await;
    fake.require_token();

    assert_good_manifest(&proxy, "v1", &image.manifest).await;
    for blob in image.blobs() {
        assert_good_blob(&proxy, blob).await;
    }
    let resp = client::get(&proxy.url(&format!("/v2/{REPO}/tags/list"))).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["tags"], serde_json::json!(["v1"]));

    assert_eq!(fake.token_requests(), 1, "one token for the repository, then cached");
    assert_eq!(
        fake.challenges(),
        1,
        "after the first challenge the token is sent up front"
    );
    let token_req = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/token")
        .expect("token request");
    let query = token_req.query.unwrap_or_default();
    assert!(query.contains("service=fake"), "{query}");
    assert!(query.contains("scope=repository%3Atest%2Fapp%3Apull"), "{query}");
    let expected = Some("Bearer tok-repository:test/app:pull".to_owned());
    let v2: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v2/"))
        .collect();
    assert_eq!(v2[0].authorization, None, "the first request meets the challenge");
    assert!(v2[1..].iter().all(|r| r.authorization == expected), "{v2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_to_cdn_is_followed_without_credentials() {
    let (origin, proxy, image) = setup(&[300_000], 24).await;
    let cdn = FakeRegistry::start().await;
    let layer = &image.layers[0];
    cdn.put_blob(REPO, layer);
    origin.require_token();
    origin.set_fault(&layer.digest, Fault::RedirectTo(cdn.url()));

    assert_good_blob(&proxy, layer).await;
    assert_eq!(
        origin.blob_gets(REPO, &layer.digest),
        2,
        "401, then the authorised GET that redirects"
    );
    assert_eq!(cdn.blob_gets(REPO, &layer.digest), 1);
    let cdn_req = &cdn.requests()[0];
    assert_eq!(
        cdn_req.authorization, None,
        "credentials must not cross to another host"
    );
    assert_eq!(cdn_req.query.as_deref(), Some("sig=signed-url-secret"));
    assert!(cdn.authorizations().iter().all(Option::is_none));

    let before = (origin.total_requests(), cdn.total_requests());
    assert_good_blob(&proxy, layer).await;
    assert_eq!((origin.total_requests(), cdn.total_requests()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_serving_wrong_bytes_is_refused() {
    let (origin, proxy, image) = setup(&[300_000], 25).await;
    let cdn = FakeRegistry::start().await;
    let layer = &image.layers[0];
    cdn.put_blob(REPO, layer);
    cdn.set_fault(&layer.digest, Fault::FlipByte { at: 12345 });
    origin.set_fault(&layer.digest, Fault::RedirectTo(cdn.url()));

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, INTEGRITY);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    cdn.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_eq!(cdn.blob_gets(REPO, &layer.digest), 2);
}

// --- referrers -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_native_and_tag_schema_fallback() {
    let (fake, proxy, image) = setup(&[1000], 26).await;
    let payload = Blob::new("application/vnd.dev.cosign.simplesigning.v1+json", &b"{}"[..]);
    let (sig, _empty) = referrer(
        &image.manifest,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        &payload,
    );
    fake.put_manifest(REPO, &sig);
    let url = proxy.url(&format!("/v2/{REPO}/referrers/{}", image.manifest.digest));

    // No referrers API and no tag-schema index: an empty index.
    let resp = client::get(&url).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["manifests"], serde_json::json!([]));

    // Native API.
    fake.enable_referrers_api(true);
    let resp = client::get(&url).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["manifests"][0]["digest"], sig.digest.to_string());
    assert_eq!(
        resp.json()["manifests"][0]["artifactType"],
        "application/vnd.dev.cosign.artifact.sig.v1+json"
    );

    // Tag schema: `sha256-<hex>` names an index of the referrers.
    fake.enable_referrers_api(false);
    let mut d = sig.descriptor();
    d["artifactType"] = "application/vnd.dev.cosign.artifact.sig.v1+json".into();
    let index = Blob::new(
        support::images::OCI_INDEX,
        serde_json::to_vec(
            &serde_json::json!({ "schemaVersion": 2, "mediaType": support::images::OCI_INDEX, "manifests": [d] }),
        )
        .expect("json"),
    );
    fake.tag(REPO, &image.manifest.digest.tag_form(), &index);
    let resp = client::get(&url).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["manifests"][0]["digest"], sig.digest.to_string());
}

// --- the fake itself ---------------------------------------------------------------

/// The proxy tests above are only as good as the faults: check that each one
/// really reaches the wire, talking to the fake directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_misbehaves_as_told() {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[3 * CHUNK], 29);
    fake.put_image(REPO, "v1", &image);
    let (m, layer) = (&image.manifest, &image.layers[0]);
    let url = |p: String| format!("{}/v2/{REPO}/{p}", fake.url());
    let digest_of = |r: &Resp| r.header("docker-content-digest").map(str::to_owned);

    let good = client::get(&url(format!("manifests/{}", m.digest))).await;
    assert_eq!(
        (good.bytes(), digest_of(&good)),
        (m.bytes.clone(), Some(m.digest.to_string()))
    );
    assert_eq!(good.header("content-type"), Some(m.media_type.as_str()));
    let head = client::head(&url("manifests/v1".into())).await;
    assert_eq!(head.header("content-length"), Some(m.bytes.len().to_string().as_str()));
    assert_eq!(digest_of(&head), Some(m.digest.to_string()));
    assert_eq!(
        client::get(&url(format!("blobs/{}", layer.digest))).await.bytes(),
        layer.bytes
    );
    let missing = client::get(&url("manifests/nope".into())).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");

    fake.set_fault(&m.digest, Fault::WrongManifestBytes);
    let r = client::get(&url(format!("manifests/{}", m.digest))).await;
    assert_ne!(r.bytes(), m.bytes);
    assert_eq!(digest_of(&r), Some(m.digest.to_string()));
    fake.clear_faults();

    fake.set_fault("v1", Fault::LyingDigestHeader);
    let r = client::get(&url("manifests/v1".into())).await;
    assert_eq!(r.bytes(), m.bytes);
    assert_ne!(digest_of(&r), Some(m.digest.to_string()));
    fake.clear_faults();

    fake.set_fault(&layer.digest, Fault::FlipByte { at: 7 });
    let r = client::get(&url(format!("blobs/{}", layer.digest))).await;
    let diff: Vec<usize> = (0..layer.bytes.len())
        .filter(|&i| r.bytes()[i] != layer.bytes[i])
        .collect();
    assert_eq!(diff, vec![7]);
    fake.clear_faults();

    for fault in [
        Fault::Truncate { at: CHUNK + 5 },
        Fault::DropMidBlob { after: CHUNK + 5 },
    ] {
        fake.set_fault(&layer.digest, fault);
        let cut = get_partial(&url(format!("blobs/{}", layer.digest)), &[]).await;
        assert_eq!(cut.status, StatusCode::OK);
        assert_eq!(cut.header("content-length"), Some((3 * CHUNK).to_string().as_str()));
        assert_eq!(cut.received, layer.bytes[..CHUNK + 5]);
        assert!(cut.end.is_err());
        fake.clear_faults();
    }

    fake.set_fault(
        &layer.digest,
        Fault::Status {
            code: 503,
            times: 2,
            retry_after: Some(3),
        },
    );
    let statuses: Vec<(u16, Option<String>)> = futures_util::future::join_all((0..3).map(|_| async {
        let r = client::head(&url(format!("blobs/{}", layer.digest))).await;
        (r.status.as_u16(), r.header("retry-after").map(str::to_owned))
    }))
    .await;
    let mut statuses = statuses;
    statuses.sort();
    assert_eq!(
        statuses,
        vec![(200, None), (503, Some("3".into())), (503, Some("3".into()))]
    );
    fake.clear_faults();

    fake.require_token();
    let r = client::get(&url("tags/list".into())).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let challenge = r.header("www-authenticate").expect("challenge");
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/token\",service=\"fake\",scope=\"repository:{REPO}:pull\"",
            fake.url()
        )
    );
    let token = client::get(&format!(
        "{}/token?service=fake&scope=repository:{REPO}:pull",
        fake.url()
    ))
    .await;
    assert_eq!(token.json()["expires_in"], 300);
    let bearer = format!("Bearer {}", token.json()["token"].as_str().expect("token"));
    let r = client::request(Method::GET, &url("tags/list".into()), &[("authorization", &bearer)]).await;
    assert_eq!(r.json(), serde_json::json!({ "name": REPO, "tags": ["v1"] }));
    assert_eq!(fake.authorizations().last(), Some(&Some(bearer)));
}
