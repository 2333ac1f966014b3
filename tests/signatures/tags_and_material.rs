//! Moving tags, indexes signed at the top, blob scoping, verification material passthrough.

use super::common::*;

// ============================================================= 7: moving tags

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tag_keeps_serving_the_first_admitted_digest() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(40);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PINNED)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");

    let second = small_image(41);
    push_signed(&env.registry, REPO, "v1", &second, &[&a]).await;
    let upstream = client::request(
        Method::HEAD,
        &env.registry.url_for("/v2/test/app/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(
        upstream.header("docker-content-digest"),
        Some(second.manifest.digest.to_string().as_str()),
        "the tag moved upstream"
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &first.manifest,
        "after the move",
    );
    skopeo_copies(&env.proxy, "test/app:v1", &first.manifest.digest, &image_blobs(&first)).await;
    // The moved-to digest was never admitted through the tag.
    assert!(events_for(&env.proxy, &second.manifest.digest).is_empty());
    env.expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &first.manifest.digest);
    // It is not forbidden by digest, though: it is signed.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &second.manifest.digest.to_string()).await,
        &second.manifest,
        "new digest by digest",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutable_tag_serves_the_new_signed_digest() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(42);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");
    let second = small_image(43);
    push_signed(&env.registry, REPO, "v1", &second, &[&a]).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &second.manifest,
        "after the move",
    );
    skopeo_copies(
        &env.proxy,
        "test/app:v1",
        &second.manifest.digest,
        &image_blobs(&second),
    )
    .await;
    let events = env
        .expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &second.manifest.digest);
    assert_eq!(events[0]["tag"], json!("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutable_tag_moved_to_an_unsigned_digest_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(44);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");
    // Time of check = time of use: the new digest is verified before it is served.
    let unsigned = small_image(45);
    env.registry.push_image(REPO, "v1", &unsigned).await;
    env.denied(REPO, "v1", &unsigned, "apps", &[], &[NONE_VERIFIED]).await;
    // The first digest is still fine by digest.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &first.manifest.digest.to_string()).await,
        &first.manifest,
        "old digest",
    );
}

// ============================================================= 8: indexes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_signed_at_the_top_covers_its_children() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let children = [
        oci_image_for("amd64", &[3000, 100], 50),
        oci_image_for("arm64", &[2500], 51),
    ];
    let index = oci_index(&[(&children[0], "amd64"), (&children[1], "arm64")]);
    registry
        .push_index(REPO, "multi", &index, &[&children[0], &children[1]])
        .await;
    push_legacy_signature(&registry, REPO, &index, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    let mut expected: Vec<&Digest> = children.iter().map(|c| &c.manifest.digest).collect();
    for c in &children {
        expected.extend(image_blobs(c));
    }
    skopeo_copies(&env.proxy, "test/app:multi", &index.digest, &expected).await;
    env.expect("allow", "apps", &["key-a"]).all(&env.proxy, &index.digest);
    let why = format!("listed by admitted index {}", index.digest);
    for c in &children {
        let events = events_for(&env.proxy, &c.manifest.digest);
        assert!(!events.is_empty(), "child {} not pulled", c.manifest.digest);
        for e in &events {
            env.expect("allow", "apps", &["key-a"]).check(e);
            assert!(reason(e).starts_with(&why), "{e}");
        }
    }

    // A fresh proxy asked for a child directly: verified on its own.
    let fresh = TestProxy::with_policies(&env.registry.url(), env.policies.path()).await;
    let child = &children[1];
    let resp = get_manifest(&fresh, REPO, &child.manifest.digest.to_string()).await;
    assert_denied(&resp, "apps", &["no signatures or attestations found", NONE_VERIFIED]);
    let events = events_for(&fresh, &child.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    env.expect("deny", "apps", &[]).check(&events[0]);
    assert_blob_denied(
        &get_blob(&fresh, REPO, &child.layers[0].digest).await,
        &child.layers[0].digest,
    );
    // After the index is pulled, the same child is served.
    assert_manifest(&get_manifest(&fresh, REPO, "multi").await, &index, "index");
    assert_manifest(
        &get_manifest(&fresh, REPO, &child.manifest.digest.to_string()).await,
        &child.manifest,
        "child after its index",
    );

    // With `indexCoversChildren: false` the unsigned children are refused.
    let own = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: each
    match: { repositories: ["test/**"] }
    indexCoversChildren: false
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let strict = TestProxy::with_policies(&env.registry.url(), own.path()).await;
    skopeo_refused(&strict, "test/app:multi").await;
    assert_manifest(&get_manifest(&strict, REPO, "multi").await, &index, "index itself");
    assert_denied(
        &get_manifest(&strict, REPO, &child.manifest.digest.to_string()).await,
        "each",
        &[NONE_VERIFIED],
    );
}

// ============================================================= 9: blobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_need_an_admitted_manifest_of_the_same_repository() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let signed = small_image(60);
    push_signed(&registry, REPO, "v1", &signed, &[&a]).await;
    let unsigned = small_image(61);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let elsewhere = small_image(62);
    push_signed(&registry, "test/other", "v1", &elsewhere, &[&a]).await;
    // The other repository's layer also exists upstream in test/app.
    registry.push_blob(REPO, &elsewhere.layers[0]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    // Before any manifest: nothing.
    let layer = &signed.layers[0];
    assert_blob_denied(&get_blob(&env.proxy, REPO, &layer.digest).await, &layer.digest);
    // A denied image's blobs stay refused.
    assert_denied(
        &get_manifest(&env.proxy, REPO, "unsigned").await,
        "apps",
        &[NONE_VERIFIED],
    );
    for b in unsigned.blobs() {
        assert_blob_denied(&get_blob(&env.proxy, REPO, &b.digest).await, &b.digest);
        assert!(!env.proxy.has_blob(&b.digest));
    }
    // The admitted image's blobs are served.
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &signed.manifest, "signed");
    for b in signed.blobs() {
        assert_blob(&get_blob(&env.proxy, REPO, &b.digest).await, b, "signed blob");
    }
    // Admitted in test/other: served there, not from test/app (although
    // the proxy now holds it, and test/app upstream has it).
    assert_manifest(
        &get_manifest(&env.proxy, "test/other", "v1").await,
        &elsewhere.manifest,
        "other repo",
    );
    let foreign = &elsewhere.layers[0];
    assert_blob(
        &get_blob(&env.proxy, "test/other", &foreign.digest).await,
        foreign,
        "own repo",
    );
    assert!(env.proxy.stores_blob(&foreign.digest).await);
    assert_blob_denied(&get_blob(&env.proxy, REPO, &foreign.digest).await, &foreign.digest);
    let head = client::head(&env.proxy.url(&format!("/v2/{REPO}/blobs/{}", foreign.digest))).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
}

