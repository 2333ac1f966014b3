//! Bearer-token authentication, CDN redirects without credentials, referrers and their fallback.

use super::common::*;

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
