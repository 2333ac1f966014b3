//! Real clients log in and pull through Portcullis with htpasswd users:
//! podman (`login` + `pull`, isolated auth file), skopeo (`--src-creds`,
//! `--authfile`) and containerd (`ctr images pull --user`, which posts the
//! OAuth2 password grant to `/token`).

use std::time::Duration;

use crate::common::*;
use crate::support::containerd::Containerd;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_and_pull() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;
    let p = tempfile::tempdir().expect("tempdir");
    let authfile = p.path().join("auth.json").display().to_string();
    let tmp = p.path().join("tmp").display().to_string();
    let env = [("REGISTRY_AUTH_FILE", authfile.as_str()), ("TMPDIR", tmp.as_str())];
    let podman = |args: Vec<String>| {
        let mut all = crate::support::isolated_podman_flags(p.path());
        all.extend(args);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_env("podman", &refs, &env).await
        }
    };
    let image = format!("{}/apps/rootfs:v1", proxy.addr);
    // Not logged in: refused.
    let err = podman(vec!["pull".into(), "--tls-verify=false".into(), image.clone()]).await;
    assert!(err.is_err(), "pull without login must fail: {err:?}");
    // Wrong password: login refused.
    let err = podman(vec![
        "login".into(),
        "--tls-verify=false".into(),
        "-u".into(),
        ALICE.0.into(),
        "-p".into(),
        "wrong-password".into(),
        proxy.addr.to_string(),
    ])
    .await;
    assert!(err.is_err(), "login with a wrong password must fail");
    podman(vec![
        "login".into(),
        "--tls-verify=false".into(),
        "-u".into(),
        ALICE.0.into(),
        "-p".into(),
        ALICE.1.into(),
        proxy.addr.to_string(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        std::fs::read_to_string(&authfile).is_ok_and(|a| a.contains(&proxy.addr.to_string())),
        "podman wrote the isolated auth file"
    );
    podman(vec!["pull".into(), "--tls-verify=false".into(), image.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let digest = podman(vec![
        "image".into(),
        "inspect".into(),
        "--format".into(),
        "{{.Digest}}".into(),
        image.clone(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(digest.trim(), up.rootfs.manifest.digest.to_string());
    // Logged in, but alice has no rule for private/db.
    let private = format!("{}/private/db:v1", proxy.addr);
    let err = podman(vec!["pull".into(), "--tls-verify=false".into(), private])
        .await
        .expect_err("private/db is not alice's");
    assert!(
        err.contains("denied") || err.contains("unauthorized") || err.contains("403"),
        "{err}"
    );
    assert!(
        files.audit_events().iter().any(|e| e["identity"] == "user:alice"),
        "{:?}",
        files.audit_events()
    );
    assert_no_secrets(&[&files.audit_log()], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_creds_and_authfile() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;
    let work = tempfile::tempdir().expect("tempdir");
    let src = format!("docker://{}/apps/web:v1", proxy.addr);
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let dest = format!("dir:{}", work.path().join("a").display());
    let copy = |extra: Vec<String>, dest: String| {
        let src = src.clone();
        async move {
            let mut args: Vec<String> = vec![
                "--insecure-policy".into(),
                "copy".into(),
                "--preserve-digests".into(),
                "--src-tls-verify=false".into(),
            ];
            args.extend(extra);
            args.push(src);
            args.push(dest);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::support::try_run("skopeo", &refs, LIMIT).await
        }
    };
    copy(vec!["--src-creds".into(), creds], dest.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (top, blobs) = crate::support::images::read_dir_copy(&work.path().join("a"));
    assert_eq!(top, up.web.manifest.digest);
    for b in up.web.blobs() {
        assert!(blobs.contains(&b.digest), "blob {} copied", b.digest);
    }
    // The robot's static token as the password.
    let robot = format!("{}:{}", ROBOT.0, ROBOT.1);
    copy(
        vec!["--src-creds".into(), robot],
        format!("dir:{}", work.path().join("b").display()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // An auth file as `podman login` / `docker login` writes it.
    let authfile = work.path().join("auth.json");
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{}:{}", ALICE.0, ALICE.1),
    );
    std::fs::write(
        &authfile,
        serde_json::json!({ "auths": { proxy.addr.to_string(): { "auth": encoded } } }).to_string(),
    )
    .expect("auth.json");
    copy(
        vec!["--src-authfile".into(), authfile.display().to_string()],
        format!("dir:{}", work.path().join("c").display()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Wrong password, and no credentials: refused.
    let bad = format!("{}:wrong-password", ALICE.0);
    assert!(
        copy(
            vec!["--src-creds".into(), bad],
            format!("dir:{}", work.path().join("d").display())
        )
        .await
        .is_err()
    );
    assert!(
        copy(vec![], format!("dir:{}", work.path().join("e").display()))
            .await
            .is_err()
    );
    let ids: Vec<String> = files
        .audit_events()
        .iter()
        .filter_map(|e| e["identity"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.iter().any(|i| i == "user:alice"), "{ids:?}");
    assert!(ids.iter().any(|i| i == "user:ci-robot"), "{ids:?}");
    assert_no_secrets(&[&files.audit_log()], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pull_with_user() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;
    let containerd = Containerd::start().await;
    let image = format!("{}/apps/rootfs:v1", proxy.addr);
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    // Without credentials: refused.
    let err = containerd
        .ctr(&["images", "pull", "--plain-http", "--snapshotter", "native", &image])
        .await;
    assert!(err.is_err(), "pull without credentials must fail");
    containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            "--user",
            &creds,
            &image,
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = containerd
        .ctr(&["images", "ls"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.contains(&up.rootfs.manifest.digest.to_string()), "{listed}");
    for b in up.rootfs.blobs() {
        assert!(
            proxy.stores_blob(&b.digest).await,
            "{} went through the proxy",
            b.digest
        );
    }
    // bob may not pull apps/**.
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let web = format!("{}/apps/web:v1", proxy.addr);
    assert!(
        containerd
            .ctr(&["content", "fetch", "--plain-http", "--user", &bob, &web])
            .await
            .is_err()
    );
    assert!(
        files.audit_events().iter().any(|e| e["identity"] == "user:alice"),
        "{:?}",
        files.audit_events()
    );
    // containerd's own log may not hold the password either.
    assert_no_secrets(&[&files.audit_log()], &[]);
}