// ============================================================= 10: material

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_material_passes_through() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(70);
    registry.push_image(REPO, "v1", &image).await;
    let sig = push_legacy_signature(&registry, REPO, &image.manifest, &[&a]).await;
    let predicate = provenance("https://ci.example/x");
    let att = push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_V02, &predicate).await;
    let referrer = push_bundle_signature(&registry, REPO, &image.manifest, &a).await;
    let fallback = referrers_fallback_index(&[IndexEntry::ggcr(&referrer.manifest)]);
    // Another image whose only signature is by a key the policy does not trust.
    let foreign = small_image(71);
    registry.push_image(REPO, "foreign", &foreign).await;
    let foreign_sig = push_legacy_signature(&registry, REPO, &foreign.manifest, &[&b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &image.manifest, "image");
    let digest = &image.manifest.digest;
    // Legacy .sig and .att: manifest, layers and config.
    for (tag, object) in [(sig_tag(digest), &sig), (att_tag(digest), &att)] {
        assert_manifest(&get_manifest(&env.proxy, REPO, &tag).await, &object.manifest, &tag);
        for l in &object.layers {
            assert_blob(&get_blob(&env.proxy, REPO, &l.blob.digest).await, &l.blob, &tag);
        }
        assert_blob(
            &get_blob(&env.proxy, REPO, &object.config.digest).await,
            &object.config,
            &tag,
        );
    }
    // Referrers: the listing (with the referrer's real artifactType), the
    // fallback index itself, the referrer manifest and its bundle.
    let listing = client::get(&env.proxy.url(&format!("/v2/{REPO}/referrers/{digest}"))).await;
    assert_eq!(listing.status, StatusCode::OK);
    assert_eq!(listing.header("content-type"), Some(OCI_INDEX));
    let manifests = listing.json()["manifests"].as_array().cloned().expect("manifests");
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert_eq!(manifests[0]["digest"], json!(referrer.manifest.digest.to_string()));
    assert_eq!(manifests[0]["artifactType"], json!(BUNDLE_V03_MEDIA_TYPE));
    assert_eq!(manifests[0]["size"], json!(referrer.manifest.bytes.len()));
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrers_tag(digest)).await,
        &fallback,
        "fallback index",
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrer.manifest.digest.to_string()).await,
        &referrer.manifest,
        "referrer",
    );
    assert_blob(
        &get_blob(&env.proxy, REPO, &referrer.bundle.digest).await,
        &referrer.bundle,
        "bundle",
    );
    assert_blob(
        &get_blob(&env.proxy, REPO, &referrer.config.digest).await,
        &referrer.config,
        "referrer config",
    );
    // Each is admitted as the image's material, under the image's rule.
    let events = events_for(&env.proxy, &sig.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    env.expect("allow", "apps", &["key-a"]).check(&events[0]);
    assert!(
        reason(&events[0]).starts_with(&format!("verification material of {digest}")),
        "{}",
        events[0]
    );
    let events = events_for(&env.proxy, &referrer.manifest.digest);
    assert!(
        reason(&events[0]).starts_with(&format!("referrer of {digest}")),
        "{}",
        events[0]
    );

    // The material of a denied image is refused like the image.
    let foreign_tag = sig_tag(&foreign.manifest.digest);
    assert_denied(
        &get_manifest(&env.proxy, REPO, &foreign_tag).await,
        "apps",
        &[
            &format!("verification material of {}", foreign.manifest.digest),
            NONE_VERIFIED,
        ],
    );
    let l = &foreign_sig.layers[0].blob;
    assert_blob_denied(&get_blob(&env.proxy, REPO, &l.digest).await, &l.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_tags_holding_an_index_do_not_vouch_for_unsigned_manifests() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(72);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    // Whoever can push to the upstream (but cannot sign) lists unsigned
    // manifests in indexes under the signed image's material tags: the
    // referrers fallback tag and the (unused by this policy) `.att` tag.
    let evil = [small_image(73), small_image(74)];
    for e in &evil {
        registry.push_image(REPO, "", e).await;
    }
    let digest = &image.manifest.digest;
    let fallback = oci_index(&[(&evil[0], "amd64")]);
    registry.push_manifest(REPO, &referrers_tag(digest), &fallback).await;
    let att = oci_index(&[(&evil[1], "amd64")]);
    registry.push_manifest(REPO, &att_tag(digest), &att).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "signed image",
    );
    // The referrers fallback index is the signed image's business: served.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrers_tag(digest)).await,
        &fallback,
        "fallback tag",
    );
    // An index is not the shape of a `.att` object (DSSE layers): it is
    // judged on its own, and unsigned it is refused.
    assert_denied(
        &get_manifest(&env.proxy, REPO, &att_tag(digest)).await,
        "apps",
        &[NONE_VERIFIED],
    );
    // What it lists is not vouched for by the image's signature.
    for e in &evil {
        let resp = get_manifest(&env.proxy, REPO, &e.manifest.digest.to_string()).await;
        assert_denied(&resp, "apps", &[NONE_VERIFIED]);
        let layer = &e.layers[0].digest;
        assert_blob_denied(&get_blob(&env.proxy, REPO, layer).await, layer);
    }
}

