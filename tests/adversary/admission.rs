//! Admission as a proof, scoped and revocable (issue 9 §3): an index
//! vouches for a child only under the same rule and only when allowed;
//! presence is per (registry, repository); a reload that changes the policy
//! revokes blob grants; grants survive a restart; persisted verdicts are
//! checked against the key they are read for.

use crate::common::*;

const DEV_AUDIT_THEN_ENFORCE: &str = r#"
rules:
  - name: audit-dev
    match: { repositories: ["test/idx"], tags: ["dev-*"] }
    mode: audit
    require: { signatures: { anyOf: [key-a] } }
  - name: nightly-static
    match: { repositories: ["test/nightly"], tags: ["nightly-*"] }
    static: allow
  - name: enforce-all
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// Issue 9 §3: an index served under an audit rule's `would-deny` vouches
/// for nothing. The unsigned index I tagged `dev-1` is served (audit); its
/// child C pulled by digest falls under `enforce-all` and is denied (403;
/// skopeo and ctr cannot pull it). Likewise an index allowed by a `static`
/// rule scoped to its tag (`nightly-*`) vouches for nothing under
/// `enforce-all`. Control: a signed index under the
/// enforcing rule (`indexCoversChildren`, children unsigned) pulls with
/// skopeo `--all`, and its children pull by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audited_index_does_not_vouch_for_its_children() {
    let mut f = Findings::new("index_vouching");
    let scene = Scene::start(DEV_AUDIT_THEN_ENFORCE).await;
    let containerd = Containerd::start().await;
    let child = payload(60);
    let index = oci_index(&[(&child, host_arch())]);
    scene.registry.push_index("test/idx", "dev-1", &index, &[&child]).await;
    let kids = [benign(61), oci_image_for("s390x", &[500], 62)];
    let signed_index = oci_index(&[(&kids[0], host_arch()), (&kids[1], "s390x")]);
    scene
        .registry
        .push_index("test/signed", "v1", &signed_index, &[&kids[0], &kids[1]])
        .await;
    push_legacy_signature(&scene.registry, "test/signed", &signed_index, &[&scene.key]).await;
    let p = &scene.proxy;

    let got = get_manifest(p, "test/idx", "dev-1").await;
    f.serves(&got, &index, "GET I:dev-1 (audit: served, would-deny)");
    let by_digest = format!("test/idx@{}", child.manifest.digest);
    f.denied(
        &get_manifest(p, "test/idx", &child.manifest.digest.to_string()).await,
        "GET child C by digest",
    );
    for b in child.blobs() {
        f.denied(
            &get_blob(p, "test/idx", &b.digest).await,
            &format!("GET C's blob {}", b.digest),
        );
    }
    f.skopeo_fails(p, &by_digest, FORBIDDEN).await;
    f.client_fails(
        ctr_pull(&containerd, p, &by_digest).await,
        FORBIDDEN,
        "ctr images pull test/idx@C",
    );

    // Nor does an index allowed by a `static` rule scoped to its tags: the
    // child's by-digest pull does not match that rule.
    let nightly_child = payload(63);
    let nightly = oci_index(&[(&nightly_child, host_arch())]);
    scene
        .registry
        .push_index("test/nightly", "nightly-1", &nightly, &[&nightly_child])
        .await;
    f.serves(
        &get_manifest(p, "test/nightly", "nightly-1").await,
        &nightly,
        "GET N:nightly-1 (static allow by tag)",
    );
    f.denied(
        &get_manifest(p, "test/nightly", &nightly_child.manifest.digest.to_string()).await,
        "GET N's child by digest",
    );
    f.skopeo_fails(p, &format!("test/nightly@{}", nightly_child.manifest.digest), FORBIDDEN)
        .await;

    // Control: a signed index vouches for its children under its own rule.
    let all: Vec<&Digest> = kids
        .iter()
        .flat_map(|k| std::iter::once(&k.manifest.digest).chain(image_blobs(k)))
        .collect();
    f.skopeo_copies(p, "test/signed:v1", &signed_index.digest, &all).await;
    for k in &kids {
        f.skopeo_copies(
            p,
            &format!("test/signed@{}", k.manifest.digest),
            &k.manifest.digest,
            &image_blobs(k),
        )
        .await;
    }
    f.finish();
}

