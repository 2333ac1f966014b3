//! `portcullis promote` end to end: two real CNCF Distribution registries
//! (staging and production, plain HTTP on loopback, configured as
//! upstreams), images signed in cosign's legacy format with the test
//! signer, and the built binary. Every refusal checks that production's
//! tag did not move and that no bad byte reached it.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use portcullis::oci::Digest;
use support::admission::{
    image_blobs, policy_dir, policy_yaml, push_signed, skopeo_copies, skopeo_refused, small_image,
};
use support::cosign::{
    SigningKey, push_bundle_signature, push_legacy_attestation, push_legacy_signature, referrers_fallback_index,
};
use support::distribution::Distribution;
use support::images::{Blob, Image, oci_image, oci_image_for, oci_index};
use support::proxy::TestProxy;

const LIMIT: Duration = Duration::from_secs(120);
const REPO: &str = "test/app";
const RULES: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// Staging and production registries, a config naming both, and a policy
/// that requires key `a`.
struct Setup {
    staging: Distribution,
    prod: Distribution,
    work: tempfile::TempDir,
    policies: tempfile::TempDir,
}

impl Setup {
    async fn start(a: &SigningKey) -> Setup {
        Setup::start_with(policy_dir(&[("a", a)], RULES)).await
    }

    async fn start_with(policies: tempfile::TempDir) -> Setup {
        let (staging, prod) = tokio::join!(Distribution::start(), Distribution::start());
        let work = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "dataDir: {}\nupstreams:\n  - host: staging.test\n    url: {}\n    insecurePlainHttp: true\n  - host: prod.test\n    url: {}\n    insecurePlainHttp: true\n",
            work.path().join("data").display(),
            staging.url(),
            prod.url()
        );
        std::fs::write(work.path().join("portcullis.yaml"), config).expect("config");
        Setup {
            staging,
            prod,
            work,
            policies,
        }
    }

    /// Run the built binary with the config and policies: (exit code, stdout, stderr).
    async fn portcullis(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.work.path().join("portcullis.yaml");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--policies")
            .arg(self.policies.path())
            .current_dir(self.work.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run portcullis");
        let output = tokio::time::timeout(LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("portcullis {args:?} did not finish within {LIMIT:?}"))
            .expect("portcullis output");
        (
            output.status.code().expect("exit code"),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `portcullis promote` as a child that the test may kill.
    fn spawn_promote(&self, src: &str, dst: &str, extra: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "promote",
                &format!("staging.test/{REPO}:{src}"),
                &format!("prod.test/{REPO}:{dst}"),
            ])
            .args(extra)
            .arg("--config")
            .arg(self.work.path().join("portcullis.yaml"))
            .arg("--policies")
            .arg(self.policies.path())
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run portcullis promote")
    }

    /// `portcullis promote staging.test/REPO:src prod.test/REPO:dst --json …`:
    /// (exit code, the JSON report).
    async fn promote(&self, src: &str, dst: &str, extra: &[&str]) -> (i32, serde_json::Value) {
        let src = format!("staging.test/{REPO}:{src}");
        let dst = format!("prod.test/{REPO}:{dst}");
        let mut args = vec!["promote", src.as_str(), dst.as_str(), "--json"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = self.portcullis(&args).await;
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
        (code, report)
    }
}

/// The digest `repo:reference` names on `registry`, if it exists (a
/// manifest `HEAD` through the registry API).
async fn manifest_digest(registry: &Distribution, reference: &str) -> Option<Digest> {
    let url = registry.url_for(&format!("/v2/{REPO}/manifests/{reference}"));
    let out = tokio::process::Command::new("curl")
        .args(["-sSI", "-H"])
        .arg(format!("Accept: {}", support::admission::ACCEPT))
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    head.lines()
        .find_map(|l| {
            l.strip_prefix("Docker-Content-Digest: ")
                .or(l.strip_prefix("docker-content-digest: "))
        })
        .map(|d| d.trim().parse().expect("digest"))
}

/// The bytes of the `.sig` manifest's config and layers in `registry`.
async fn sig_blob_bytes(registry: &Distribution, image: &Image) -> u64 {
    let url = registry.url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(&image.manifest.digest)));
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sig manifest");
    let layers = m["layers"].as_array().expect("layers");
    let sizes = layers.iter().chain(std::iter::once(&m["config"]));
    sizes.map(|d| d["size"].as_u64().expect("size")).sum()
}

