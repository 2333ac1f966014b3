//! The built binary: `policy check`, `verify`, and SIGHUP reload of `serve`.

use super::common::*;
use crate::support::binary;

// ============================================================= CLI

/// Run the built `portcullis` with a time limit in `cwd`: (exit code, stdout, stderr).
async fn portcullis(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    binary::run(&args, Some(cwd), LIMIT).await
}

#[tokio::test]
async fn cli_policy_check_reports_revision_and_shadowed_rules() {
    let (a, _, _) = keys();
    let dir = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: everything
    match: { repositories: ["**"] }
    require: { signatures: { anyOf: [key-a] } }
  - name: apps
    match: { repositories: ["test/**"] }
    static: allow
"#,
    );
    let policy = portcullis::policy::load_dir(dir.path()).expect("valid");
    let path = dir.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", path], dir.path()).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("policy in {path}: valid, revision {}", policy.revision)),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: rule `apps` is shadowed by the earlier rule `everything` and never applies"),
        "{stdout}"
    );

    // An invalid document: non-zero, naming the file and the problem.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        bad.path().join("10-bad.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nrules:\n  - name: x\n    match: { repositories: [\"**\"] }\n    static: maybe\n",
    )
    .expect("write");
    let bad_path = bad.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", bad_path], bad.path()).await;
    assert_ne!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("10-bad.yaml"), "{stderr}");
    assert!(!stdout.contains("valid"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_allows_signed_and_denies_unsigned() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(130);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let unsigned = small_image(131);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let policies = policy_dir(&[("a", &a)], APPS);
    let rev = revision(policies.path());
    let work = tempfile::tempdir().expect("tempdir");
    let upstream = registry.url();
    let run = |tag: &'static str| {
        let image = format!("{}/{REPO}:{tag}", registry.host());
        let policies = policies.path().to_str().expect("utf8").to_owned();
        let upstream = upstream.clone();
        let cwd = work.path().to_owned();
        async move {
            portcullis(
                &[
                    "verify",
                    &image,
                    "--policies",
                    &policies,
                    "--default-upstream",
                    &upstream,
                ],
                &cwd,
            )
            .await
        }
    };

    let (code, stdout, stderr) = run("v1").await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("ALLOW {}/{REPO}:v1", registry.host())),
        "{stdout}"
    );
    assert!(stdout.contains("\"verdict\": \"allow\""), "{stdout}");
    assert!(
        stdout.contains("\"reason\": \"signatures verified by key-a\""),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("\"policy_revision\": \"{rev}\"")), "{stdout}");
    assert!(stdout.contains(&image.manifest.digest.to_string()), "{stdout}");

    let (code, stdout, stderr) = run("unsigned").await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"verdict\": \"deny\""), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "DENY {}/{REPO}:unsigned: denied by policy (rule `apps`",
            registry.host()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(NONE_VERIFIED), "{stdout}");
    assert!(stdout.contains("no signatures or attestations found"), "{stdout}");
    assert!(stdout.contains(&unsigned.manifest.digest.to_string()), "{stdout}");
}