/// Issue 9 §3: content is global by digest, presence is per (registry,
/// repository). Image P exists upstream only in `private/app`; once it has
/// been pulled from there, `public/other` (which exists upstream but lacks
/// P) answers 404 `MANIFEST_UNKNOWN` for P's digest and does not serve its
/// blobs; skopeo cannot copy it from there. Both repositories are allowed
/// by policy, so only presence can refuse it. Control: after P is pushed to
/// `public/other` too, it is served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_per_repository() {
    let mut f = Findings::new("presence");
    let scene = Scene::start(
        r#"
rules:
  - name: open
    match: { repositories: ["private/**", "public/**"] }
    static: allow
"#,
    )
    .await;
    presence_checks(&mut f, &scene.registry, &scene.proxy).await;
    f.finish();
}

/// The same with no policy at all (`--integrity-only`): there are no
/// grants, so the upstream must confirm that the other repository has the
/// manifest and each blob before the cached copies are served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_per_repository_in_integrity_only_mode() {
    let mut f = Findings::new("presence_integrity_only");
    let registry = Distribution::start().await;
    let proxy = TestProxy::with_default_upstream(&registry.url()).await;
    presence_checks(&mut f, &registry, &proxy).await;
    f.finish();
}

/// P is pulled from `private/app`; `public/other` lacks it, so it answers
/// 404 for P's manifest and does not serve P's blobs; once P is pushed there
/// too, it is served there.
async fn presence_checks(f: &mut Findings, registry: &Distribution, p: &TestProxy) {
    let private = benign(70);
    registry.push_image("private/app", "v1", &private).await;
    let other = benign(71);
    registry.push_image("public/other", "v1", &other).await;
    f.skopeo_copies(p, "private/app:v1", &private.manifest.digest, &image_blobs(&private))
        .await;
    let digest = private.manifest.digest.to_string();
    f.status(
        &get_manifest(p, "public/other", &digest).await,
        StatusCode::NOT_FOUND,
        Some("MANIFEST_UNKNOWN"),
        "GET public/other@P",
    );
    let head = client::request(
        Method::HEAD,
        &p.url(&format!("/v2/public/other/manifests/{digest}")),
        &[("accept", ACCEPT)],
    )
    .await;
    f.status(&head, StatusCode::NOT_FOUND, None, "HEAD public/other@P");
    for b in private.blobs() {
        f.status_in(
            &get_blob(p, "public/other", &b.digest).await,
            &[StatusCode::FORBIDDEN, StatusCode::NOT_FOUND],
            &format!("GET public/other blob {}", b.digest),
        );
    }
    f.skopeo_fails(p, &format!("public/other@{digest}"), UNKNOWN).await;

    // Control: once public/other has P too, it is served there.
    registry.push_image("public/other", "", &private).await;
    f.serves(
        &get_manifest(p, "public/other", &digest).await,
        &private.manifest,
        "control: GET public/other@P once pushed there",
    );
    f.skopeo_copies(
        p,
        &format!("public/other@{digest}"),
        &private.manifest.digest,
        &image_blobs(&private),
    )
    .await;
}

const AUDIT_APPS: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    mode: audit
    require: { signatures: { anyOf: [key-a] } }
"#;

