//! Upstream failures while fetching signatures, requireDigest, the verdict cache across restarts, policy reload, refusing to start without a policy.

use super::common::*;

// ============================================================= 11: upstream failure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfetchable_signatures_deny_without_caching() {
    let (a, _, _) = keys();
    let fake = FakeRegistry::start().await;
    let image = small_image(80);
    fake.put_image(REPO, "v1", &image);
    let layer = signature_layer(&a, &format!("{}/{REPO}", fake.host()), &image.manifest.digest);
    let object = legacy_manifest(vec![layer]);
    for l in &object.layers {
        fake.put_blob(REPO, &l.blob);
    }
    fake.put_blob(REPO, &object.config);
    let tag = sig_tag(&image.manifest.digest);
    fake.tag(REPO, &tag, &object.manifest);
    fake.set_fault(&tag, Fault::always(503));
    let policies = policy_dir(&[("a", &a)], APPS);
    let proxy = TestProxy::with_policies(&fake.url(), policies.path()).await;
    let rev = revision(policies.path());
    let host = fake.host();
    let expect = |verdict, satisfied| Expect {
        verdict,
        rule: "apps",
        satisfied,
        revision: &rev,
        upstream: &host,
        repo: REPO,
    };

    let resp = get_manifest(&proxy, REPO, "v1").await;
    let message = assert_denied(
        &resp,
        "apps",
        &["verification material could not be fetched", "not cached, retry later"],
    );
    assert!(message.contains("503"), "{message}");
    let events = events_for(&proxy, &image.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    expect("deny", &[]).check(&events[0]);
    assert_eq!(events[0]["cached"], json!(false));
    assert!(fake.manifest_requests("GET", REPO, &tag) > 0, "the .sig was asked for");

    // The upstream recovers: the very next request is verified and allowed.
    fake.clear_faults();
    assert_manifest(
        &get_manifest(&proxy, REPO, "v1").await,
        &image.manifest,
        "after recovery",
    );
    let events = events_for(&proxy, &image.manifest.digest);
    assert_eq!(events.len(), 2, "{events:?}");
    expect("allow", &["key-a"]).check(&events[1]);
    assert_eq!(events[1]["cached"], json!(false));
    skopeo_copies(&proxy, "test/app:v1", &image.manifest.digest, &image_blobs(&image)).await;
}

// ============================================================= 12: requireDigest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_digest_refuses_tags() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(90);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let unsigned = small_image(91);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let policies = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: pinned
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
    tags: { requireDigest: true }
"#,
    );
    let env = Env::start(registry, policies).await;
    let by_tag = "rule requires pulls by digest; `v1` is a tag";
    skopeo_refused(&env.proxy, "test/app:v1").await;
    assert_denied(&get_manifest(&env.proxy, REPO, "v1").await, "pinned", &[by_tag]);
    let events = env
        .expect("deny", "pinned", &[])
        .all(&env.proxy, &image.manifest.digest);
    assert_eq!(reason(&events[0]), by_tag);

    let by_digest = format!("test/app@{}", image.manifest.digest);
    skopeo_copies(&env.proxy, &by_digest, &image.manifest.digest, &image_blobs(&image)).await;
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    env.expect("allow", "pinned", &["key-a"]).check(&last);
    assert_eq!(last["tag"], Value::Null);
    // Verification material stays reachable by its tag (cosign resolves it so).
    let sig = sig_tag(&image.manifest.digest);
    assert_eq!(
        get_manifest(&env.proxy, REPO, &sig).await.status,
        StatusCode::OK,
        "{sig}"
    );
    // By digest still needs the signature.
    assert_denied(
        &get_manifest(&env.proxy, REPO, &unsigned.manifest.digest.to_string()).await,
        "pinned",
        &[NONE_VERIFIED],
    );
}

// ============================================================= 13: verdict cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_verdicts_are_cached_and_survive_a_restart() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(100);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let digest = image.manifest.digest.to_string();

    assert_manifest(&get_manifest(&env.proxy, REPO, &digest).await, &image.manifest, "first");
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "second",
    );
    let events = env
        .expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &image.manifest.digest);
    let cached: Vec<&Value> = events.iter().map(|e| &e["cached"]).collect();
    assert_eq!(cached, [&json!(false), &json!(true)]);

    // Remove the signature upstream: a re-verification would now deny.
    let sig_url = env.registry.url_for(&format!(
        "/v2/{REPO}/manifests/{}",
        sig_manifest_digest(&env.registry, &image.manifest.digest).await
    ));
    let deleted = client::request(Method::DELETE, &sig_url, &[]).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{:?}", deleted.body);
    let gone = client::get(
        &env.registry
            .url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(&image.manifest.digest))),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "the .sig is gone upstream");

    // Same data directory, new process state: the allow was persisted.
    let Env {
        registry,
        policies,
        proxy,
        revision,
        upstream,
    } = env;
    let proxy = proxy.restart_with_policies(&registry.url(), policies.path()).await;
    let env = Env {
        registry,
        policies,
        proxy,
        revision,
        upstream,
    };
    let before = events_for(&env.proxy, &image.manifest.digest).len();
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "after restart",
    );
    let events = events_for(&env.proxy, &image.manifest.digest);
    assert_eq!(events.len(), before + 1);
    let last = events.last().expect("event");
    env.expect("allow", "apps", &["key-a"]).check(last);
    assert_eq!(last["cached"], json!(true), "{last}");
    // A digest never verified is verified (and now denied: no signature).
    let unsigned = small_image(101);
    env.registry.push_image(REPO, "", &unsigned).await;
    assert_denied(
        &get_manifest(&env.proxy, REPO, &unsigned.manifest.digest.to_string()).await,
        "apps",
        &[NONE_VERIFIED],
    );
}

