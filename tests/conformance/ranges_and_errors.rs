//! `Range` on cold and cached blobs; push and delete refused; unknown routes answer OCI error JSON.

use super::common::*;

/// `Range` on blobs (RFC 9110 §14): on a cold blob (the proxy fetches the
/// whole blob once and slices it) and on the cached blob.
#[tokio::test]
async fn blob_ranges_cold_and_cached() {
    let s = seed().await;
    let blob = &s.oci.layers[1];
    let size = blob.bytes.len() as u64;
    assert_eq!(size, 300_001);
    let url_path = format!("/v2/{REPO}/blobs/{}", blob.digest);
    // (Range header, expected [start, end) or None for 200, or Err(()) for 416)
    type Expect = Result<Option<(u64, u64)>, ()>;
    let cases: Vec<(String, Expect)> = vec![
        ("bytes=0-9".into(), Ok(Some((0, 10)))),
        ("bytes=10-19".into(), Ok(Some((10, 20)))),
        ("bytes=5-5".into(), Ok(Some((5, 6)))),
        ("bytes=100-".into(), Ok(Some((100, size)))),
        ("bytes=0-".into(), Ok(Some((0, size)))),
        ("bytes=-50".into(), Ok(Some((size - 50, size)))),
        ("bytes=-1".into(), Ok(Some((size - 1, size)))),
        (format!("bytes={}-", size - 1), Ok(Some((size - 1, size)))),
        (format!("bytes=299990-{}", size * 10), Ok(Some((299_990, size)))),
        (format!("bytes=-{}", size * 10), Ok(Some((0, size)))),
        (format!("bytes={size}-"), Err(())),
        (format!("bytes={}-{}", size, size + 10), Err(())),
        ("bytes=-0".into(), Err(())),
        // At the edges of u64 (RFC 9110: a last-byte-pos past the end is the
        // end; a first-byte-pos past it is unsatisfiable). No overflow.
        ("bytes=0-18446744073709551615".into(), Ok(Some((0, size)))),
        ("bytes=18446744073709551615-".into(), Err(())),
        ("bytes=18446744073709551615-18446744073709551615".into(), Err(())),
        ("bytes=-18446744073709551615".into(), Ok(Some((0, size)))),
        ("bytes=1-99999999999999999999999".into(), Ok(Some((1, size)))),
        ("bytes=99999999999999999999999-".into(), Err(())),
        // Not a single satisfiable byte range: ignored, 200 with everything.
        ("bytes=0-1,3-4".into(), Ok(None)),
        ("bytes=9-0".into(), Ok(None)),
        ("items=0-1".into(), Ok(None)),
        ("bytes=+1-2".into(), Ok(None)),
    ];
    for (range, expect) in &cases {
        // A new proxy per case: the first request meets a cold blob.
        let proxy = TestProxy::with_default_upstream(&s.registry.url()).await;
        let url = proxy.url(&url_path);
        for round in ["cold", "cached"] {
            let what = format!("{round} Range: {range}");
            let r = request(Method::GET, &url, &[("range", range)]).await;
            assert_api_version(&r, &what);
            match expect {
                Ok(None) => assert_blob(&r, &blob.digest, &blob.bytes, false, &what),
                Ok(Some((start, end))) => {
                    assert_eq!(
                        r.status,
                        StatusCode::PARTIAL_CONTENT,
                        "{what}: body {:?}",
                        r.body.as_ref().map(|b| b.len())
                    );
                    let expected_range = format!("bytes {start}-{}/{size}", end - 1);
                    assert_eq!(r.header("content-range"), Some(expected_range.as_str()), "{what}");
                    assert_eq!(
                        r.header("content-length"),
                        Some((end - start).to_string().as_str()),
                        "{what}"
                    );
                    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{what}");
                    assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{what}");
                    assert!(
                        r.bytes() == blob.bytes[*start as usize..*end as usize],
                        "{what}: exact slice"
                    );
                }
                Err(()) => {
                    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{what}");
                    assert_eq!(
                        r.header("content-range"),
                        Some(format!("bytes */{size}").as_str()),
                        "{what}"
                    );
                    assert_error(&r, StatusCode::RANGE_NOT_SATISFIABLE, "UNSUPPORTED", &what);
                }
            }
            // Even a partial or refused first request leaves the whole,
            // verified blob in the store for the second round.
            wait_cached(&proxy, &blob.digest).await;
        }
    }
}