/// An image manifest (runnable: config and tar layers) that also carries a
/// `subject`, as if it were a referrer of `subject`.
fn image_with_subject(image: &Image, subject: &Blob) -> Blob {
    let mut m: Value = serde_json::from_slice(&image.manifest.bytes).expect("json");
    m["subject"] = subject.descriptor();
    Blob::new(OCI_MANIFEST, serde_json::to_vec(&m).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_images_posing_as_material_are_not_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(75);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let digest = &image.manifest.digest;
    // An unsigned runnable image under the signed image's `.sbom` tag, and
    // one with a `subject` naming the signed image (a "referrer").
    let under_tag = small_image(76);
    registry
        .push_image(REPO, &format!("{}.sbom", digest.tag_form()), &under_tag)
        .await;
    let posing = small_image(77);
    let with_subject = image_with_subject(&posing, &image.manifest);
    for b in posing.blobs() {
        registry.push_blob(REPO, b).await;
    }
    registry
        .push_manifest(REPO, &with_subject.digest.to_string(), &with_subject)
        .await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "signed image",
    );

    let sbom = format!("{}.sbom", digest.tag_form());
    assert_denied(&get_manifest(&env.proxy, REPO, &sbom).await, "apps", &[NONE_VERIFIED]);
    assert_denied(
        &get_manifest(&env.proxy, REPO, &with_subject.digest.to_string()).await,
        "apps",
        &[NONE_VERIFIED],
    );
    for b in under_tag.blobs().into_iter().chain(posing.blobs()) {
        assert_blob_denied(&get_blob(&env.proxy, REPO, &b.digest).await, &b.digest);
    }
}
