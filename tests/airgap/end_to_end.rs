//! Export on the connected side, import into a running site proxy that has
//! no upstream, pulls by skopeo and ctr with the original digests, material
//! byte for byte, refusals with their reasons, and no network attempt.

use std::collections::BTreeSet;

use super::common::*;
use crate::support::containerd::Containerd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_images_cross_the_gap_and_are_served_with_no_upstream() {
    let c = Connected::start().await;
    let s = seed(&c).await;
    let archive = c.work.path().join("site.tar");
    let (code, stdout, stderr) = c.export(&ALL, &archive, &[]).await;
    assert_eq!(code, 0, "export failed:\n{stdout}\n{stderr}");
    for name in ALL {
        assert!(
            stdout.contains(&format!("EXPORTED {HOST}/{name}")),
            "{name} not exported:\n{stdout}"
        );
    }
    assert!(stdout.contains("signed export record"), "{stdout}");
    // One flipped byte in a layer of one image, on the way across.
    let layer = entry(&s.flipped.layers[0].digest);
    rewrite_archive(&archive, |path, mut bytes| {
        if path == layer {
            bytes[10] ^= 0x01;
        }
        bytes
    });

    let site = Site::new(&c.a).await;
    let server = site.serve().await;
    let at = server.listen.as_str();
    assert_eq!(
        get(at, "/v2/apps/web/manifests/v1").await.status.as_u16(),
        404,
        "empty site"
    );

    let station_pub = c.station_pub.display().to_string();
    let (code, report) = site.import(&archive, &["--export-key", &station_pub]).await;
    assert_eq!(code, 1, "some images are refused: {report}");
    let want: Vec<String> = ["apps/attested:v1", "apps/bundled:v1", "apps/multi:v1", "apps/web:v1"]
        .iter()
        .map(|n| format!("{HOST}/{n}"))
        .collect();
    assert_eq!(imported(&report), want, "{report}");
    let reason = |n: &str| {
        refusal(&report, &format!("{HOST}/{n}"))
            .unwrap_or_else(|| panic!("{n} not refused: {report}"))
            .to_owned()
    };
    let r = reason("neg/otherkey:v1");
    assert!(r.starts_with("denied by the local policy"), "{r}");
    assert!(r.contains("key-a"), "names the unsatisfied authority: {r}");
    let r = reason("neg/bundle:v1");
    assert!(r.starts_with("denied by the local policy"), "{r}");
    assert!(r.contains("does not name"), "the bundle names another digest: {r}");
    let r = reason("other/tool:v1");
    assert!(r.starts_with("denied by the local policy"), "{r}");
    let r = reason("neg/flipped:v1");
    assert!(r.contains(&s.flipped.layers[0].digest.to_string()), "{r}");
    assert!(r.contains("does not match its digest"), "{r}");

    // The running proxy serves the new content (no restart), by tag and by
    // digest, with the original digests.
    for (repo, image) in [
        ("apps/web", &s.web),
        ("apps/bundled", &s.bundled),
        ("apps/attested", &s.attested),
    ] {
        let (top, all) = skopeo_pull(at, &format!("{repo}:v1"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(top, image.manifest.digest, "{repo}");
        assert_eq!(all, digests(image), "{repo}");
        let (top, _) = skopeo_pull(at, &format!("{repo}@{}", image.manifest.digest))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(top, image.manifest.digest, "{repo} by digest");
    }
    let (top, all) = skopeo_pull(at, "apps/multi:v1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(top, s.index.digest);
    let mut want: BTreeSet<Digest> = digests(&s.amd);
    want.extend(digests(&s.arm));
    want.insert(s.index.digest.clone());
    assert_eq!(all, want, "the index and both platforms");

    // Verification material, byte for byte: legacy .sig and .att, the
    // bundle referrer (listed by the referrers API) and its bundle.
    for (repo, tag) in [
        ("apps/web", format!("{}.sig", s.web.manifest.digest.tag_form())),
        ("apps/multi", format!("{}.sig", s.index.digest.tag_form())),
        (
            "apps/attested",
            format!("{}.att", s.attested.manifest.digest.tag_form()),
        ),
    ] {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let served = get(at, &path).await;
        assert_eq!(served.status.as_u16(), 200, "{path}: {:?}", served.body);
        let original = upstream_bytes(&c.upstream, &path).await;
        assert_eq!(served.bytes().to_vec(), original, "{path}");
        let m: serde_json::Value = serde_json::from_slice(&original).expect("material manifest");
        for layer in m["layers"].as_array().expect("layers") {
            let blob = format!("/v2/{repo}/blobs/{}", layer["digest"].as_str().expect("digest"));
            let served = get(at, &blob).await;
            assert_eq!(served.status.as_u16(), 200, "{blob}");
            assert_eq!(
                served.bytes().to_vec(),
                upstream_bytes(&c.upstream, &blob).await,
                "{blob}"
            );
        }
    }
    let listing = get(at, &format!("/v2/apps/bundled/referrers/{}", s.bundled.manifest.digest)).await;
    assert_eq!(listing.status.as_u16(), 200, "{:?}", listing.body);
    let referrers = listing.json()["manifests"].as_array().cloned().unwrap_or_default();
    assert_eq!(referrers.len(), 1, "the bundle referrer: {}", listing.json());
    let referrer = referrers[0]["digest"].as_str().expect("digest").to_owned();
    let path = format!("/v2/apps/bundled/manifests/{referrer}");
    let served = get(at, &path).await;
    let original = upstream_bytes(&c.upstream, &path).await;
    assert_eq!(served.bytes().to_vec(), original, "the referrer manifest");
    let m: serde_json::Value = serde_json::from_slice(&original).expect("referrer");
    let bundle = format!(
        "/v2/apps/bundled/blobs/{}",
        m["layers"][0]["digest"].as_str().expect("digest")
    );
    assert_eq!(
        get(at, &bundle).await.bytes().to_vec(),
        upstream_bytes(&c.upstream, &bundle).await,
        "the bundle"
    );

    // Nothing of a refused image is served; absent content is a 404.
    not_served(at, "neg/otherkey", &s.otherkey).await;
    not_served(at, "neg/bundle", &s.badbundle).await;
    not_served(at, "other/tool", &s.other).await;
    not_served(at, "neg/flipped", &s.flipped).await;
    assert_eq!(get(at, "/v2/apps/nothing/manifests/v1").await.status.as_u16(), 404);

    // containerd through the site as its mirror for the registry's name.
    let containerd = Containerd::start().await;
    let hosts = containerd.dir.path().join("hosts");
    let dir = hosts.join(HOST);
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n\n[host.\"http://{at}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .expect("hosts.toml");
    let hosts = hosts.display().to_string();
    let mut references = Vec::new();
    for (repo, top) in [
        ("apps/web", &s.web.manifest.digest),
        ("apps/bundled", &s.bundled.manifest.digest),
        ("apps/attested", &s.attested.manifest.digest),
        ("apps/multi", &s.index.digest),
    ] {
        references.push(format!("{HOST}/{repo}:v1"));
        references.push(format!("{HOST}/{repo}@{top}"));
    }
    for image in references {
        containerd
            .ctr(&["content", "fetch", "--all-platforms", "--hosts-dir", &hosts, &image])
            .await
            .unwrap_or_else(|e| panic!("ctr content fetch {image}: {e}"));
    }
    let listed = containerd
        .ctr(&["content", "ls", "-q"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed: BTreeSet<Digest> = listed.lines().map(|l| l.trim().parse().expect("digest")).collect();
    let everything = [&s.web, &s.bundled, &s.attested].into_iter().flat_map(digests);
    for d in want.iter().cloned().chain(everything) {
        assert!(listed.contains(&d), "containerd lacks {d}");
    }

    assert_eq!(site.trap.count(), 0, "the site never tried its upstream");
    drop(server);

    // Imported content is pinned: it cannot be fetched again. Every blob of
    // the four images and of their material (legacy layers and configs,
    // the bundle, the attestation).
    let stats = site.store_stats().await;
    let pinned: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pinned count in:\n{stats}"));
    let imported_blobs: u64 = report["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|i| i["blobs"].as_u64().expect("blobs"))
        .sum();
    assert!(
        pinned > 0 && pinned as u64 <= imported_blobs,
        "{pinned} pinned of {imported_blobs}:\n{stats}"
    );
    let blobs_line = stats.lines().find(|l| l.starts_with("blobs: ")).expect("blobs line");
    assert!(
        blobs_line.starts_with(&format!("blobs: {pinned} ")),
        "every stored blob is pinned:\n{stats}"
    );
}
