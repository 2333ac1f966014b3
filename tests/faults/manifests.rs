//! Manifests whose bytes or digest headers lie, and tags that move between HEAD and GET.

use super::common::*;

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

/// Clients resolving the same tag at the same time share one upstream
/// `HEAD`; a resolution after it answered asks again (tags are never
/// cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolutions_of_a_tag_share_one_head() {
    let (fake, proxy, image) = setup(&[1000], 31).await;
    let m = &image.manifest;
    fake.set_fault(
        "v1",
        Fault::SlowHeaders {
            delay: Duration::from_millis(300),
        },
    );
    let url = manifest_url(&proxy, "v1");
    let pulls = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { client::get(&url).await })
    });
    for r in futures_util::future::join_all(pulls).await {
        let r = r.expect("task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.bytes(), m.bytes);
    }
    assert_eq!(fake.manifest_requests("HEAD", REPO, "v1"), 1, "one HEAD for eight");
    fake.clear_faults();
    assert_good_manifest(&proxy, "v1", m).await;
    assert_eq!(
        fake.manifest_requests("HEAD", REPO, "v1"),
        2,
        "a later resolution asks again"
    );
}