/// `policy check` refuses two authorities naming one key (exit 1, naming
/// both and the key's fingerprint) and warns about keyless identities that
/// may accept the same signer (exit 0).
#[tokio::test]
async fn cli_policy_check_refuses_a_shared_key_and_warns_about_overlapping_identities() {
    let a = SigningKey::generate_p256();
    let dir = tempfile::tempdir().expect("tempdir");
    a.write_public_pem(&dir.path().join("a.pub"));
    std::fs::copy(dir.path().join("a.pub"), dir.path().join("same-as-a.pub")).expect("copy");
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nkeys:\n  a: { path: a.pub }\n  \
         a2: { path: same-as-a.pub }\nauthorities:\n  release: { key: { keys: [a] }, tlog: ignore }\n  \
         security: { key: { keys: [a2] }, tlog: ignore }\n",
    )
    .expect("write");
    let path = dir.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", path], dir.path()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let fingerprint = a.public_key().fingerprint().to_string();
    assert!(
        stderr.contains("authorities `release` and `security` both accept the key")
            && stderr.contains(&fingerprint)
            && stderr.contains("same-as-a.pub"),
        "{stderr}"
    );

    let keyless = tempfile::tempdir().expect("tempdir");
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sigstore/trusted_root/public-good.trusted_root.json"
    );
    std::fs::write(
        keyless.path().join("policy.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\ntrustRoots:\n  pg: {{ trustedRoot: {root} }}\n\
             authorities:\n  \
             ci: {{ keyless: {{ trustRoot: pg, identities: [ {{ issuer: https://token.actions.githubusercontent.com, \
             subjectRegExp: 'https://github\\.com/acme/.*' }} ] }} }}\n  \
             release: {{ keyless: {{ trustRoot: pg, identities: [ {{ issuer: https://token.actions.githubusercontent.com, \
             subject: 'https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1' }} ] }} }}\n"
        ),
    )
    .expect("write");
    let path = keyless.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", path], keyless.path()).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(
            "warning: authorities `ci` and `release` both accept the keyless identity \
             `https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1` \
             (`https://token.actions.githubusercontent.com`)"
        ),
        "{stdout}"
    );
}

/// SIGHUP reloads the policy even when nothing the file watcher looks at
/// changes. The watcher follows the directory's files and every file the
/// policy in force names; a new policy that failed to load (its key was
/// missing) names a key in a subdirectory, and that key arriving later is
/// something only the signal can make the running binary pick up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let registry = Distribution::start().await;
    let image = oci_image(&[1024], 901);
    registry.push_image("test/app", "v1", &image).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |verdict: &str, keys: &str| {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\n{keys}rules:\n  - name: all\n    match: {{ repositories: [\"**\"] }}\n    static: {verdict}\n"
        )
    };
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("allow", "")).expect("write policy");
    let policies = dir.path().to_string_lossy().into_owned();
    let mut served = binary::serve(&registry.url(), &["--policies", &policies]).await;
    let listen = served.listen.clone();
    let url = format!("http://{listen}/v2/test/app/manifests/v1");
    assert_eq!(client::get(&url).await.status, StatusCode::OK, "static allow");

    // The watcher sees the new document, which fails to load (its key is
    // not there yet): the old policy stays.
    std::fs::write(&file, policy("deny", "keys:\n  k: { path: keys/k.pub }\n")).expect("rewrite policy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client::get(&url).await.status, StatusCode::OK, "invalid policy refused");
    // The key arrives where no watched file changes.
    std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
    SigningKey::generate_p256().write_public_pem(&dir.path().join("keys").join("k.pub"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        client::get(&url).await.status,
        StatusCode::OK,
        "no reload without the signal"
    );

    served.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(&url).await;
        if r.status == StatusCode::FORBIDDEN {
            assert_eq!(r.error_code(), "DENIED");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the policy: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.child.kill().await.expect("stop portcullis");
}

/// SIGHUP never ends the process: logrotate-style tooling sends it to
/// whatever runs, and a proxy with no policy to reload (`--integrity-only`)
/// used to die of the signal's default action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_end_an_integrity_only_proxy() {
    let registry = Distribution::start().await;
    let image = oci_image(&[1024], 902);
    registry.push_image("test/app", "v1", &image).await;
    let mut served = binary::serve(&registry.url(), &["--integrity-only"]).await;
    let listen = served.listen.clone();
    let url = format!("http://{listen}/v2/test/app/manifests/v1");
    assert_eq!(client::get(&url).await.status, StatusCode::OK, "before the signal");
    for _ in 0..2 {
        served.signal("HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        served.child.try_wait().expect("child status").is_none(),
        "SIGHUP ended the integrity-only proxy"
    );
    assert_eq!(client::get(&url).await.status, StatusCode::OK, "after the signal");
    served.child.kill().await.expect("stop portcullis");
}
