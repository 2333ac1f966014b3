//! Helpers shared by this suite's modules.

pub(crate) use crate::support;
pub(crate) use crate::support::client::{self, Resp};
pub(crate) use crate::support::fake::{CHUNK, EVERYWHERE, FakeRegistry, Fault};
pub(crate) use crate::support::images::{Blob, Image, OCI_LAYER, oci_image, random_bytes, referrer};
pub(crate) use crate::support::proxy::TestProxy;
pub(crate) use bytes::Bytes;
pub(crate) use http::{HeaderMap, Method, Request, StatusCode};
pub(crate) use http_body_util::{BodyExt, Empty};
pub(crate) use hyper_util::client::legacy::Client;
pub(crate) use hyper_util::rt::TokioExecutor;
pub(crate) use portcullis::oci::{Algorithm, Digest};
pub(crate) use std::time::Duration;

pub const REPO: &str = "test/app";

/// Short timeouts and fast retries so faults resolve quickly.
pub const FAST: &str = "  bodyIdleTimeout: 1s\n  responseHeaderTimeout: 1s\n  retryAttempts: 3\n  retryBackoff: 10ms\n";
pub const ATTEMPTS: usize = 3;

// --- helpers -------------------------------------------------------------------

/// A proxy whose default upstream is `fake`, with `defaults` as its
/// `upstreamDefaults` block.
pub async fn proxy_for(fake: &FakeRegistry, defaults: &str) -> TestProxy {
    let host = fake.host();
    let yaml = format!(
        "defaultUpstream: {host}\nupstreams:\n  - host: {host}\n    url: {url}\n    insecurePlainHttp: true\nupstreamDefaults:\n{defaults}",
        url = fake.url()
    );
    TestProxy::start(&yaml).await
}

/// A fake with one image tagged `v1` and a proxy in front of it.
pub async fn setup(layers: &[usize], seed: u64) -> (FakeRegistry, TestProxy, Image) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(layers, seed);
    fake.put_image(REPO, "v1", &image);
    let proxy = proxy_for(&fake, FAST).await;
    (fake, proxy, image)
}

pub fn manifest_url(proxy: &TestProxy, reference: impl std::fmt::Display) -> String {
    proxy.url(&format!("/v2/{REPO}/manifests/{reference}"))
}

pub fn blob_url(proxy: &TestProxy, digest: &Digest) -> String {
    proxy.url(&format!("/v2/{REPO}/blobs/{digest}"))
}

pub fn sha256(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).to_string()
}

/// Wait (bounded) until `cond` holds.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// After a failure: no blob under the digest, no partial file left.
pub async fn assert_blob_not_stored(proxy: &TestProxy, digest: &Digest) {
    eventually("no partial downloads remain", || proxy.temp_files() == 0).await;
    assert!(!proxy.has_blob(digest), "a failed blob must not be stored");
}

/// How a proxy reports a broken download it detected before sending any
/// header: status and OCI code.
pub type Early = (StatusCode, &'static str);
/// The bytes failed verification.
pub const INTEGRITY: Early = (StatusCode::BAD_GATEWAY, "UNKNOWN");
/// The upstream connection broke.
pub const BROKEN: Early = (StatusCode::BAD_GATEWAY, "UNAVAILABLE");
/// The upstream went quiet.
pub const TIMED_OUT: Early = (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE");

/// A refused blob. Normally the headers (200, full `Content-Length`) are out
/// before the failure is known, so the body is aborted short of its length.
/// When the whole download fails before the response starts (small blob,
/// fast upstream, busy machine) the proxy can still say so properly: `early`.
pub fn assert_aborted_blob(resp: &Resp, blob: &Blob, early: Early) {
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

pub fn assert_error(resp: &Resp, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.error_code(), code, "{resp:?}");
}

/// A good GET of `blob` through the proxy: exact bytes, then stored.
pub async fn assert_good_blob(proxy: &TestProxy, blob: &Blob) {
    let resp = client::get(&blob_url(proxy, &blob.digest)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(blob.digest.to_string().as_str())
    );
    assert_eq!(resp.bytes(), blob.bytes);
    assert!(proxy.stores_blob(&blob.digest).await, "a verified blob is stored");
}

/// A cached blob is served again without any upstream request.
pub async fn assert_served_from_cache(fake: &FakeRegistry, proxy: &TestProxy, blob: &Blob) {
    let before = fake.total_requests();
    assert_good_blob(proxy, blob).await;
    assert_eq!(
        fake.total_requests(),
        before,
        "a cached blob must not touch the upstream"
    );
}

/// A good GET of a manifest: exact bytes, digest header, content type.
pub async fn assert_good_manifest(proxy: &TestProxy, reference: impl std::fmt::Display, m: &Blob) {
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
pub struct Partial {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub received: Vec<u8>,
    pub end: Result<(), String>,
}

impl Partial {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A refused (part of a) blob whose response promised `len` bytes with
    /// `status`: the client never gets all of them (the last byte is held
    /// back until verification), or gets the `early` error instead.
    pub fn assert_withheld(&self, status: StatusCode, len: usize, early: Early) {
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
pub async fn get_partial(url: &str, headers: &[(&str, &str)]) -> Partial {
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
