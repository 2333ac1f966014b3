//! Blob responses backed only by verified facts: an empty upstream body is
//! never a complete 200 for a non-empty digest, `HEAD` on a cold blob never
//! passes on an upstream's unverified size, and cold downloads are bounded.

use bytes::Bytes;

use super::common::*;
use crate::support::images::{OCI_LAYER, random_bytes};

/// The upstream holds `digest` with other bytes: it answers for the digest
/// with a body (and a Content-Length) that does not match it.
fn lying_blob(digest: &Digest, bytes: impl Into<Bytes>) -> Blob {
    Blob {
        media_type: OCI_LAYER.to_owned(),
        bytes: bytes.into(),
        digest: digest.clone(),
    }
}

#[tokio::test]
async fn an_empty_upstream_body_for_a_non_empty_digest_is_never_completed() {
    let (fake, image) = upstream_with_image(&[5000], 41).await;
    let layer = &image.layers[0];
    fake.put_blob(REPO, &lying_blob(&layer.digest, Bytes::new()));
    let empty = Blob::new(OCI_LAYER, Bytes::new());
    fake.put_blob(REPO, &empty);
    let proxy = proxy_for(&fake, "").await;

    for method in [Method::GET, Method::HEAD] {
        let r = request(method.clone(), &proxy.url(&blob_path(&layer.digest)), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{method}: {:?}", r.body);
        assert_ne!(r.header("content-length"), Some("0"), "{method}");
        if method == Method::GET {
            assert_eq!(r.error_code(), "UNKNOWN");
        }
    }
    assert!(!proxy.has_blob(&layer.digest), "nothing is stored");

    // Control: the empty blob's own digest is served, empty, and stored.
    let r = get(&proxy.url(&blob_path(&empty.digest))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.bytes().is_empty());
    assert!(proxy.stores_blob(&empty.digest).await);
}

#[tokio::test]
async fn head_on_a_cold_blob_asserts_only_a_verified_size() {
    let (fake, image) = upstream_with_image(&[3000, 7000], 42).await;
    let (honest, lied_about) = (&image.layers[0], &image.layers[1]);
    // The upstream claims (HEAD) and serves (GET) 20,000 other bytes.
    fake.put_blob(REPO, &lying_blob(&lied_about.digest, random_bytes(20_000, 9)));
    let proxy = proxy_for(&fake, "").await;

    let r = head(&proxy.url(&blob_path(&lied_about.digest))).await;
    assert_ne!(r.status, StatusCode::OK, "the upstream's size is not verified");
    assert_ne!(r.header("content-length"), Some("20000"));
    assert!(!proxy.has_blob(&lied_about.digest));

    // An honest blob: the size comes from the verified download, which the
    // GET then serves from the store without asking the upstream again.
    let r = head(&proxy.url(&blob_path(&honest.digest))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("3000"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(honest.digest.to_string().as_str())
    );
    assert!(r.bytes().is_empty(), "HEAD has no body");
    assert!(proxy.stores_blob(&honest.digest).await);
    let r = get(&proxy.url(&blob_path(&honest.digest))).await;
    assert!(r.status == StatusCode::OK && r.bytes() == honest.bytes);
    assert_eq!(fake.blob_gets(REPO, &honest.digest), 1);

    // Unknown upstream: 404 BLOB_UNKNOWN, as before.
    let missing = Blob::new(OCI_LAYER, random_bytes(10, 10));
    let r = head(&proxy.url(&blob_path(&missing.digest))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// With one download slot, a second cold blob waits, then gets `429` with
/// `Retry-After`; a follower of the running download needs no slot; once
/// the download ends the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_downloads_are_bounded_and_followers_are_not() {
    let (fake, image) = upstream_with_image(&[4 * 64 * 1024, 1000], 43).await;
    let (slow, other) = (&image.layers[0], &image.layers[1]);
    fake.set_fault(
        slow.digest.to_string(),
        Fault::SlowBody {
            delay: Duration::from_millis(400),
        },
    );
    let limits = "cache:\n  maxColdDownloads: 1\n  coldDownloadWait: 300ms\n";
    let proxy = proxy_for(&fake, limits).await;

    let slow_url = proxy.url(&blob_path(&slow.digest));
    let leader = tokio::spawn({
        let url = slow_url.clone();
        async move { get(&url).await }
    });
    let started = std::time::Instant::now();
    while fake.blob_gets(REPO, &slow.digest) == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the download starts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let follower = tokio::spawn(async move { get(&slow_url).await });

    let r = get(&proxy.url(&blob_path(&other.digest))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        fake.blob_gets(REPO, &other.digest),
        0,
        "no upstream request over the bound"
    );

    for joined in [leader, follower] {
        let r = joined.await.expect("request task");
        assert!(r.status == StatusCode::OK && r.bytes() == slow.bytes);
    }
    assert_eq!(
        fake.blob_gets(REPO, &slow.digest),
        1,
        "the follower shared the download"
    );
    assert!(proxy.stores_blob(&slow.digest).await);
    let r = get(&proxy.url(&blob_path(&other.digest))).await;
    assert!(
        r.status == StatusCode::OK && r.bytes() == other.bytes,
        "the slot is free again"
    );
}

/// With a policy, an admitted manifest's descriptor states each blob's size
/// (covered by the manifest's digest): a cold `HEAD` answers it without a
/// download when the upstream's `HEAD` agrees, and falls back to a verified
/// download (here: refused) when the upstream claims another size.
#[tokio::test]
async fn head_on_a_granted_cold_blob_answers_the_descriptor_size() {
    let (fake, image) = upstream_with_image(&[3000, 7000], 44).await;
    let (granted, lied_about) = (&image.layers[0], &image.layers[1]);
    fake.put_blob(REPO, &lying_blob(&lied_about.digest, random_bytes(20_000, 11)));
    let policies = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        policies.path().join("allow.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nrules:\n  - name: allow-all\n    match: { repositories: [\"**\"] }\n    static: allow\n",
    )
    .expect("policy");
    let proxy = TestProxy::with_policies(&fake.url(), policies.path()).await;

    let r = head(&proxy.url(&blob_path(&granted.digest))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no manifest admitted yet");
    let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
    let r = request(Method::GET, &proxy.url(&manifest_path("v1")), &accept).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let r = head(&proxy.url(&blob_path(&granted.digest))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("3000"));
    assert_eq!(
        fake.blob_gets(REPO, &granted.digest),
        0,
        "the descriptor vouches: no download"
    );
    assert!(!proxy.has_blob(&granted.digest));

    let r = head(&proxy.url(&blob_path(&lied_about.digest))).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "the upstream's other size is not served"
    );
    assert_eq!(
        fake.blob_gets(REPO, &lied_about.digest),
        1,
        "the verified download decided"
    );
    assert!(!proxy.has_blob(&lied_about.digest));
}