/// Issue 9 §3: a reload that changes the policy revokes blob grants. Under
/// an `audit` rule the unsigned U is pulled (served, would-deny); the rule
/// is switched to `enforce` and the proxy reloads (seen on another unsigned
/// probe image turning 403); then U's layer is refused (403) without any
/// manifest request, U's manifest is refused, skopeo cannot copy U.
/// Control: the signed S's blobs keep being served after the reload, and S
/// pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_audit_to_enforce_revokes_blob_grants() {
    let mut f = Findings::new("revocation_on_reload");
    let scene = Scene::start(AUDIT_APPS).await;
    let signed = benign(80);
    scene.signed(REPO, "s", &signed).await;
    let unsigned = payload(81);
    scene.registry.push_image(REPO, "u", &unsigned).await;
    let probe = oci_image(&[100], 82);
    scene.registry.push_image(REPO, "probe", &probe).await;
    let p = &scene.proxy;
    f.skopeo_copies(
        p,
        &format!("{REPO}:u"),
        &unsigned.manifest.digest,
        &image_blobs(&unsigned),
    )
    .await;
    f.skopeo_copies(p, &format!("{REPO}:s"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.serves(
        &get_manifest(p, REPO, "probe").await,
        &probe.manifest,
        "probe under audit",
    );

    write_policy(scene.policies.path(), &[("a", &scene.key)], ENFORCE);
    wait_for_status(p, REPO, "probe", StatusCode::FORBIDDEN, Duration::from_secs(15)).await;
    for b in unsigned.blobs() {
        f.denied(
            &get_blob(p, REPO, &b.digest).await,
            &format!("GET U's blob {} after the reload", b.digest),
        );
    }
    f.denied(&get_manifest(p, REPO, "u").await, "GET U's manifest after the reload");
    f.skopeo_fails(p, &format!("{REPO}:u"), FORBIDDEN).await;

    // Control: S's blobs are still served (no manifest request first), and S pulls.
    for b in signed.blobs() {
        f.serves(
            &get_blob(p, REPO, &b.digest).await,
            b,
            &format!("control: GET S's blob {} after the reload", b.digest),
        );
    }
    f.skopeo_copies(p, &format!("{REPO}:s"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.finish();
}

/// Issue 9 §3: grants are persisted with the verdicts. S's manifest is
/// pulled, the proxy is stopped and a new one started on the same data
/// directory and policy; a client resuming a layer download asks for
/// `Range: bytes=10-` with no manifest request first and gets 206 with
/// exactly those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_grants_survive_a_restart() {
    let mut f = Findings::new("grants_survive_restart");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(90);
    scene.signed(REPO, "v1", &signed).await;
    let got = get_manifest(&scene.proxy, REPO, "v1").await;
    f.serves(&got, &signed.manifest, "GET S before the restart");
    let Scene {
        registry,
        policies,
        proxy,
        ..
    } = scene;
    let proxy = proxy.restart_with_policies(&registry.url(), policies.path()).await;
    let layer = &signed.layers[0];
    let url = proxy.url(&format!("/v2/{REPO}/blobs/{}", layer.digest));
    let r = client::request(Method::GET, &url, &[("range", "bytes=10-")]).await;
    let n = layer.bytes.len();
    let ok = r.status == StatusCode::PARTIAL_CONTENT
        && r.body.as_ref().is_ok_and(|b| b[..] == layer.bytes[10..])
        && r.header("content-range") == Some(format!("bytes 10-{}/{n}", n - 1).as_str());
    f.check(
        ok,
        format!(
            "GET S's layer with Range: bytes=10- after the restart: expected 206 with bytes 10..{n}, got {} {:?}",
            r.status,
            r.header("content-range")
        ),
    );
    f.finish();
}

/// Issue 9 §3: a persisted verdict is checked against the key it is read
/// for. With the proxy stopped, S's allow verdict file is copied to where
/// U's verdict (same rule, same repository, the store's own layout:
/// `verdicts/<revision>/<alg>-<hex>-<scope>.json`) would be; after the
/// restart U is still denied and skopeo cannot copy it. Control: S still
/// pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_file_copied_to_another_digest_is_ignored() {
    let mut f = Findings::new("verdict_files");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(100);
    scene.signed(REPO, "v1", &signed).await;
    let unsigned = payload(101);
    scene.registry.push_image(REPO, "u", &unsigned).await;
    f.serves(&get_manifest(&scene.proxy, REPO, "v1").await, &signed.manifest, "GET S");
    let Scene {
        registry,
        policies,
        proxy,
        ..
    } = scene;
    let data = proxy.stop();
    // Wherever the store keeps verdicts (today `verdicts/`), a verdict file
    // of S is named by S's digest; U's sits beside it under U's digest.
    let s_hex = signed.manifest.digest.hex();
    let files: Vec<_> = files_named(data.path(), &s_hex)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("verdict"))
        .collect();
    assert!(
        !files.is_empty(),
        "no persisted verdict file named by S's digest under {}: the layout changed; derive U's path as the store does",
        data.path().display()
    );
    for file in &files {
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        let forged = file.with_file_name(name.replace(&s_hex, &unsigned.manifest.digest.hex()));
        std::fs::copy(file, &forged).expect("copy the verdict file");
        eprintln!("copied {} to {}", file.display(), forged.display());
    }
    let proxy = TestProxy::with_policies_in(&registry.url(), policies.path(), data).await;
    f.denied(
        &get_manifest(&proxy, REPO, "u").await,
        "GET U after the forged verdict file",
    );
    f.skopeo_fails(&proxy, &format!("{REPO}:u"), FORBIDDEN).await;
    f.skopeo_copies(
        &proxy,
        &format!("{REPO}:v1"),
        &signed.manifest.digest,
        &image_blobs(&signed),
    )
    .await;
    f.finish();
}
