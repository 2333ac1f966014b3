//! Manifests and blobs by tag and by digest (exact bytes and headers, HEAD and GET, cold and cached), unknown and invalid references, sha512.

use super::common::*;

#[tokio::test]
async fn api_version_check() {
    let (_s, proxy) = seeded_proxy().await;
    let r = get(&proxy.url("/v2/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_api_version(&r, "GET /v2/");
    assert_eq!(r.json(), json!({}));
    let r = head(&proxy.url("/v2/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_api_version(&r, "HEAD /v2/");
    assert!(r.bytes().is_empty());
    let r = get(&proxy.url("/v2")).await;
    assert_eq!(r.status, StatusCode::OK, "GET /v2 without the slash");
}

/// Conformance "Pull manifests": GET/HEAD by tag and by digest, for every
/// manifest kind, with the conformance suite's Accept (the exact type), with
/// containerd's list, and with none.
#[tokio::test]
async fn manifests_by_tag_and_by_digest() {
    let (s, proxy) = seeded_proxy().await;
    let mut cases: Vec<(&str, &Blob, Option<&str>)> = vec![
        ("OCI image", &s.oci.manifest, Some("v1")),
        ("Docker image", &s.docker.manifest, Some("docker")),
        ("OCI index", &s.index, Some("multi")),
        ("Docker list", &s.list, Some("list")),
        ("OCI artifact", &s.sig, None),
    ];
    for c in &s.index_children {
        cases.push(("OCI index child", &c.manifest, None));
    }
    for c in &s.list_children {
        cases.push(("Docker list child", &c.manifest, None));
    }
    for (kind, m, tag) in cases {
        let digest = m.digest.to_string();
        let references: Vec<&str> = tag.into_iter().chain(std::iter::once(digest.as_str())).collect();
        for reference in references {
            for accept in [Some(m.media_type.as_str()), Some(CONTAINERD_ACCEPT), None] {
                let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
                let url = proxy.url(&format!("/v2/{REPO}/manifests/{reference}"));
                // HEAD first (containerd resolves with HEAD), then GET, twice
                // (the second pair is served from the cache).
                for round in ["cold", "cached"] {
                    let what = format!("{kind} {reference} accept={accept:?} {round}");
                    let r = request(Method::HEAD, &url, &headers).await;
                    assert_manifest(&r, m, true, &format!("HEAD {what}"));
                    let r = request(Method::GET, &url, &headers).await;
                    assert_manifest(&r, m, false, &format!("GET {what}"));
                }
            }
        }
    }
}

/// Conformance: "HEAD/GET request to nonexistent manifest should return 404".
#[tokio::test]
async fn manifest_unknown() {
    let (_s, proxy) = seeded_proxy().await;
    let missing = unknown_digest();
    let cases = [
        format!("/v2/{REPO}/manifests/nonexistent"),
        format!("/v2/{REPO}/manifests/{missing}"),
        "/v2/conformance/nope/manifests/v1".to_owned(),
        format!("/v2/conformance/nope/manifests/{missing}"),
    ];
    for path in &cases {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &format!("GET {path}"));
        let r = head(&proxy.url(path)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &format!("HEAD {path}"));
        assert!(r.bytes().is_empty(), "HEAD {path}: empty body");
    }
}

/// Conformance "Pull blobs": HEAD and GET every blob of every image, cold
/// (fetched through) and cached (from the proxy's store).
#[tokio::test]
async fn blobs_get_and_head() {
    let (s, proxy) = seeded_proxy().await;
    let mut blobs: Vec<&Blob> = s.oci.blobs();
    blobs.extend(s.docker.blobs());
    for c in s.index_children.iter().chain(&s.list_children) {
        blobs.extend(c.blobs());
    }
    for blob in blobs {
        let url = proxy.url(&format!("/v2/{REPO}/blobs/{}", blob.digest));
        // HEAD on a cold blob asserts only a verified size: with no admitted
        // descriptor stating it (integrity-only mode), the proxy downloads
        // and verifies the blob first, and keeps it.
        let r = head(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            true,
            &format!("cold HEAD {}", blob.digest),
        );
        assert!(
            proxy.stores_blob(&blob.digest).await,
            "the HEAD's size comes from a verified download"
        );
        let r = get(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            false,
            &format!("GET after HEAD {}", blob.digest),
        );
        wait_cached(&proxy, &blob.digest).await;
        let r = head(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            true,
            &format!("cached HEAD {}", blob.digest),
        );
        let r = get(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            false,
            &format!("cached GET {}", blob.digest),
        );
    }
}

/// Conformance: "HEAD/GET request to nonexistent blob should result in 404".
#[tokio::test]
async fn blob_unknown() {
    let (_s, proxy) = seeded_proxy().await;
    let missing = unknown_digest();
    for path in [
        format!("/v2/{REPO}/blobs/{missing}"),
        format!("/v2/conformance/nope/blobs/{missing}"),
    ] {
        let r = get(&proxy.url(&path)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &format!("GET {path}"));
        let r = head(&proxy.url(&path)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &format!("HEAD {path}"));
        assert!(r.bytes().is_empty(), "HEAD {path}: empty body");
    }
    assert!(!proxy.has_blob(&missing));
    assert_eq!(proxy.temp_files(), 0, "no partial download left behind");
}

/// Conformance accepts 400 or 404 for `sha256:baddigeststring`; Portcullis
/// answers 400 `DIGEST_INVALID` without asking the upstream.
#[tokio::test]
async fn invalid_digests() {
    let (_s, proxy) = seeded_proxy().await;
    let short512 = format!("sha512:{}", "a".repeat(64));
    let upper = format!("sha256:{}", "A".repeat(64));
    let cases = [
        format!("/v2/{REPO}/manifests/sha256:baddigeststring"),
        format!("/v2/{REPO}/manifests/sha256:totallywrong"),
        format!("/v2/{REPO}/blobs/sha256:baddigeststring"),
        format!("/v2/{REPO}/blobs/sha256:"),
        format!("/v2/{REPO}/blobs/baddigeststring"),
        format!("/v2/{REPO}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"),
        format!("/v2/{REPO}/blobs/{short512}"),
        format!("/v2/{REPO}/blobs/{upper}"),
        format!("/v2/{REPO}/manifests/{upper}"),
        format!("/v2/{REPO}/referrers/sha256:baddigeststring"),
        format!("/v2/{REPO}/referrers/v1"),
    ];
    for path in &cases {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID", &format!("GET {path}"));
        if !path.contains("/referrers/") {
            let r = head(&proxy.url(path)).await;
            assert_error(&r, StatusCode::BAD_REQUEST, "DIGEST_INVALID", &format!("HEAD {path}"));
        }
    }
}

/// Names outside the spec's grammar and malformed tags: 400 `NAME_INVALID`.
#[tokio::test]
async fn invalid_names_and_tags() {
    let (s, proxy) = seeded_proxy().await;
    let d = &s.oci.layers[0].digest;
    let long_name = format!("conformance/{}", "a".repeat(250));
    let long_tag = "t".repeat(129);
    let cases = [
        "/v2/Conformance/app/manifests/v1".to_owned(),
        "/v2/conformance//app/manifests/v1".to_owned(),
        "/v2/conformance/app-/manifests/v1".to_owned(),
        "/v2/-conformance/app/manifests/v1".to_owned(),
        "/v2/conformance/a..b/manifests/v1".to_owned(),
        "/v2/conformance/a___b/manifests/v1".to_owned(),
        "/v2/conformance/app./manifests/v1".to_owned(),
        format!("/v2/{long_name}/manifests/v1"),
        format!("/v2/CONFORMANCE/blobs/{d}"),
        "/v2/Conformance/app/tags/list".to_owned(),
        format!("/v2/Conformance/app/referrers/{d}"),
        // Tags: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
        format!("/v2/{REPO}/manifests/-v1"),
        format!("/v2/{REPO}/manifests/.v1"),
        format!("/v2/{REPO}/manifests/{long_tag}"),
        // A namespace that is not a registry host.
        format!("/v2/{REPO}/manifests/v1?ns=not%20a%20host"),
    ];
    for path in &cases {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID", &format!("GET {path}"));
    }
    // Separators the grammar allows are accepted (and simply not found).
    for path in ["/v2/conformance/a__b.c-d--e/manifests/v1", "/v2/a/b/c/d/e/manifests/v1"] {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &format!("GET {path}"));
    }
    // 128-character tags are valid.
    let r = get(&proxy.url(&format!("/v2/{REPO}/manifests/{}", "t".repeat(128)))).await;
    assert_error(&r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "128-char tag");
}

/// `sha512` digests (the conformance data uses them). Distribution 2.8
/// accepts sha512 blob pushes and serves them by that digest; manifests it
/// only stores under sha256, so the sha512 name is linked in its storage
/// (see `Distribution::link_manifest_digest`).
#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let s = seed().await;
    let bytes = random_bytes(200_000, 512);
    let blob = Blob {
        media_type: "application/octet-stream".into(),
        digest: Digest::of(Algorithm::Sha512, &bytes),
        bytes,
    };
    s.registry.push_blob(REPO, &blob).await;
    let proxy = TestProxy::with_default_upstream(&s.registry.url()).await;
    let url = proxy.url(&format!("/v2/{REPO}/blobs/{}", blob.digest));
    let r = head(&url).await;
    assert_blob(&r, &blob.digest, &blob.bytes, true, "cold HEAD sha512 blob");
    let r = get(&url).await;
    assert_blob(&r, &blob.digest, &blob.bytes, false, "cold GET sha512 blob");
    wait_cached(&proxy, &blob.digest).await;
    assert!(proxy.blob_path(&blob.digest).to_string_lossy().contains("/sha512/"));
    let r = get(&url).await;
    assert_blob(&r, &blob.digest, &blob.bytes, false, "cached GET sha512 blob");
    let r = request(Method::GET, &url, &[("range", "bytes=-10")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes() == blob.bytes[blob.bytes.len() - 10..]);
    // The sha256 name of the same bytes is a different blob for the proxy.
    let sha256 = Digest::of(Algorithm::Sha256, &blob.bytes);
    let r = get(&proxy.url(&format!("/v2/{REPO}/blobs/{sha256}"))).await;
    assert_blob(&r, &sha256, &blob.bytes, false, "same bytes by sha256");

    for m in [&s.oci.manifest, &s.index, &s.list] {
        let d512 = Digest::of(Algorithm::Sha512, &m.bytes);
        s.registry.link_manifest_digest(REPO, m, &d512);
        let by512 = Blob {
            media_type: m.media_type.clone(),
            bytes: m.bytes.clone(),
            digest: d512.clone(),
        };
        let url = proxy.url(&format!("/v2/{REPO}/manifests/{d512}"));
        for round in ["cold", "cached"] {
            let r = head(&url).await;
            assert_manifest(&r, &by512, true, &format!("{round} HEAD sha512 manifest"));
            let r = get(&url).await;
            assert_manifest(&r, &by512, false, &format!("{round} GET sha512 manifest"));
        }
        assert!(proxy.has_manifest(&d512));
    }
    let missing = Digest::of(Algorithm::Sha512, b"missing");
    let r = get(&proxy.url(&format!("/v2/{REPO}/blobs/{missing}"))).await;
    assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "unknown sha512 blob");
}
