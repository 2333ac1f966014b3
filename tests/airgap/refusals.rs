//! Whole-archive refusals and other suppliers' archives: a truncated
//! archive, an export signed by another station, --all-or-nothing (on a
//! zstd archive), an export the connected policy denies, and a `skopeo
//! copy --all … oci-archive:` archive.

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_archive_keeps_the_images_before_the_cut() {
    let c = Connected::start().await;
    let web = oci_image(&[3000], 1301);
    push_signed(&c.upstream, "apps/web", "v1", &web, &[&c.a]).await;
    let big = oci_image(&[4 * 1024 * 1024], 1302);
    push_signed(&c.upstream, "apps/big", "v1", &big, &[&c.a]).await;
    let archive = c.work.path().join("cut.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1", "apps/big:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Cut the archive in the middle of the big layer.
    let bytes = std::fs::read(&archive).expect("archive");
    let layer = entry(&big.layers[0].digest);
    let start = {
        let mut a = tar::Archive::new(&bytes[..]);
        let mut found = None;
        for e in a.entries().expect("entries") {
            let e = e.expect("entry");
            if e.path().expect("path").to_string_lossy() == layer {
                found = Some(e.raw_file_position());
            }
        }
        found.expect("the big layer is in the archive")
    };
    let cut = usize::try_from(start).expect("offset") + 1024 * 1024;
    std::fs::write(&archive, &bytes[..cut]).expect("truncate");

    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(imported(&report), vec![format!("{HOST}/apps/web:v1")], "{report}");
    let why = refusal(&report, &format!("{HOST}/apps/big:v1")).unwrap_or_else(|| panic!("{report}"));
    assert!(why.contains(&big.layers[0].digest.to_string()), "{why}");
    assert!(why.contains("truncated"), "{why}");
    assert!(
        report["archiveProblem"]
            .as_str()
            .is_some_and(|p| p.contains("truncated")),
        "{report}"
    );

    let server = site.serve().await;
    let (top, _) = skopeo_pull(&server.listen, "apps/web:v1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(top, web.manifest.digest);
    not_served(&server.listen, "apps/big", &big).await;
    assert_eq!(site.trap.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_signed_by_another_station_is_refused_whole() {
    let c = Connected::start().await;
    let web = oci_image(&[2000], 1401);
    push_signed(&c.upstream, "apps/web", "v1", &web, &[&c.a]).await;
    let archive = c.work.path().join("signed.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let other_key = c.work.path().join("other.key");
    let other_pub = c.work.path().join("other.pub");
    write_station_key(&other_key, &other_pub);

    let site = Site::new(&c.a).await;
    let (code, report) = site
        .import(&archive, &["--export-key", &other_pub.display().to_string()])
        .await;
    assert_eq!(code, 1, "{report}");
    assert!(imported(&report).is_empty(), "{report}");
    let why = refusal(&report, &format!("{HOST}/apps/web:v1")).unwrap_or_else(|| panic!("{report}"));
    assert!(why.contains("signature does not verify"), "{why}");
    let server = site.serve().await;
    not_served(&server.listen, "apps/web", &web).await;
    drop(server);

    // Control: the station's own key, required by the site's configuration
    // (`airgap.exportKey`), admits the same archive.
    site.require_export_key(&c.station_pub);
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(imported(&report), vec![format!("{HOST}/apps/web:v1")]);
    // The configured requirement holds for an archive exported without a signature.
    let unsigned = c.work.path().join("unsigned.tar");
    let (code, stdout, stderr) = run(&[
        "export".into(),
        format!("{HOST}/apps/web:v1"),
        "-o".into(),
        unsigned.display().to_string(),
        "--config".into(),
        c.work.path().join("connected.yaml").display().to_string(),
        "--policies".into(),
        c.policies.path().display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, report) = site.import(&unsigned, &[]).await;
    assert_eq!(code, 1, "{report}");
    let why = refusal(&report, &format!("{HOST}/apps/web:v1")).unwrap_or_else(|| panic!("{report}"));
    assert!(why.contains("no signed export record"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_imports_nothing_when_one_image_fails() {
    let c = Connected::start().await;
    let web = oci_image(&[2000], 1501);
    push_signed(&c.upstream, "apps/web", "v1", &web, &[&c.a]).await;
    let otherkey = oci_image(&[2100], 1502);
    push_signed(&c.upstream, "neg/otherkey", "v1", &otherkey, &[&c.b]).await;
    let archive = c.work.path().join("both.tar.zst");
    let (code, stdout, stderr) = c.export(&["apps/web:v1", "neg/otherkey:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let magic = std::fs::read(&archive).expect("archive");
    assert_eq!(&magic[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a .zst name writes zstd");

    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &["--all-or-nothing"]).await;
    assert_eq!(code, 1, "{report}");
    assert!(imported(&report).is_empty(), "{report}");
    let why = refusal(&report, &format!("{HOST}/apps/web:v1")).unwrap_or_else(|| panic!("{report}"));
    assert!(why.contains("--all-or-nothing"), "{why}");
    let server = site.serve().await;
    not_served(&server.listen, "apps/web", &web).await;
    drop(server);

    // Control: without the flag the good image imports.
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(imported(&report), vec![format!("{HOST}/apps/web:v1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_exporting_policy_denies_is_not_exported() {
    let c = Connected::start().await;
    let unsigned = oci_image(&[1000], 1601);
    c.upstream.push_image("apps/unsigned", "v1", &unsigned).await;
    let signed = oci_image(&[1000], 1602);
    push_signed(&c.upstream, "apps/web", "v1", &signed, &[&c.a]).await;
    let archive = c.work.path().join("denied.tar");
    let (code, stdout, stderr) = c.export(&["apps/web:v1", "apps/unsigned:v1"], &archive, &[]).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("DENIED: {HOST}/apps/unsigned:v1")), "{stdout}");
    assert!(!archive.exists(), "no archive is written");
    assert!(!c.work.path().join("denied.tar.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skopeo_oci_archive_imports_and_serves() {
    let c = Connected::start().await;
    let amd = oci_image_for("amd64", &[1500], 1701);
    let arm = oci_image_for("arm64", &[1600], 1702);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    c.upstream.push_index("vendor/multi", "v1", &index, &[&amd, &arm]).await;
    let archive = c.work.path().join("skopeo.tar");
    crate::support::skopeo_copy_exact(
        &format!("docker://{}/vendor/multi:v1", c.upstream.host()),
        &format!("oci-archive:{}:v1", archive.display()),
        LIMIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let site = Site::new(&c.a).await;
    // A bare tag needs a repository to live in.
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 1, "{report}");
    assert!(imported(&report).is_empty(), "{report}");
    // A registry the site does not serve.
    let (code, report) = site
        .import(&archive, &["--repository", "elsewhere.test/vendor/multi"])
        .await;
    assert_eq!(code, 1, "{report}");
    let why = refusal(&report, "elsewhere.test/vendor/multi:v1").unwrap_or_else(|| panic!("{report}"));
    assert!(why.contains("elsewhere.test is not an upstream"), "{why}");
    let (code, report) = site
        .import(&archive, &["--repository", &format!("{HOST}/vendor/multi")])
        .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(imported(&report), vec![format!("{HOST}/vendor/multi:v1")]);
    let server = site.serve().await;
    let (top, all) = skopeo_pull(&server.listen, "vendor/multi:v1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(top, index.digest);
    let mut want = digests(&amd);
    want.extend(digests(&arm));
    want.insert(index.digest.clone());
    assert_eq!(all, want);
    assert_eq!(site.trap.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_platform_export_serves_that_platform_and_the_whole_index() {
    let c = Connected::start().await;
    let amd = oci_image_for("amd64", &[1500], 2201);
    let arm = oci_image_for("arm64", &[1600], 2202);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    c.upstream.push_index("apps/multi", "v1", &index, &[&amd, &arm]).await;
    push_legacy_signature(&c.upstream, "apps/multi", &index, &[&c.a]).await;
    let archive = c.work.path().join("arm.tar");
    let (code, stdout, stderr) = c
        .export(&["apps/multi:v1"], &archive, &["--platform", "linux/arm64"])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");
    let server = site.serve().await;
    let at = server.listen.as_str();
    let r = get(at, "/v2/apps/multi/manifests/v1").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.bytes(), index.bytes, "the index itself, unchanged");
    let r = get(at, &format!("/v2/apps/multi/manifests/{}", arm.manifest.digest)).await;
    assert_eq!(r.status.as_u16(), 200, "the exported platform");
    let r = get(at, &format!("/v2/apps/multi/blobs/{}", arm.layers[0].digest)).await;
    assert_eq!(r.bytes(), arm.layers[0].bytes);
    let r = get(at, &format!("/v2/apps/multi/manifests/{}", amd.manifest.digest)).await;
    assert_eq!(r.status.as_u16(), 404, "the platform left behind");
}

/// A layout whose referrers are only in its blobs (as `oras cp
/// --to-oci-layout` writes them: no fallback tag, no name): the bundle is
/// found by its `subject` and verified, and the site lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_found_only_by_subject_in_the_layout_verify_and_are_served() {
    let c = Connected::start().await;
    let image = oci_image(&[1700], 2301);
    c.upstream.push_image("apps/bundled", "v1", &image).await;
    push_bundle_signature(&c.upstream, "apps/bundled", &image.manifest, &c.a).await;
    let archive = c.work.path().join("oras-like.tar");
    let (code, stdout, stderr) = c.export(&["apps/bundled:v1"], &archive, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Keep only the image in index.json: no material tag, no named referrer.
    let top = image.manifest.digest.to_string();
    rewrite_archive(&archive, |path, bytes| {
        if path != "index.json" {
            return bytes;
        }
        let mut index: serde_json::Value = serde_json::from_slice(&bytes).expect("index.json");
        let entries = index["manifests"].as_array_mut().expect("manifests");
        entries.retain(|e| e["digest"] == top.as_str());
        assert_eq!(entries.len(), 1);
        serde_json::to_vec(&index).expect("json")
    });
    let site = Site::new(&c.a).await;
    // A bundle-only rule for it: only the referrer can satisfy it.
    let rules = SITE_RULES.replace("[\"neg/bundle\"]", "[\"neg/bundle\", \"apps/bundled\"]");
    write_policy(site.policies.path(), &[("a", &c.a)], &rules);
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");
    let server = site.serve().await;
    let listing = get(
        &server.listen,
        &format!("/v2/apps/bundled/referrers/{}", image.manifest.digest),
    )
    .await;
    let listed = listing.json()["manifests"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{}", listing.json());
    let r = get(&server.listen, "/v2/apps/bundled/manifests/v1").await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_no_layout_archive_is_refused_whole() {
    let c = Connected::start().await;
    let site = Site::new(&c.a).await;
    let junk = c.work.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all, just some bytes").expect("junk");
    let (code, stdout, stderr) = run(&[
        "import".into(),
        junk.display().to_string(),
        "--config".into(),
        site.dir.path().join("site.yaml").display().to_string(),
        "--policies".into(),
        site.policies.path().display().to_string(),
    ])
    .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("no index.json"), "{stderr}");
    assert!(!site.dir.path().join("data/tags").exists(), "nothing written");
}