/// Push and delete: every endpoint answers 405 with an `UNSUPPORTED` OCI
/// error, and nothing reaches the upstream.
#[tokio::test]
async fn push_and_delete_refused() {
    let (s, proxy) = seeded_proxy().await;
    let m = &s.oci.manifest.digest;
    let b = &s.oci.layers[0].digest;
    let cases: Vec<(Method, String)> = vec![
        (Method::POST, format!("/v2/{REPO}/blobs/uploads/")),
        (Method::POST, format!("/v2/{REPO}/blobs/uploads/?digest={b}")),
        (
            Method::POST,
            format!("/v2/{REPO}/blobs/uploads/?mount={b}&from=other/repo"),
        ),
        (
            Method::PATCH,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (
            Method::PUT,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585?digest={b}"),
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (
            Method::DELETE,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (Method::PUT, format!("/v2/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/{REPO}/manifests/{m}")),
        (Method::PUT, format!("/v2/{REPO}/manifests/sha256:totallywrong")),
        (Method::DELETE, format!("/v2/{REPO}/manifests/v1")),
        (Method::DELETE, format!("/v2/{REPO}/manifests/{m}")),
        (Method::DELETE, format!("/v2/{REPO}/blobs/{b}")),
        (Method::PUT, format!("/v2/{REPO}/blobs/{b}")),
        (Method::POST, format!("/v2/{REPO}/manifests/v1")),
        (Method::PATCH, format!("/v2/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/registry.test/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/{REPO}/manifests/v1?ns={}", s.registry.host())),
        (Method::DELETE, format!("/v2/{REPO}/tags/list")),
        (Method::POST, format!("/v2/{REPO}/referrers/{m}")),
    ];
    for (method, path) in &cases {
        let what = format!("{method} {path}");
        let r = request(method.clone(), &proxy.url(path), &[("content-type", OCI_MANIFEST)]).await;
        assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", &what);
    }
    // The upstream still has everything.
    let r = request(
        Method::GET,
        &s.registry.url_for(&format!("/v2/{REPO}/manifests/v1")),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), s.oci.manifest.bytes);
    assert!(s.registry.has_blob(REPO, &s.oci.layers[0]).await);
}

/// Unknown routes and methods: always an OCI error JSON body, never plain
/// text (Docker fails on `404 page not found`).
#[tokio::test]
async fn unknown_routes_are_oci_json() {
    let (_s, proxy) = seeded_proxy().await;
    let d = unknown_digest();
    let cases: Vec<(Method, String, StatusCode, &str)> = vec![
        (Method::GET, "/".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, "/v1/_ping".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, "/v2x/".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, format!("/v2/{REPO}"), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (
            Method::GET,
            format!("/v2/{REPO}/unknown"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/manifests/"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/{d}/extra"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/tags/list/extra"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (Method::GET, "/v2/_catalog".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (
            Method::GET,
            "/v2/_catalog?n=10".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::OPTIONS,
            format!("/v2/{REPO}/manifests/v1"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::TRACE,
            format!("/v2/{REPO}/blobs/{d}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::HEAD,
            format!("/v2/{REPO}/tags/list"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in &cases {
        let r = request(method.clone(), &proxy.url(path), &[]).await;
        let what = format!("{method} {path}");
        assert_error(&r, *status, code, &what);
        assert!(OCI_CODES.contains(code));
    }
}
