//! Signed images served; unsigned and wrongly signed refused; thresholds; attestations; audit mode.

use super::common::*;

// ============================================================= 1, 2: signed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signature_is_served_and_copied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(1);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    let events = env.allowed(REPO, "v1", &image, "apps", &["key-a"]).await;
    let first = &events[0];
    assert_eq!(first["tag"], json!("v1"));
    assert_eq!(first["mode"], json!("enforce"));
    assert_eq!(reason(first), "signatures verified by key-a");
    // A pull by digest is the same decision, from the cache.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &image.manifest.digest.to_string()).await,
        &image.manifest,
        "by digest",
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    assert_eq!(last["tag"], Value::Null);
    assert_eq!(last["cached"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_referrer_through_the_fallback_index_is_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(2);
    registry.push_image(REPO, "v1", &image).await;
    let referrer = push_bundle_signature(&registry, REPO, &image.manifest, &a).await;
    // Distribution 2.8 has no referrers API: only the fallback tag lists it.
    let listed = read_fallback_index(&registry, REPO, &image.manifest.digest).await;
    assert_eq!(listed, vec![IndexEntry::ggcr(&referrer.manifest)]);
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    env.allowed(REPO, "v1", &image, "apps", &["key-a"]).await;
    // Only bundles are accepted by a bundle-only rule, and this one has one.
    let bundle_only = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: bundles
    match: { repositories: ["test/**"] }
    formats: [bundle]
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let proxy = TestProxy::with_policies(&env.registry.url(), bundle_only.path()).await;
    assert_manifest(
        &get_manifest(&proxy, REPO, "v1").await,
        &image.manifest,
        "bundle-only rule",
    );
    let legacy_only = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: legacy
    match: { repositories: ["test/**"] }
    formats: [legacy]
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let proxy = TestProxy::with_policies(&env.registry.url(), legacy_only.path()).await;
    assert_denied(
        &get_manifest(&proxy, REPO, "v1").await,
        "legacy",
        &["no signatures or attestations found"],
    );
}

// ============================================================= 3: refused

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_image_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(3);
    registry.push_image(REPO, "v1", &image).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let first = env
        .denied(
            REPO,
            "v1",
            &image,
            "apps",
            &[],
            &["no signatures or attestations found", NONE_VERIFIED],
        )
        .await;
    assert_eq!(
        reason(&first),
        format!("{NONE_VERIFIED}; no signatures or attestations found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_by_another_key_is_denied() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(4);
    push_signed(&registry, REPO, "v1", &image, &[&b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let first = env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED]).await;
    // A signature was found; it just is not key-a's.
    assert!(!reason(&first).contains("no signatures"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_payload_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(5);
    registry.push_image(REPO, "v1", &image).await;
    let layer = tamper::tampered_signature(&a, &docker_reference(&registry, REPO), &image.manifest.digest);
    push_sig_layers(&registry, REPO, &image.manifest.digest, vec![layer]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_naming_another_digest_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(6);
    let other = small_image(7);
    registry.push_image(REPO, "v1", &image).await;
    let layer = tamper::signature_for_other_image(&a, &docker_reference(&registry, REPO), &other.manifest.digest);
    push_sig_layers(&registry, REPO, &image.manifest.digest, vec![layer]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let binding = format!(
        "{}.sig layer 0 for `key-a`: signed payload names {}, not this image ({})",
        image.manifest.digest.tag_form(),
        other.manifest.digest,
        image.manifest.digest
    );
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED, &binding])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_of_another_image_copied_onto_the_sig_tag_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(8);
    let other = small_image(9);
    registry.push_image(REPO, "v1", &image).await;
    // `other` is genuinely signed; its .sig object is copied under image's tag.
    let genuine = push_signed_object(&registry, &other, &a).await;
    push_legacy_object(&registry, REPO, &sig_tag(&image.manifest.digest), &genuine).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let binding = format!(
        "signed payload names {}, not this image ({})",
        other.manifest.digest, image.manifest.digest
    );
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED, &binding])
        .await;
    // The signed image itself is fine.
    env.allowed(REPO, "other", &other, "apps", &["key-a"]).await;
}

/// Push `image` as `test/app:other` signed by `key`; its `.sig` object.
async fn push_signed_object(registry: &Distribution, image: &Image, key: &SigningKey) -> LegacyObject {
    registry.push_image(REPO, "other", image).await;
    push_legacy_signature(registry, REPO, &image.manifest, &[key]).await
}

// ============================================================= 4: thresholds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_authorities_are_enough() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    // Two layers in one .sig (a, b).
    let ab = small_image(10);
    push_signed(&registry, REPO, "ab", &ab, &[&a, &b]).await;
    // A legacy .sig by a plus a bundle referrer by c.
    let ac = small_image(11);
    push_signed(&registry, REPO, "ac", &ac, &[&a]).await;
    push_bundle_signature(&registry, REPO, &ac.manifest, &c).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;

    let events = env.allowed(REPO, "ab", &ab, "two-of-three", &["key-a", "key-b"]).await;
    assert_eq!(reason(&events[0]), "signatures verified by key-a, key-b");
    let events = env.allowed(REPO, "ac", &ac, "two-of-three", &["key-a", "key-c"]).await;
    assert_eq!(reason(&events[0]), "signatures verified by key-a, key-c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_authorities_is_not_enough() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    let one = small_image(12);
    push_signed(&registry, REPO, "a", &one, &[&a]).await;
    // The same authority twice still counts once.
    let twice = small_image(13);
    push_signed(&registry, REPO, "aa", &twice, &[&a, &a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;
    let threshold = "signatures: 1 of 2 required authorities verified (key-a; needed 2 of [key-a, key-b, key-c])";
    for (tag, image) in [("a", &one), ("aa", &twice)] {
        let first = env
            .denied(REPO, tag, image, "two-of-three", &["key-a"], &[threshold])
            .await;
        assert_eq!(reason(&first), threshold);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_authority_missing_is_denied_even_with_two_others() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    let bc = small_image(14);
    push_signed(&registry, "test/strict", "bc", &bc, &[&b, &c]).await;
    let ab = small_image(15);
    push_signed(&registry, "test/strict", "ab", &ab, &[&a, &b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;
    let missing = "signatures: required authority `key-a` did not verify";
    let first = env
        .denied("test/strict", "bc", &bc, "strict", &["key-b", "key-c"], &[missing])
        .await;
    assert_eq!(reason(&first), missing);
    env.allowed("test/strict", "ab", &ab, "strict", &["key-a", "key-b"])
        .await;
}

// ============================================================= 5: attestations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_with_passing_checks_is_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let legacy = small_image(20);
    push_signed(&registry, REPO, "legacy", &legacy, &[&a]).await;
    let predicate = provenance("https://ci.example/builders/main");
    push_legacy_attestation(&registry, REPO, &legacy.manifest, &[&a], SLSA_V02, &predicate).await;
    // The same, both as bundles (cosign v3's default format).
    let bundled = small_image(21);
    registry.push_image(REPO, "bundled", &bundled).await;
    push_bundle_signature(&registry, REPO, &bundled.manifest, &a).await;
    push_bundle_attestation(&registry, REPO, &bundled.manifest, &a, SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;

    for (tag, image) in [("legacy", &legacy), ("bundled", &bundled)] {
        let events = env.allowed(REPO, tag, image, "provenance", &["key-a"]).await;
        assert_eq!(
            reason(&events[0]),
            format!("signatures verified by key-a; attestation `slsa` ({SLSA_V02}) verified by key-a"),
            "{tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_failing_a_check_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(22);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let predicate = provenance("https://evil.example/builder");
    push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;
    let check = format!(
        "attestation `slsa` ({SLSA_V02}): 0 of 1 authorities satisfied: `key-a`: check /predicate/builder/id \
         startsWith \"https://ci.example/\" failed (found \"https://evil.example/builder\")"
    );
    let first = env
        .denied(REPO, "v1", &image, "provenance", &["key-a"], &[&check])
        .await;
    assert_eq!(reason(&first), format!("signatures verified by key-a; {check}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_of_another_predicate_type_is_denied() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(23);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let predicate = provenance("https://ci.example/builders/main");
    // Right content, wrong type; and the right type from the wrong signer.
    push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_PROVENANCE_V1, &predicate).await;
    let other_signer = small_image(24);
    push_signed(&registry, REPO, "v2", &other_signer, &[&a]).await;
    push_legacy_attestation(&registry, REPO, &other_signer.manifest, &[&b], SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;
    let missing =
        format!("attestation `slsa` ({SLSA_V02}): 0 of 1 authorities satisfied: no verified attestation of that type");
    for (tag, image) in [("v1", &image), ("v2", &other_signer)] {
        let first = env
            .denied(REPO, tag, image, "provenance", &["key-a"], &[&missing])
            .await;
        assert_eq!(
            reason(&first),
            format!("signatures verified by key-a; {missing}"),
            "{tag}"
        );
    }
}

// ============================================================= 6: audit mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_serves_and_logs_would_deny() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(30);
    registry.push_image(REPO, "v1", &image).await;
    let policies = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: rollout
    match: { repositories: ["test/**"] }
    mode: audit
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let env = Env::start(registry, policies).await;
    skopeo_copies(&env.proxy, "test/app:v1", &image.manifest.digest, &image_blobs(&image)).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "audit mode",
    );
    let events = env
        .expect("would-deny", "rollout", &[])
        .all(&env.proxy, &image.manifest.digest);
    for e in &events {
        assert_eq!(e["mode"], json!("audit"), "{e}");
        assert_eq!(e["served"], json!(true), "{e}");
        assert!(reason(e).contains(NONE_VERIFIED), "{e}");
    }
}