fn sig_tag(d: &Digest) -> String {
    format!("{}.sig", d.tag_form())
}

fn copied(report: &serde_json::Value, field: &str) -> u64 {
    report["promotion"]["copied"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no copied.{field} in {report}"))
}

/// Every blob of `image` is (or is not) in production.
async fn assert_blobs(prod: &Distribution, image: &Image, present: bool) {
    for blob in image.blobs() {
        assert_eq!(prod.has_blob(REPO, blob).await, present, "blob {}", blob.digest);
    }
}

/// The data file of `blob` in Distribution's filesystem storage.
fn blob_file(registry: &Distribution, blob: &Blob) -> std::path::PathBuf {
    let hex = blob.digest.hex();
    registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data")
}

/// Wait until production holds `blob`: the copy has started.
async fn copy_started(prod: &Distribution, blob: &Blob) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !prod.has_blob(REPO, blob).await {
        assert!(std::time::Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn flip_first_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).expect("read blob file");
    let mut bad = original.clone();
    bad[0] ^= 0xff;
    std::fs::write(path, bad).expect("write blob file");
    original
}

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

    let (code, report) = s.promote("v2", "stable", &["--expect-current", "none"]).await;
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

/// Large enough that the copy (256 KiB chunks) is still running when the
/// concurrent change lands.
const LARGE: usize = 32 * 1024 * 1024;

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
async fn a_destination_fallback_index_that_hides_the_signature_is_kept_and_the_promotion_denied() {
    let a = SigningKey::generate_p256();
    let s = Setup::start(&a).await;
    let image = small_image(411);
    s.staging.push_image(REPO, "v11", &image).await;
    push_bundle_signature(&s.staging, REPO, &image.manifest, &a).await;
    // Production already has its own (empty) fallback index for the digest.
    let fallback = image.manifest.digest.tag_form();
    let theirs = referrers_fallback_index(&[]);
    s.prod.push_manifest(REPO, &fallback, &theirs).await;

    let (code, report) = s.promote("v11", "stable", &[]).await;
    assert_eq!(code, 1, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(error.starts_with("denied by policy at the destination"), "{error}");
    assert_eq!(
        manifest_digest(&s.prod, &fallback).await,
        Some(theirs.digest.clone()),
        "not overwritten"
    );
    assert_eq!(manifest_digest(&s.prod, "stable").await, None, "tag untouched");
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

/// Production requires the build signature and a promotion record signed
/// by the promoter's key `p`; staging only the build signature.
const RULES_WITH_RECORD: &str = r#"
rules:
  - name: production
    match: { registry: prod.test, repositories: ["test/**"] }
    require:
      signatures: { anyOf: [key-a] }
      attestations:
        - name: promoted
          predicateType: https://slsa.dev/verification_summary/v1
          authorities: [key-p]
          checks:
            - { path: /predicate/verificationResult, equals: PASSED }
            - { path: /predicate/verifier/id, equals: "https://portcullis.dev/promote/v1" }
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A promoter key pair in `dir`: `promoter.key` (PKCS#8 PEM) and `p.pub`.
fn write_promoter_key(dir: &Path, private: &Path) {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let spki = pair.public_key().as_der().expect("SPKI");
    std::fs::write(private, pem("PRIVATE KEY", pkcs8.as_ref())).expect("write key");
    std::fs::write(dir.join("p.pub"), pem("PUBLIC KEY", spki.as_ref())).expect("write pub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_promotion_record_is_attached_and_production_requires_it() {
    let a = SigningKey::generate_p256();
    let policies = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let promoter_key = keys.path().join("promoter.key");
    a.write_public_pem(&policies.path().join("a.pub"));
    write_promoter_key(policies.path(), &promoter_key);
    std::fs::write(
        policies.path().join("policy.yaml"),
        policy_yaml(&["a", "p"], RULES_WITH_RECORD),
    )
    .expect("policy");
    let s = Setup::start_with(policies).await;
    let key = promoter_key.to_str().expect("utf8");

    // Without a record the copy is not admitted in production: denied there,
    // the tag not moved.
    let unrecorded = small_image(421);
    push_signed(&s.staging, REPO, "v12", &unrecorded, &[&a]).await;
    let (code, report) = s.promote("v12", "unrecorded", &[]).await;
    assert_eq!(code, 1, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(error.starts_with("denied by policy at the destination"), "{error}");
    assert!(error.contains("promoted"), "names the missing attestation: {error}");
    assert_eq!(manifest_digest(&s.prod, "unrecorded").await, None);

    let image = small_image(422);
    push_signed(&s.staging, REPO, "v13", &image, &[&a]).await;
    let (code, report) = s.promote("v13", "stable", &["--sign-key", key]).await;
    assert_eq!(code, 0, "{report}");
    let record: Digest = report["promotion"]["record"]
        .as_str()
        .expect("record digest")
        .parse()
        .expect("digest");
    assert_eq!(
        manifest_digest(&s.prod, &record.to_string()).await,
        Some(record.clone())
    );
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
    // The record is listed in production's fallback index for the digest.
    let fallback = image.manifest.digest.tag_form();
    let url = s.prod.url_for(&format!("/v2/{REPO}/manifests/{fallback}"));
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", "Accept: application/vnd.oci.image.index.v1+json"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fallback index");
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert!(listed.contains(&record.to_string().as_str()), "{index}");

    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"rule\": \"production\""), "{stdout}");
    assert!(stdout.contains("key-p"), "the record's authority satisfied: {stdout}");

    // skopeo pulls through a Portcullis in front of production under the
    // same policy: the promoted image passes, the unrecorded copy (present
    // by digest, never tagged) is refused.
    let yaml = format!(
        "defaultUpstream: prod.test\nupstreams:\n  - host: prod.test\n    url: {}\n    insecurePlainHttp: true\n",
        s.prod.url()
    );
    let proxy = TestProxy::with_config_and_policies(&yaml, s.policies.path()).await;
    skopeo_copies(
        &proxy,
        &format!("{REPO}:stable"),
        &image.manifest.digest,
        &image_blobs(&image),
    )
    .await;
    skopeo_refused(&proxy, &format!("{REPO}@{}", unrecorded.manifest.digest)).await;
}

/// The promoter's authority `key-p` may sign, but its signature must never
/// be what lets an image through a promotion.
const RULES_WITH_PROMOTER: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a, key-p] } }
promotion:
  promoter: key-p
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promoters_own_signature_never_satisfies_a_promotion() {
    let a = SigningKey::generate_p256();
    let p = SigningKey::generate_p256();
    let s = Setup::start_with(policy_dir(&[("a", &a), ("p", &p)], RULES_WITH_PROMOTER)).await;
    let by_promoter = small_image(431);
    push_signed(&s.staging, REPO, "by-promoter", &by_promoter, &[&p]).await;
    let by_both = small_image(432);
    push_signed(&s.staging, REPO, "by-both", &by_both, &[&a, &p]).await;
    let by_builder = small_image(433);
    push_signed(&s.staging, REPO, "by-builder", &by_builder, &[&a]).await;

    for (tag, image) in [("by-promoter", &by_promoter), ("by-both", &by_both)] {
        let (code, report) = s.promote(tag, "stable", &[]).await;
        assert_eq!(code, 1, "{tag}: {report}");
        let error = report["error"].as_str().expect("error");
        assert!(
            error.starts_with("separation of roles: the promoter's authority `key-p`"),
            "{tag}: {error}"
        );
        assert_eq!(manifest_digest(&s.prod, "stable").await, None, "{tag}");
        assert_blobs(&s.prod, image, false).await;
    }
    let (code, report) = s.promote("by-builder", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(by_builder.manifest.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_must_be_signed_with_the_promoters_key() {
    let a = SigningKey::generate_p256();
    let policies = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let promoter_key = keys.path().join("promoter.key");
    let other_key = keys.path().join("other.key");
    a.write_public_pem(&policies.path().join("a.pub"));
    write_promoter_key(keys.path(), &other_key);
    write_promoter_key(policies.path(), &promoter_key);
    let rules = "rules:\n  - name: apps\n    match: { repositories: [\"test/**\"] }\n    require: { signatures: { anyOf: [key-a] } }\npromotion:\n  promoter: key-p\n";
    std::fs::write(policies.path().join("policy.yaml"), policy_yaml(&["a", "p"], rules)).expect("policy");
    let s = Setup::start_with(policies).await;
    let image = small_image(441);
    push_signed(&s.staging, REPO, "v14", &image, &[&a]).await;

    let (code, report) = s
        .promote("v14", "stable", &["--sign-key", other_key.to_str().expect("utf8")])
        .await;
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        report["error"],
        "--sign-key is not a key of the promoter's authority `key-p`"
    );
    assert_eq!(
        manifest_digest(&s.prod, &image.manifest.digest.to_string()).await,
        None,
        "nothing copied"
    );

    let (code, report) = s
        .promote("v14", "stable", &["--sign-key", promoter_key.to_str().expect("utf8")])
        .await;
    assert_eq!(code, 0, "{report}");
    assert!(report["promotion"]["record"].is_string(), "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
    );
}

/// A promotion of an image the destination already holds costs a number of
/// requests that does not grow with its blobs: the same for 2 layers and for
/// 24 (the report's `requests`, counted by the proxy's upstream metrics).
/// Prints the counts and times (the README's benchmark figures).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_promotion_needs_two_distinct_signers_besides_the_promoter() {
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_p256();
    let p = SigningKey::generate_p256();
    let rules = "rules:\n  - name: apps\n    match: { repositories: [\"test/**\"] }\n    require: { signatures: { anyOf: [key-a, key-b], threshold: 2 } }\npromotion:\n  promoter: key-p\n";
    let s = Setup::start_with(policy_dir(&[("a", &a), ("b", &b), ("p", &p)], rules)).await;
    let one = small_image(461);
    push_signed(&s.staging, REPO, "one", &one, &[&a]).await;
    let two = small_image(462);
    push_signed(&s.staging, REPO, "two", &two, &[&a, &b]).await;

    let (code, report) = s.promote("one", "stable", &[]).await;
    assert_eq!(code, 1, "one signer of two: {report}");
    assert_eq!(manifest_digest(&s.prod, "stable").await, None);
    let (code, report) = s.promote("two", "stable", &["--expect-current", "none"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(two.manifest.digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_rules_for_the_destination_apply_besides_the_pull_rules() {
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_p256();
    let rules = r#"rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a, key-b] } }
promotion:
  rules:
    - name: into-production
      match: { registry: prod.test, repositories: ["test/**"], tags: ["stable"] }
      require: { signatures: { anyOf: [key-a, key-b], threshold: 2 } }
"#;
    let s = Setup::start_with(policy_dir(&[("a", &a), ("b", &b)], rules)).await;
    let one = small_image(471);
    push_signed(&s.staging, REPO, "one", &one, &[&a]).await;
    let two = small_image(472);
    push_signed(&s.staging, REPO, "two", &two, &[&a, &b]).await;

    let (code, report) = s.promote("one", "stable", &[]).await;
    assert_eq!(code, 1, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(error.contains("rule `into-production`"), "{error}");
    assert_eq!(manifest_digest(&s.prod, "stable").await, None);
    assert_blobs(&s.prod, &one, false).await;
    let audit = report["audit"].as_array().expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e["rule"] == "into-production" && e["verdict"] == "deny"),
        "{report}"
    );

    // Another tag: no promotion rule matches, the pull rule suffices.
    let (code, report) = s.promote("one", "canary", &[]).await;
    assert_eq!(code, 0, "{report}");
    let (code, report) = s.promote("two", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(two.manifest.digest.clone())
    );
}
