//! What a promotion copies: images, indexes, signatures, attestations,
//! bundle referrers; chunked and mounted uploads; concurrent changes;
//! resuming after a kill; the cost of promoting what is already there.

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_image_promotes_with_its_signature_and_verifies_in_production() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    // The second layer (3000 bytes) is uploaded in PATCH chunks of 1000.
    let image = oci_image(&[500, 3000], 301);
    push_signed(&s.staging, REPO, "v1", &image, &[&a]).await;
    let predicate = serde_json::json!({ "builder": { "id": "https://ci.example/build" } });
    push_legacy_attestation(
        &s.staging,
        REPO,
        &image.manifest,
        &[&a],
        "https://slsa.dev/provenance/v1",
        &predicate,
    )
    .await;

    let (code, report) = s.promote("v1", "stable", &["--chunk-bytes", "1000"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["result"], "promoted");
    assert_eq!(report["promotion"]["digest"], image.manifest.digest.to_string());
    assert!(report["promotion"]["previous"].is_null(), "{report}");
    // The image's config and two layers, the config and layer of the .sig
    // and of the .att.
    assert_eq!(copied(&report, "blobsUploaded"), 7, "{report}");
    assert_eq!(
        copied(&report, "manifestsPut"),
        6,
        "image, .sig and .att by digest, .sig and .att tags, the tag: {report}"
    );
    assert_eq!(
        report["promotion"]["materialManifests"], 2,
        "the .sig and .att: {report}"
    );

    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
    assert_blobs(&s.prod, &image, true).await;
    let sig = sig_tag(&image.manifest.digest);
    assert_eq!(
        manifest_digest(&s.prod, &sig).await,
        manifest_digest(&s.staging, &sig).await,
        "the signature is in production with the same digest"
    );
    assert!(manifest_digest(&s.prod, &sig).await.is_some());
    let att = format!("{}.att", image.manifest.digest.tag_form());
    assert!(manifest_digest(&s.prod, &att).await.is_some(), "the attestation");
    assert_eq!(
        manifest_digest(&s.prod, &att).await,
        manifest_digest(&s.staging, &att).await
    );

    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("ALLOW prod.test/{REPO}:stable")), "{stdout}");

    // Promoting again changes nothing and copies nothing.
    let current = image.manifest.digest.to_string();
    let (code, report) = s.promote("v1", "stable", &["--expect-current", &current]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(copied(&report, "blobsUploaded"), 0, "{report}");
    assert_eq!(copied(&report, "manifestsPut"), 1, "only the tag: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_multi_arch_index_promotes_with_every_child() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let amd = oci_image_for("amd64", &[1200], 311);
    let arm = oci_image_for("arm64", &[1300], 312);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    s.staging.push_index(REPO, "v2", &index, &[&amd, &arm]).await;
    push_legacy_signature(&s.staging, REPO, &index, &[&a]).await;

    // `--all-platforms` is accepted: it is what a promotion does anyway.
    let (code, report) = s
        .promote("v2", "stable", &["--expect-current", "none", "--all-platforms"])
        .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(manifest_digest(&s.prod, "stable").await, Some(index.digest.clone()));
    for child in [&amd, &arm] {
        let d = child.manifest.digest.to_string();
        assert_eq!(manifest_digest(&s.prod, &d).await, Some(child.manifest.digest.clone()));
        assert_blobs(&s.prod, child, true).await;
    }
    assert!(manifest_digest(&s.prod, &sig_tag(&index.digest)).await.is_some());
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Each platform image of an index carries its own signatures (a node
/// pulling one platform by digest verifies that child): the children's
/// `.sig` tags and bundle referrers are promoted with the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_promotes_with_the_signatures_of_each_child() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let amd = oci_image_for("amd64", &[1100], 321);
    let arm = oci_image_for("arm64", &[1400], 322);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    s.staging.push_index(REPO, "v3", &index, &[&amd, &arm]).await;
    push_legacy_signature(&s.staging, REPO, &index, &[&a]).await;
    push_legacy_signature(&s.staging, REPO, &amd.manifest, &[&a]).await;
    let arm_referrer = push_bundle_signature(&s.staging, REPO, &arm.manifest, &a).await;

    let (code, report) = s.promote("v3", "stable", &["--expect-current", "none"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(manifest_digest(&s.prod, "stable").await, Some(index.digest.clone()));
    assert_eq!(
        manifest_digest(&s.prod, &sig_tag(&amd.manifest.digest)).await,
        manifest_digest(&s.staging, &sig_tag(&amd.manifest.digest)).await,
        "the amd64 child's .sig"
    );
    let r = arm_referrer.manifest.digest.to_string();
    assert_eq!(
        manifest_digest(&s.prod, &r).await,
        Some(arm_referrer.manifest.digest.clone())
    );
    let listed = read_fallback_index(&s.prod, REPO, &arm.manifest.digest).await;
    assert_eq!(
        listed.iter().map(|e| &e.digest).collect::<Vec<_>>(),
        vec![&arm_referrer.manifest.digest],
        "the arm64 child's fallback index"
    );
    assert_eq!(report["promotion"]["materialManifests"], 4, "{report}");
    // Each child verifies in production by digest, with its own signature.
    for child in [&amd, &arm] {
        let reference = format!("prod.test/{REPO}@{}", child.manifest.digest);
        let (code, stdout, stderr) = s.portcullis(&["verify", &reference]).await;
        assert_eq!(code, 0, "{reference}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
}

/// Production runs Distribution 2.x (no referrers API): a fallback index it
/// already holds for the digest is merged with the source's entries (union
/// by digest, its own entries kept), never overwritten nor left hiding the
/// signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_fallback_index_is_merged_keeping_its_entries() {
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(411);
    s.staging.push_image(REPO, "v11", &image).await;
    let ours = push_bundle_signature(&s.staging, REPO, &image.manifest, &a).await;
    // Production already lists a referrer of its own for the digest.
    let theirs = push_bundle_signature(&s.prod, REPO, &image.manifest, &b).await;
    let fallback = image.manifest.digest.tag_form();
    let before = manifest_digest(&s.prod, &fallback).await.expect("production's index");

    let (code, report) = s.promote("v11", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    let after = manifest_digest(&s.prod, &fallback).await.expect("merged index");
    assert_ne!(after, before, "merged");
    let listed = read_fallback_index(&s.prod, REPO, &image.manifest.digest).await;
    let digests: Vec<&Digest> = listed.iter().map(|e| &e.digest).collect();
    assert_eq!(
        digests,
        vec![&theirs.manifest.digest, &ours.manifest.digest],
        "production's entry first, as it was, then the promoted one"
    );
    assert_eq!(listed[0], IndexEntry::ggcr(&theirs.manifest), "kept byte for byte");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");

    // A rerun finds every entry listed and writes nothing.
    let (code, report) = s.promote("v11", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(manifest_digest(&s.prod, &fallback).await, Some(after));
}

/// From a source with the referrers API (and so no fallback tag) to
/// production without it: the referrer is copied and production gets a
/// fallback index listing it (created, as the OCI 1.1 tag schema asks),
/// or nothing would find the signature there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_index_is_created_when_the_source_has_the_referrers_api() {
    use crate::support::cosign::{COSIGN_SIGN_PREDICATE, FIXED_CREATED, bundle_referrer, signature_bundle};
    let a = SigningKey::generate_p256();
    let staging = crate::support::fake::FakeRegistry::start().await;
    staging.enable_referrers_api(true);
    let image = small_image(371);
    staging.put_image(REPO, "v7", &image);
    let bundle = signature_bundle(&a, &image.manifest.digest);
    let referrer = bundle_referrer(&image.manifest, bundle, COSIGN_SIGN_PREDICATE, FIXED_CREATED);
    staging.put_blob(REPO, &referrer.config);
    staging.put_blob(REPO, &referrer.bundle);
    staging.put_manifest(REPO, &referrer.manifest);
    let s = Setup::start(&a).await;
    // The same setup, with staging.test on the fake.
    let config = s.work.path().join("portcullis.yaml");
    let yaml = std::fs::read_to_string(&config).expect("config");
    let yaml = yaml.replace(&s.staging.url(), &staging.url());
    std::fs::write(&config, yaml).expect("config");

    let (code, report) = s.promote("v7", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, &referrer.manifest.digest.to_string()).await,
        Some(referrer.manifest.digest.clone())
    );
    let listed = read_fallback_index(&s.prod, REPO, &image.manifest.digest).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].digest, referrer.manifest.digest);
    assert_eq!(listed[0].size, referrer.manifest.bytes.len());
    assert_eq!(
        listed[0].artifact_type.as_deref(),
        Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
        "the manifest's artifactType"
    );
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Production already holds its own `.sig` object for the digest (another
/// signer's): the promoted signature is added to it, as cosign adds a
/// signature — production's layer first, kept — instead of the object
/// being left without the signature the policy requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_signature_object_is_merged_keeping_its_signatures() {
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(381);
    push_signed(&s.staging, REPO, "v8", &image, &[&a]).await;
    push_legacy_signature(&s.prod, REPO, &image.manifest, &[&b]).await;
    let theirs = sig_layers(&s.prod, &image).await;
    let ours = sig_layers(&s.staging, &image).await;

    let (code, report) = s.promote("v8", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    let merged = sig_layers(&s.prod, &image).await;
    assert_eq!(
        merged,
        [theirs, ours].concat(),
        "production's signature first, then the promoted one"
    );
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");

    // A rerun finds the signature there and writes nothing.
    let sig = sig_tag(&image.manifest.digest);
    let before = manifest_digest(&s.prod, &sig).await;
    let (code, report) = s.promote("v8", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(manifest_digest(&s.prod, &sig).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(351);
    push_signed(&s.staging, REPO, "v5", &image, &[&a]).await;
    let (code, report) = s.promote("v5", "stable", &["--dry-run"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["promotion"]["dryRun"], true);
    // Each run verifies in a data directory of its own, removed afterwards.
    let runs = s.work.path().join("data/promote-runs");
    let left: Vec<_> = std::fs::read_dir(&runs).expect("runs dir").collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(report["promotion"]["digest"], image.manifest.digest.to_string());
    assert_eq!(manifest_digest(&s.prod, "stable").await, None);
    assert_blobs(&s.prod, &image, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_image_promotes_with_its_referrer_and_fallback_index() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(361);
    s.staging.push_image(REPO, "v6", &image).await;
    let referrer = push_bundle_signature(&s.staging, REPO, &image.manifest, &a).await;

    let (code, report) = s.promote("v6", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    let r = referrer.manifest.digest.to_string();
    assert_eq!(
        manifest_digest(&s.prod, &r).await,
        Some(referrer.manifest.digest.clone())
    );
    assert!(s.prod.has_blob(REPO, &referrer.bundle).await, "the bundle");
    let fallback = image.manifest.digest.tag_form();
    assert!(
        manifest_digest(&s.prod, &fallback).await.is_some(),
        "the fallback index"
    );
    assert_eq!(
        manifest_digest(&s.prod, &fallback).await,
        manifest_digest(&s.staging, &fallback).await
    );
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_tag_moved_during_the_copy_is_not_overwritten() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = oci_image(&[LARGE], 371);
    push_signed(&s.staging, REPO, "v7", &image, &[&a]).await;
    let other = small_image(372);

    let promote = s.promote("v7", "stable", &["--chunk-bytes", "262144"]);
    let intruder = async {
        copy_started(&s.prod, &image.config).await;
        s.prod.push_image(REPO, "stable", &other).await;
    };
    let ((code, report), ()) = tokio::join!(promote, intruder);
    assert_eq!(code, 2, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(
        error.contains(&format!("names {}, expected no tag", other.manifest.digest)),
        "{error}"
    );
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(other.manifest.digest.clone())
    );
    // The copy itself completed (content-addressed, untagged).
    assert_blobs(&s.prod, &image, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_verified_is_the_digest_copied_when_the_source_tag_moves() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = oci_image(&[LARGE], 381);
    push_signed(&s.staging, REPO, "v8", &image, &[&a]).await;
    let moved = small_image(382);

    let promote = s.promote("v8", "stable", &["--chunk-bytes", "262144"]);
    let mover = async {
        copy_started(&s.prod, &image.config).await;
        s.staging.push_image(REPO, "v8", &moved).await;
    };
    let ((code, report), ()) = tokio::join!(promote, mover);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.staging, "v8").await,
        Some(moved.manifest.digest.clone())
    );
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
    assert_blobs(&s.prod, &moved, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_within_one_registry_mounts_blobs_instead_of_uploading() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(391);
    push_signed(&s.staging, REPO, "v9", &image, &[&a]).await;
    let src = format!("staging.test/{REPO}:v9");
    let dst = "staging.test/test/released:stable";
    let (code, stdout, stderr) = s.portcullis(&["promote", &src, dst, "--json"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    // The image's config and two layers, the .sig's config and layer.
    assert_eq!(copied(&report, "blobsMounted"), 5, "{report}");
    assert_eq!(copied(&report, "blobsUploaded"), 0, "{report}");
    for blob in image.blobs() {
        assert!(s.staging.has_blob("test/released", blob).await, "{}", blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_killed_mid_copy_leaves_the_tag_and_a_rerun_copies_only_what_is_missing() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = oci_image(&[LARGE], 401);
    push_signed(&s.staging, REPO, "v10", &image, &[&a]).await;
    let large = &image.layers[0];

    let mut child = s.spawn_promote("v10", "stable", &["--chunk-bytes", "131072"]);
    copy_started(&s.prod, &image.config).await;
    child.kill().await.expect("kill -9 the promotion");
    assert_eq!(manifest_digest(&s.prod, "stable").await, None, "tag untouched");
    assert!(!s.prod.has_blob(REPO, large).await, "the large layer was mid-upload");

    let (code, report) = s.promote("v10", "stable", &["--chunk-bytes", "131072"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(copied(&report, "blobsPresent"), 1, "the config: {report}");
    // The large layer, and the .sig's config and layer.
    assert_eq!(copied(&report, "blobsUploaded"), 3, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_what_production_already_holds_costs_a_bounded_number_of_requests() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let mut costs = Vec::new();
    for (tag, layers) in [("few", 2usize), ("many", 24)] {
        let sizes = vec![1000; layers];
        let image = oci_image(&sizes, 450 + layers as u64);
        push_signed(&s.staging, REPO, tag, &image, &[&a]).await;
        let (code, report) = s.promote(tag, tag, &[]).await;
        assert_eq!(code, 0, "{report}");
        let first = &report["requests"];
        let current = image.manifest.digest.to_string();
        let started = std::time::Instant::now();
        let (code, report) = s.promote(tag, tag, &["--expect-current", &current]).await;
        let took = started.elapsed();
        assert_eq!(code, 0, "{report}");
        assert_eq!(copied(&report, "blobsUploaded"), 0, "{report}");
        let count = |r: &serde_json::Value, host: &str| r[host].as_u64().expect("request count");
        let cost = (
            count(&report["requests"], "staging.test"),
            count(&report["requests"], "prod.test"),
        );
        eprintln!(
            "{layers} layers: first promotion {first}; already in production: staging {} requests, production {} requests, {took:?}",
            cost.0, cost.1
        );
        assert!(
            cost.1 < count(first, "prod.test"),
            "a rerun asks production less: {report}"
        );
        costs.push(cost);
    }
    assert!(costs[0].0 > 0 && costs[0].1 > 0, "{costs:?}");
    assert_eq!(costs[0], costs[1], "(staging, production) requests for 2 and 24 layers");
}
