//! Separated roles and the signed promotion record: the promoter's own
//! signature never lets an image through, promotion rules for the
//! destination, two-person promotion, and production requiring the record.

use super::common::*;

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

/// A keyless promoter (an OIDC issuer and subject, certificates verified
/// offline against a trusted root): the policy loads, a source signed by
/// the build key promotes (the promoter's identity is compared with the
/// signers' by issuer and subject: `keyless.rs`), and a record cannot be
/// signed by `--sign-key` for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_promoter_is_separated_from_key_signers() {
    let a = SigningKey::generate_p256();
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sigstore/trusted_root/public-good.trusted_root.json"
    );
    let rules = format!(
        "  promoter: {{ keyless: {{ trustRoot: pg, identities: [ {{ issuer: https://token.actions.githubusercontent.com, \
         subject: 'https://github.com/acme/release/.github/workflows/promote.yml@refs/heads/main' }} ] }} }}\n\
         trustRoots:\n  pg: {{ trustedRoot: {root} }}\n\
         rules:\n  - name: apps\n    match: {{ repositories: [\"test/**\"] }}\n    require: {{ signatures: {{ anyOf: [key-a] }} }}\n\
         promotion:\n  promoter: promoter\n"
    );
    let s = Setup::start_with(policy_dir(&[("a", &a)], &rules)).await;
    let image = small_image(481);
    push_signed(&s.staging, REPO, "v18", &image, &[&a]).await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("promoter.key");
    write_promoter_key(keys.path(), &key);

    let (code, report) = s
        .promote("v18", "stable", &["--sign-key", key.to_str().expect("utf8")])
        .await;
    assert_eq!(code, 2, "{report}");
    let error = report["error"].as_str().expect("error");
    assert!(
        error.starts_with("the promoter's authority `promoter` is keyless"),
        "{error}"
    );
    assert_eq!(manifest_digest(&s.prod, &image.manifest.digest.to_string()).await, None);

    let (code, report) = s.promote("v18", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        manifest_digest(&s.prod, "stable").await,
        Some(image.manifest.digest.clone())
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