/// Signatures are discovered in the repository pulled from: a (cached)
/// denial of a digest in a repository holding no signature for it must not
/// refuse the same digest where it is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_in_one_repository_does_not_deny_a_signed_copy_elsewhere() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(102);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    registry.push_image("test/mirror", "v1", &image).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let digest = image.manifest.digest.to_string();
    assert_denied(
        &get_manifest(&env.proxy, "test/mirror", &digest).await,
        "apps",
        &[NONE_VERIFIED],
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "signed repository",
    );
    // Nor does the allow there vouch for the copy without a signature (as
    // `cosign verify test/mirror@…` fails without COSIGN_REPOSITORY).
    assert_denied(
        &get_manifest(&env.proxy, "test/mirror", &digest).await,
        "apps",
        &[NONE_VERIFIED],
    );
}

async fn sig_manifest_digest(registry: &Distribution, image: &Digest) -> String {
    let resp = client::request(
        Method::HEAD,
        &registry.url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(image))),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    resp.header("docker-content-digest").expect("digest").to_owned()
}

// ============================================================= 14: reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_new_policies_and_refuses_invalid_ones() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(110);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let dir = env.policies.path();
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &image.manifest, "initial");

    // An invalid policy is refused: the old one stays in force.
    let valid = std::fs::read_to_string(dir.join("policy.yaml")).expect("read");
    std::fs::write(dir.join("policy.yaml"), format!("{valid}bogus: true\n")).expect("write");
    assert!(portcullis::policy::load_dir(dir).is_err());
    tokio::time::sleep(Duration::from_millis(4500)).await; // two polls
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "after invalid",
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    env.expect("allow", "apps", &["key-a"]).check(&last);

    // A valid new policy replaces it within a few seconds.
    write_policy(dir, &[("a", &a)], STATIC_DENY);
    let new_revision = revision(dir);
    assert_ne!(new_revision, env.revision);
    let resp = wait_for_status(&env.proxy, REPO, "v1", StatusCode::FORBIDDEN, Duration::from_secs(10)).await;
    let message = assert_denied(&resp, "lockdown", &["static deny"]);
    assert!(message.contains(&new_revision[..12]), "{message}");
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    let expect = Expect {
        revision: &new_revision,
        ..env.expect("deny", "lockdown", &[])
    };
    expect.check(&last);
    assert_eq!(reason(&last), "static deny");

    // Invalid again: the deny policy (and its revision) stays.
    std::fs::write(
        dir.join("policy.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Nope\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_denied(
        &get_manifest(&env.proxy, REPO, "v1").await,
        "lockdown",
        &["static deny"],
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    expect.check(&last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_to_children_of_an_admitted_index() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let child = oci_image_for("amd64", &[1000], 120);
    let index = oci_index(&[(&child, "amd64")]);
    registry.push_index(REPO, "multi", &index, &[&child]).await;
    push_legacy_signature(&registry, REPO, &index, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "multi").await, &index, "index");
    let by_digest = child.manifest.digest.to_string();
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &by_digest).await,
        &child.manifest,
        "child",
    );

    write_policy(env.policies.path(), &[("a", &a)], STATIC_DENY);
    wait_for_status(
        &env.proxy,
        REPO,
        "multi",
        StatusCode::FORBIDDEN,
        Duration::from_secs(10),
    )
    .await;
    // The child was vouched for by the index under the old policy; the new
    // policy denies everything, the child included.
    assert_denied(
        &get_manifest(&env.proxy, REPO, &by_digest).await,
        "lockdown",
        &["static deny"],
    );
}

// ============================================================= 15: no policy

#[tokio::test]
async fn no_policy_refuses_to_start_unless_integrity_only() {
    use portcullis::config::{Config, Overrides};
    use portcullis::proxy::{Proxy, StartError};
    use portcullis::server::{ListenError, Server};
    use std::sync::Arc;

    let data = tempfile::tempdir().expect("tempdir");
    let empty = tempfile::tempdir().expect("tempdir");
    let missing = empty.path().join("missing");
    let config = |policies: &Path, integrity_only: bool| {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data.path().to_owned()),
            default_upstream: Some("http://127.0.0.1:1".parse().expect("url")),
            policies: Some(policies.to_owned()),
            integrity_only,
            offline: false,
        };
        Config::load(None, &overrides).expect("config")
    };
    for dir in [empty.path(), missing.as_path()] {
        match Proxy::new(Arc::new(config(dir, false))) {
            Err(StartError::NoPolicy(d)) => assert_eq!(d, dir),
            other => panic!("expected NoPolicy for {}, got {other:?}", dir.display()),
        }
        match Server::bind(config(dir, false)).await {
            Err(ListenError::Start(StartError::NoPolicy(d))) => {
                assert_eq!(d, dir);
                let text = ListenError::Start(StartError::NoPolicy(d)).to_string();
                assert!(text.contains("--integrity-only"), "{text}");
            }
            Err(e) => panic!("expected NoPolicy, got {e}"),
            Ok(_) => panic!("the server started without a policy"),
        }
        let proxy = Proxy::new(Arc::new(config(dir, true))).expect("integrity-only starts");
        assert!(proxy.gate().policy().is_none());
    }
    // An invalid policy is an error of its own, naming the file.
    std::fs::write(empty.path().join("broken.yaml"), "apiVersion: x\n").expect("write");
    match Proxy::new(Arc::new(config(empty.path(), false))) {
        Err(StartError::Policy(e)) => assert!(e.to_string().contains("broken.yaml"), "{e}"),
        other => panic!("expected a policy error, got {other:?}"),
    }
}
