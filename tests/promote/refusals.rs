//! Refusals that leave production untouched: unsigned and wrongly signed
//! sources, a destination tag that is not what was expected, a corrupted
//! source blob, and bad arguments.

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_wrongly_signed_sources_are_denied_and_production_is_untouched() {
    let a = SigningKey::generate_p256();
    let other = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let unsigned = small_image(321);
    s.staging.push_image(REPO, "unsigned", &unsigned).await;
    let wrong = small_image(322);
    push_signed(&s.staging, REPO, "wrong", &wrong, &[&other]).await;

    for (tag, image) in [("unsigned", &unsigned), ("wrong", &wrong)] {
        let (code, report) = s.promote(tag, "stable", &[]).await;
        assert_eq!(code, 1, "{tag}: {report}");
        assert_eq!(report["result"], "denied", "{tag}");
        let error = report["error"].as_str().expect("error");
        assert!(error.contains("denied by policy"), "{tag}: {error}");
        assert_eq!(manifest_digest(&s.prod, "stable").await, None, "{tag}");
        assert_blobs(&s.prod, image, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_tag_that_changed_is_refused_not_overwritten() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let old = small_image(331);
    s.prod.push_image(REPO, "stable", &old).await;
    let new = small_image(332);
    push_signed(&s.staging, REPO, "v3", &new, &[&a]).await;

    // The operator expected the tag not to exist (or to name another digest).
    for expect in ["none", &new.manifest.digest.to_string()] {
        let (code, report) = s.promote("v3", "stable", &["--expect-current", expect]).await;
        assert_eq!(code, 2, "{expect}: {report}");
        assert_eq!(report["result"], "failed");
        let error = report["error"].as_str().expect("error");
        assert!(
            error.contains(&format!("names {}", old.manifest.digest)) && error.contains("refusing to overwrite"),
            "{error}"
        );
        assert_eq!(
            manifest_digest(&s.prod, "stable").await,
            Some(old.manifest.digest.clone())
        );
    }
    // With the right expectation the tag moves.
    let expect = old.manifest.digest.to_string();
    let (code, report) = s.promote("v3", "stable", &["--expect-current", &expect]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["promotion"]["previous"], expect);
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(new.manifest.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_source_blob_aborts_the_copy_and_a_rerun_copies_only_what_is_missing() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = oci_image(&[700, 2500], 341);
    push_signed(&s.staging, REPO, "v4", &image, &[&a]).await;
    let bad = image.layers.last().expect("layer");
    let file = blob_file(&s.staging, bad);
    let original = flip_first_byte(&file);

    let (code, report) = s.promote("v4", "stable", &["--chunk-bytes", "1000"]).await;
    assert_eq!(code, 2, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(
        error.contains(&bad.digest.to_string()) && error.contains("failed verification"),
        "{error}"
    );
    assert!(!s.prod.has_blob(REPO, bad).await, "production never holds the bad blob");
    assert_eq!(manifest_digest(&s.prod, "stable").await, None, "tag untouched");
    assert_eq!(manifest_digest(&s.prod, &image.manifest.digest.to_string()).await, None);
    let before: Vec<bool> =
        futures_util::future::join_all(image.blobs().into_iter().map(|b| s.prod.has_blob(REPO, b))).await;
    assert_eq!(
        before,
        vec![true, true, false],
        "config and first layer copied before the failure"
    );

    std::fs::write(&file, original).expect("restore");
    let (code, report) = s.promote("v4", "stable", &["--chunk-bytes", "1000"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(copied(&report, "blobsPresent"), 2, "{report}");
    // The missing layer, and the .sig's config and layer (the signature is
    // copied after the image, so the first run never reached it).
    assert_eq!(copied(&report, "blobsUploaded"), 3, "only what is missing: {report}");
    assert_eq!(
        copied(&report, "bytesUploaded"),
        2500 + sig_blob_bytes(&s.staging, &image).await,
        "{report}"
    );
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_the_exit_codes_and_unconfigured_registries_fail_with_2() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["promote", "--help"])
        .output()
        .await
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("0 promoted") && help.contains("1 denied by") && help.contains("2 failed to complete"),
        "{help}"
    );
    assert!(
        help.contains("--expect-current") && help.contains("--dry-run") && help.contains("--json"),
        "{help}"
    );

    let dst = format!("prod.test/{REPO}:stable");
    for src in ["elsewhere.test/test/app:v1", "test/app:v1"] {
        let (code, stdout, stderr) = s.portcullis(&["promote", src, &dst]).await;
        assert_eq!(code, 2, "{src}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stderr.contains("must name a registry configured as an upstream"),
            "{stderr}"
        );
    }
}
