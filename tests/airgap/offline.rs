//! An offline site after a policy change: the admission is decided again
//! from the material the import stored (legacy tags, bundle referrers),
//! with local trust only, and nothing is asked of the network.

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_policy_revision_reverifies_stored_material_offline() {
    let c = Connected::start().await;
    let web = oci_image(&[2000], 1801);
    push_signed(&c.upstream, "apps/web", "v1", &web, &[&c.a]).await;
    let bundled = oci_image(&[2100], 1802);
    c.upstream.push_image("apps/bundled", "v1", &bundled).await;
    push_bundle_signature(&c.upstream, "apps/bundled", &bundled.manifest, &c.a).await;
    let archive = c.work.path().join("two.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1", "apps/bundled:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");

    // A new revision that still trusts key a (a bundle-only rule for
    // apps/bundled): both are verified again from the stored material.
    let rules = SITE_RULES.replace(
        "  - name: bundles\n    match: { repositories: [\"neg/bundle\"] }",
        "  - name: bundles\n    match: { repositories: [\"neg/bundle\", \"apps/bundled\"] }",
    );
    assert_ne!(rules, SITE_RULES);
    write_policy(site.policies.path(), &[("a", &c.a)], &rules);
    let server = site.serve().await;
    let at = server.listen.as_str();
    for (repo, image) in [("apps/web", &web), ("apps/bundled", &bundled)] {
        let r = get(at, &format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(r.status.as_u16(), 200, "{repo}: {:?}", r.body);
        assert_eq!(r.bytes(), image.manifest.bytes, "{repo}");
        let blob = get(at, &format!("/v2/{repo}/blobs/{}", image.layers[0].digest)).await;
        assert_eq!(blob.status.as_u16(), 200, "{repo} layer");
        assert_eq!(blob.bytes(), image.layers[0].bytes);
    }
    let log = server.log_text();
    drop(server);

    // A revision that trusts only another key: the stored signatures no
    // longer satisfy it, and the site refuses what it imported before.
    let other = SigningKey::generate_p256();
    write_policy(site.policies.path(), &[("a", &other)], SITE_RULES);
    let server = site.serve().await;
    for repo in ["apps/web", "apps/bundled"] {
        let r = get(&server.listen, &format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(r.status.as_u16(), 403, "{repo}: {:?}", r.body);
        assert!(r.error_message().contains("denied by policy"), "{}", r.error_message());
    }
    assert_eq!(site.trap.count(), 0, "the site never tried its upstream:\n{log}");
    drop(server);

    // Control: the same site without `offline: true` does go to the
    // address for a tag it does not have, so the zero above means something.
    let server = site.serve_online(&[]).await;
    let r = get(&server.listen, "/v2/apps/nothing/manifests/v1").await;
    assert_ne!(r.status.as_u16(), 200);
    assert!(site.trap.count() > 0, "the online control reached the trap");
    drop(server);

    // `serve --offline` makes that same configuration offline again.
    let before = site.trap.count();
    let server = site.serve_online(&["--offline"]).await;
    let r = get(&server.listen, "/v2/apps/nothing/manifests/v1").await;
    assert_eq!(r.status.as_u16(), 404, "{:?}", r.body);
    let r = get(&server.listen, "/v2/apps/web/manifests/v1").await;
    assert_eq!(
        r.status.as_u16(),
        403,
        "still judged by the policy in force: {:?}",
        r.body
    );
    assert_eq!(site.trap.count(), before, "--offline: no connection");
}

/// podman pulls an imported image from the offline site by tag and by
/// digest (an unpackable image: podman unpacks what it pulls), and gets the
/// digest of the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_an_imported_image_by_tag_and_digest() {
    let c = Connected::start().await;
    let image = crate::support::images::runnable_image(&[&[("etc/site", b"air-gapped\n")]], 1901);
    push_signed(&c.upstream, "apps/runnable", "v1", &image, &[&c.a]).await;
    let archive = c.work.path().join("runnable.tar");
    let (code, stdout, stderr) = c.export(&["apps/runnable:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");
    let server = site.serve().await;

    let p = tempfile::tempdir().expect("tempdir");
    let podman = |args: Vec<String>| {
        let mut all = crate::support::isolated_podman_flags(p.path());
        all.extend(args);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            crate::support::try_run("podman", &refs, LIMIT)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let by_tag = format!("{}/apps/runnable:v1", server.listen);
    let by_digest = format!("{}/apps/runnable@{}", server.listen, image.manifest.digest);
    for reference in [&by_tag, &by_digest] {
        podman(vec!["pull".into(), "--tls-verify=false".into(), reference.clone()]).await;
    }
    let digest = podman(vec![
        "image".into(),
        "inspect".into(),
        "--format".into(),
        "{{.Digest}}".into(),
        by_tag.clone(),
    ])
    .await;
    assert_eq!(digest.trim(), image.manifest.digest.to_string());
    assert_eq!(site.trap.count(), 0);
}

/// A second import that moves a tag is served by the running site at once
/// (the tag is read from disk, not from the proxy's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_import_moves_a_tag_in_a_running_site() {
    let c = Connected::start().await;
    let first = oci_image(&[1000], 2101);
    push_signed(&c.upstream, "apps/web", "v1", &first, &[&c.a]).await;
    let one = c.work.path().join("one.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1"], &one, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let second = oci_image(&[1100], 2102);
    push_signed(&c.upstream, "apps/web", "v1", &second, &[&c.a]).await;
    let two = c.work.path().join("two.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1"], &two, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    let site = Site::new(&c.a).await;
    let server = site.serve().await;
    let (code, report) = site.import(&one, &[]).await;
    assert_eq!(code, 0, "{report}");
    let r = get(&server.listen, "/v2/apps/web/manifests/v1").await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(first.manifest.digest.to_string().as_str())
    );
    let (code, report) = site.import(&two, &[]).await;
    assert_eq!(code, 0, "{report}");
    let r = get(&server.listen, "/v2/apps/web/manifests/v1").await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(second.manifest.digest.to_string().as_str()),
        "the running site follows the new import"
    );
    // The offline tag list names the tag (and the signature's tag).
    let tags = get(&server.listen, "/v2/apps/web/tags/list").await;
    assert_eq!(tags.status.as_u16(), 200, "{:?}", tags.body);
    let listed = tags.json()["tags"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|t| t == "v1"), "{}", tags.json());
    assert!(
        listed
            .iter()
            .any(|t| t.as_str() == Some(&format!("{}.sig", second.manifest.digest.tag_form()))),
        "{}",
        tags.json()
    );
    // The first image stays pullable by digest.
    let r = get(
        &server.listen,
        &format!("/v2/apps/web/manifests/{}", first.manifest.digest),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(site.trap.count(), 0);
}
