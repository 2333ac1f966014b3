//! Issue 9: thresholds count distinct signers, authorities never share a
//! key, blob signatures are not image signatures unless asked for, and a
//! key file replaced in place (outside the policy directory) revokes the old
//! key within seconds.

use super::common::*;

/// `threshold: 2` over two authorities.
const TWO_OF_TWO: &str = r#"
rules:
  - name: both
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a, key-b], threshold: 2 } }
"#;

/// Poll `GET repo:reference` until it answers `status` (at most 10 s).
async fn wait_for_status(proxy: &TestProxy, reference: &str, status: StatusCode) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get_manifest(proxy, REPO, reference).await;
        if resp.status == status {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after 10 s: {:?}",
            resp.status,
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two authority names on one key: the policy that would let one signature
/// satisfy `threshold: 2` cannot be loaded (not at start, not by a reload),
/// so the one-signature image stays refused; with two distinct keys the
/// same threshold needs two signatures (control: both signed, served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signature_never_satisfies_a_threshold_of_two() {
    let (a, b) = (SigningKey::generate_p256(), SigningKey::generate_p256());
    let registry = Distribution::start().await;
    let one = small_image(900);
    push_signed(&registry, REPO, "one", &one, &[&a]).await;
    let both = small_image(901);
    push_signed(&registry, REPO, "both", &both, &[&a, &b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b)], TWO_OF_TWO)).await;

    let threshold = "signatures: 1 of 2 required authorities verified (key-a; needed 2 of [key-a, key-b])";
    let first = env.denied(REPO, "one", &one, "both", &["key-a"], &[threshold]).await;
    assert_eq!(reason(&first), threshold);
    env.allowed(REPO, "both", &both, "both", &["key-a", "key-b"]).await;

    // The same threshold over two names for key a: refused as a policy.
    let dir = env.policies.path();
    let shared = policy_yaml(&["a"], TWO_OF_TWO).replace(
        "  key-a: { key: { keys: [a] }, tlog: ignore }\n",
        "  key-a: { key: { keys: [a] }, tlog: ignore }\n  key-b: { key: { keys: [a] }, tlog: ignore }\n",
    );
    let err = {
        let candidate = tempfile::tempdir().expect("tempdir");
        a.write_public_pem(&candidate.path().join("a.pub"));
        std::fs::write(candidate.path().join("policy.yaml"), &shared).expect("write");
        portcullis::policy::load_dir(candidate.path()).expect_err("two authorities on one key")
    };
    let fingerprint = a.public_key().fingerprint().to_string();
    let message = err.to_string();
    assert!(
        message.contains("`key-a` and `key-b`") && message.contains(&fingerprint),
        "{message}"
    );
    // A running proxy refuses it too and keeps its policy.
    std::fs::write(dir.join("policy.yaml"), &shared).expect("write");
    tokio::time::sleep(Duration::from_millis(4500)).await; // two polls
    assert_denied(&get_manifest(&env.proxy, REPO, "one").await, "both", &[threshold]);
    skopeo_refused(&env.proxy, &format!("{REPO}:one")).await;
    let last = events_for(&env.proxy, &one.manifest.digest).pop().expect("event");
    env.expect("deny", "both", &["key-a"]).check(&last);
}

/// A key replaced in place by another key of the same size, with the same
/// modification time, in a directory outside the policy directory: the
/// revision changes within seconds, the old key's signature stops counting
/// and the new key's starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_key_file_outside_the_policy_directory_revokes_the_old_key() {
    let (old, new) = (SigningKey::generate_p256(), SigningKey::generate_p256());
    assert_eq!(old.public_pem().len(), new.public_pem().len(), "same-size PEMs");
    let registry = Distribution::start().await;
    let by_old = small_image(910);
    push_signed(&registry, REPO, "old", &by_old, &[&old]).await;
    let by_new = small_image(911);
    push_signed(&registry, REPO, "new", &by_new, &[&new]).await;

    let keys = tempfile::tempdir().expect("key dir");
    let key_file = keys.path().join("team").join("a.pub");
    std::fs::create_dir(keys.path().join("team")).expect("mkdir");
    old.write_public_pem(&key_file);
    let policies = tempfile::tempdir().expect("policy dir");
    let yaml = policy_yaml(&["a"], APPS).replace("path: a.pub", &format!("path: {}", key_file.display()));
    std::fs::write(policies.path().join("policy.yaml"), yaml).expect("write policy");
    let env = Env::start(registry, policies).await;

    env.allowed(REPO, "old", &by_old, "apps", &["key-a"]).await;

    let mtime = std::fs::metadata(&key_file).and_then(|m| m.modified()).expect("mtime");
    new.write_public_pem(&key_file);
    std::fs::File::options()
        .write(true)
        .open(&key_file)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    let new_revision = revision(env.policies.path());
    assert_ne!(new_revision, env.revision);

    let started = Instant::now();
    let resp = wait_for_status(&env.proxy, "old", StatusCode::FORBIDDEN).await;
    let message = assert_denied(&resp, "apps", &[NONE_VERIFIED]);
    assert!(message.contains(&new_revision[..12]), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    skopeo_refused(&env.proxy, &format!("{REPO}:old")).await;
    let expect = Expect {
        revision: &new_revision,
        ..env.expect("deny", "apps", &[])
    };
    expect.check(&events_for(&env.proxy, &by_old.manifest.digest).pop().expect("event"));

    let served = get_manifest(&env.proxy, REPO, "new").await;
    assert_manifest(&served, &by_new.manifest, "signed by the new key");
    skopeo_copies(
        &env.proxy,
        &format!("{REPO}:new"),
        &by_new.manifest.digest,
        &image_blobs(&by_new),
    )
    .await;
}

/// `cosign sign-blob --bundle` over the manifest bytes, attached as a
/// referrer: a messageSignature bundle whose digest is the manifest digest.
fn blob_signature_bundle(key: &SigningKey, manifest: &Blob) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": key.hint() } },
        "messageSignature": {
            "messageDigest": { "algorithm": "SHA2_256", "digest": b64(manifest.digest.as_bytes()) },
            "signature": b64(&key.sign(&manifest.bytes))
        }
    }))
    .expect("json")
}

/// A blob signature by the trusted key over the image's manifest bytes is
/// not an image signature: refused (with the reason), unless the authority
/// opts in with `acceptBlobSignatures: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_signature_counts_only_when_the_authority_opts_in() {
    let a = SigningKey::generate_p256();
    let registry = Distribution::start().await;
    let image = small_image(920);
    registry.push_image(REPO, "v1", &image).await;
    let bundle = blob_signature_bundle(&a, &image.manifest);
    push_bundle_referrer(&registry, REPO, &image.manifest, bundle, COSIGN_SIGN_PREDICATE).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    let first = env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED]).await;
    assert!(
        reason(&first).contains("is not an image signature unless the authority sets `acceptBlobSignatures: true`"),
        "{first}"
    );

    let dir = env.policies.path();
    let opted_in = policy_yaml(&["a"], APPS).replace("tlog: ignore }", "tlog: ignore, acceptBlobSignatures: true }");
    std::fs::write(dir.join("policy.yaml"), opted_in).expect("write");
    let resp = wait_for_status(&env.proxy, "v1", StatusCode::OK).await;
    assert_manifest(&resp, &image.manifest, "blob signature accepted");
    skopeo_copies(
        &env.proxy,
        &format!("{REPO}:v1"),
        &image.manifest.digest,
        &image_blobs(&image),
    )
    .await;
}
