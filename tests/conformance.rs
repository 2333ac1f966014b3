//! The OCI distribution-spec conformance suite's PULL category (plus the
//! content-discovery checks a pull needs: tag listing and referrers),
//! rewritten as Rust tests against Portcullis in front of a real CNCF
//! Distribution registry seeded through the push API.
//!
//! Each test starts its own `docker-registry` (about 50 ms) and proxy, so
//! tests are independent and "cold" really means cold.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis::oci::{Algorithm, Digest};
use serde_json::{Value, json};
use support::client::{Resp, get, head, request};
use support::distribution::Distribution;
use support::images::*;
use support::proxy::TestProxy;

const REPO: &str = "conformance/app";
const SIG: &str = "application/vnd.example.signature.v1+json";
const SBOM: &str = "application/vnd.example.sbom.v1+json";
/// containerd's resolve `Accept` list.
const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
/// Error codes the distribution-spec defines (plus `UNKNOWN` for 5xx).
const OCI_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A registry seeded with every manifest kind a pull meets.
struct Seeded {
    registry: Distribution,
    /// OCI image, tag `v1`; its second layer is large enough for ranges.
    oci: Image,
    /// Docker schema 2 image, tag `docker`.
    docker: Image,
    /// OCI index over two platforms, tag `multi`.
    index: Blob,
    index_children: Vec<Image>,
    /// Docker manifest list over two platforms, tag `list`.
    list: Blob,
    list_children: Vec<Image>,
    /// Two referrers of `oci.manifest` (signature, SBOM).
    sig: Blob,
    sbom: Blob,
}

async fn seed() -> Seeded {
    let registry = Distribution::start().await;
    let oci = oci_image(&[1024, 300_001], 1);
    registry.push_image(REPO, "v1", &oci).await;
    let docker = docker_image(&[2048, 512], 2);
    registry.push_image(REPO, "docker", &docker).await;
    let index_children = vec![oci_image_for("amd64", &[700], 3), oci_image_for("arm64", &[800], 4)];
    let index = oci_index(&[(&index_children[0], "amd64"), (&index_children[1], "arm64")]);
    registry
        .push_index(REPO, "multi", &index, &[&index_children[0], &index_children[1]])
        .await;
    let list_children = vec![
        docker_image_for("amd64", &[900], 5),
        docker_image_for("arm64", &[1000], 6),
    ];
    let list = docker_list(&[(&list_children[0], "amd64"), (&list_children[1], "arm64")]);
    registry
        .push_list(REPO, "list", &list, &[&list_children[0], &list_children[1]])
        .await;

    let sig_payload = Blob::new("application/vnd.example.sig", random_bytes(64, 7));
    let (sig, empty) = referrer(&oci.manifest, SIG, &sig_payload);
    registry.push_artifact(REPO, &sig, &empty, &sig_payload).await;
    let sbom_payload = Blob::new("application/spdx+json", &b"{\"spdxVersion\":\"SPDX-2.3\"}"[..]);
    let (sbom, empty) = referrer(&oci.manifest, SBOM, &sbom_payload);
    registry.push_artifact(REPO, &sbom, &empty, &sbom_payload).await;
    registry
        .push_referrers_index(REPO, &oci.manifest, &[(&sig, SIG), (&sbom, SBOM)])
        .await;

    Seeded {
        registry,
        oci,
        docker,
        index,
        index_children,
        list,
        list_children,
        sig,
        sbom,
    }
}

async fn seeded_proxy() -> (Seeded, TestProxy) {
    let s = seed().await;
    let proxy = TestProxy::with_default_upstream(&s.registry.url()).await;
    (s, proxy)
}

fn assert_api_version(r: &Resp, what: &str) {
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}: API version header"
    );
}

/// An OCI error response: exact status, JSON content type, the spec's body
/// shape and exact code. HEAD responses must have an empty body.
fn assert_error(r: &Resp, status: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: status (body {:?})", r.body);
    assert_api_version(r, what);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{what}: error content type"
    );
    let body = r.bytes();
    if body.is_empty() {
        return; // HEAD
    }
    let v: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body:?}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no `errors` array: {v}"));
    assert!(!errors.is_empty(), "{what}: empty `errors`");
    for e in errors {
        assert!(e["message"].is_string(), "{what}: error without message: {e}");
        assert!(e.get("detail").is_some(), "{what}: error without detail: {e}");
    }
    assert_eq!(r.error_code(), code, "{what}: error code in {v}");
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{what}: error Content-Length"
    );
}

/// A 200 manifest response with exact bytes and headers.
fn assert_manifest(r: &Resp, m: &Blob, is_head: bool, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: status (body {:?})", r.body);
    assert_api_version(r, what);
    assert_eq!(
        r.header("content-type"),
        Some(m.media_type.as_str()),
        "{what}: Content-Type"
    );
    assert_eq!(
        r.header("content-length"),
        Some(m.bytes.len().to_string().as_str()),
        "{what}: Content-Length"
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(m.digest.to_string().as_str()),
        "{what}: Docker-Content-Digest"
    );
    if is_head {
        assert!(r.bytes().is_empty(), "{what}: HEAD body must be empty");
    } else {
        assert_eq!(r.bytes(), m.bytes, "{what}: exact manifest bytes");
    }
}

/// A 200 blob response with exact bytes and headers.
fn assert_blob(r: &Resp, digest: &Digest, bytes: &[u8], is_head: bool, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: status (body {:?})", r.body);
    assert_api_version(r, what);
    assert_eq!(
        r.header("content-length"),
        Some(bytes.len().to_string().as_str()),
        "{what}: Content-Length"
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str()),
        "{what}: Docker-Content-Digest"
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/octet-stream"),
        "{what}: Content-Type"
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{what}: Accept-Ranges");
    if is_head {
        assert!(r.bytes().is_empty(), "{what}: HEAD body must be empty");
    } else {
        assert!(
            r.bytes() == bytes,
            "{what}: exact blob bytes ({} vs {} bytes)",
            r.bytes().len(),
            bytes.len()
        );
    }
}

/// Wait (bounded) until the proxy has committed `digest` to its store.
async fn wait_cached(proxy: &TestProxy, digest: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !proxy.has_blob(digest) {
        assert!(Instant::now() < deadline, "blob {digest} was not stored within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unknown_digest() -> Digest {
    Digest::of(Algorithm::Sha256, b"nothing has this content")
}

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
        // HEAD on a cold blob is answered from an upstream HEAD.
        let r = head(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            true,
            &format!("cold HEAD {}", blob.digest),
        );
        assert!(!proxy.has_blob(&blob.digest), "HEAD must not download the blob");
        let r = get(&url).await;
        assert_blob(
            &r,
            &blob.digest,
            &blob.bytes,
            false,
            &format!("cold GET {}", blob.digest),
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

/// The tags a tag-listing test pushes, deliberately out of order and mixing
/// digits, upper case, `_` and `.` (lexical = byte order).
const TAGS: &[&str] = &[
    "v1",
    "v2",
    "latest",
    "0.1",
    "1.0.0-rc.1",
    "A",
    "B_x",
    "_under",
    "alpha",
    "beta",
    "zeta",
    "v10",
    "v9",
];

async fn seed_tags(registry: &Distribution, repo: &str) -> Vec<String> {
    let img = oci_image(&[16], 99);
    registry.push_image(repo, TAGS[0], &img).await;
    for tag in &TAGS[1..] {
        registry.push_manifest(repo, tag, &img.manifest).await;
    }
    let mut sorted: Vec<String> = TAGS.iter().map(|t| (*t).to_owned()).collect();
    sorted.sort();
    sorted
}

fn tags_of(r: &Resp) -> Vec<String> {
    serde_json::from_value(r.json()["tags"].clone()).expect("tags array")
}

/// The path of a `Link: <path>; rel="next"` header.
fn next_link(r: &Resp) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "Link header shape: {link}");
    let start = link.find('<').expect("<") + 1;
    let end = link.find('>').expect(">");
    Some(link[start..end].to_owned())
}

/// Content discovery: tag listing in lexical order, `n`, `last`, and
/// `Link` pagination followed to the end.
#[tokio::test]
async fn tags_list() {
    let registry = Distribution::start().await;
    let repo = "conformance/tags";
    let all = seed_tags(&registry, repo).await;
    let proxy = TestProxy::with_default_upstream(&registry.url()).await;

    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_api_version(&r, "tags");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some(r.bytes().len().to_string().as_str()));
    assert_eq!(r.header("link"), None, "no Link without n");
    assert_eq!(r.json()["name"], json!(repo));
    assert_eq!(tags_of(&r), all, "all tags in lexical order");

    // `n` limits, `Link` continues; following the links yields every tag once.
    for n in [1, 2, 5, all.len() - 1] {
        let mut got = Vec::new();
        let mut path = format!("/v2/{repo}/tags/list?n={n}");
        let mut pages = 0;
        loop {
            let r = get(&proxy.url(&path)).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            let page = tags_of(&r);
            assert!(page.len() <= n, "{path}: {} tags > n={n}", page.len());
            pages += 1;
            got.extend(page.clone());
            match next_link(&r) {
                Some(next) => {
                    let last = page.last().expect("a page with a next link is not empty");
                    assert_eq!(next, format!("/v2/{repo}/tags/list?n={n}&last={last}"), "Link target");
                    path = next;
                }
                None => break,
            }
            assert!(pages <= all.len() + 1, "pagination does not end");
        }
        assert_eq!(got, all, "n={n}: pages concatenate to the full list");
    }

    // Conformance "GET number of tags should be limited by `n`".
    let half = all.len() / 2;
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={half}"))).await;
    assert_eq!(tags_of(&r), all[..half].to_vec());
    assert!(next_link(&r).is_some(), "more tags follow: Link header");
    // Conformance "GET start of tag is set by `last`".
    let last = &all[half - 1];
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={half}&last={last}"))).await;
    assert_eq!(tags_of(&r), all[half..(2 * half).min(all.len())].to_vec());
    // `last` alone: everything after it.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?last={last}"))).await;
    assert_eq!(tags_of(&r), all[half..].to_vec());
    assert_eq!(r.header("link"), None);
    // `last` past the end: empty list, no Link.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n=3&last=zzz"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(tags_of(&r), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    // `n` beyond the count: everything, no Link.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={}", all.len() + 10))).await;
    assert_eq!(tags_of(&r), all);
    assert_eq!(r.header("link"), None);

    // Unknown repository.
    let r = get(&proxy.url("/v2/conformance/nope/tags/list")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "NAME_UNKNOWN", "tags of unknown repo");
}

fn referrers_descriptors(r: &Resp, what: &str) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{what}: status (body {:?})", r.body);
    assert_api_version(r, what);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{what}: Content-Type");
    assert_eq!(
        r.header("content-length"),
        Some(r.bytes().len().to_string().as_str()),
        "{what}: Content-Length"
    );
    let v = r.json();
    assert_eq!(v["schemaVersion"], json!(2), "{what}: {v}");
    assert_eq!(v["mediaType"], json!(OCI_INDEX), "{what}: {v}");
    v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: `manifests` must be an array: {v}"))
        .clone()
}

fn with_artifact_type(m: &Blob, artifact_type: &str) -> Value {
    let mut d = m.descriptor();
    d["artifactType"] = json!(artifact_type);
    d
}

/// Content discovery: the referrers API, served from the referrers tag
/// schema since distribution 2.8 has no native API.
#[tokio::test]
async fn referrers() {
    let (s, proxy) = seeded_proxy().await;
    let subject = &s.oci.manifest.digest;
    let url = |q: &str| proxy.url(&format!("/v2/{REPO}/referrers/{subject}{q}"));

    let r = get(&url("")).await;
    let got = referrers_descriptors(&r, "all referrers");
    assert_eq!(
        got,
        vec![with_artifact_type(&s.sig, SIG), with_artifact_type(&s.sbom, SBOM)]
    );
    assert_eq!(r.header("oci-filters-applied"), None, "no filter requested");

    // Filtering by artifactType.
    for (wanted, expected) in [
        (SIG, vec![with_artifact_type(&s.sig, SIG)]),
        (SBOM, vec![with_artifact_type(&s.sbom, SBOM)]),
        ("application/vnd.example.none", vec![]),
    ] {
        let q = format!("?artifactType={}", wanted.replace('+', "%2B"));
        let r = get(&url(&q)).await;
        let got = referrers_descriptors(&r, &format!("artifactType={wanted}"));
        assert_eq!(got, expected, "artifactType={wanted}");
        assert_eq!(
            r.header("oci-filters-applied"),
            Some("artifactType"),
            "artifactType={wanted}"
        );
    }

    // Each listed referrer is pullable through the proxy and names the subject.
    for m in [&s.sig, &s.sbom] {
        let r = get(&proxy.url(&format!("/v2/{REPO}/manifests/{}", m.digest))).await;
        assert_manifest(&r, m, false, "referrer manifest");
        assert_eq!(r.json()["subject"]["digest"], json!(subject.to_string()));
    }

    // Subjects without referrers (existing or not): 200 and an empty index.
    for subject in [
        s.docker.manifest.digest.clone(),
        s.index.digest.clone(),
        unknown_digest(),
    ] {
        let r = get(&proxy.url(&format!("/v2/{REPO}/referrers/{subject}"))).await;
        assert_eq!(
            referrers_descriptors(&r, &format!("no referrers for {subject}")),
            Vec::<Value>::new()
        );
    }
    let r = get(&proxy.url(&format!("/v2/conformance/nope/referrers/{subject}"))).await;
    assert_eq!(referrers_descriptors(&r, "unknown repository"), Vec::<Value>::new());
}

/// `Range` on blobs (RFC 9110 §14): on a cold blob (the proxy fetches the
/// whole blob once and slices it) and on the cached blob.
#[tokio::test]
async fn blob_ranges_cold_and_cached() {
    let s = seed().await;
    let blob = &s.oci.layers[1];
    let size = blob.bytes.len() as u64;
    assert_eq!(size, 300_001);
    let url_path = format!("/v2/{REPO}/blobs/{}", blob.digest);
    // (Range header, expected [start, end) or None for 200, or Err(()) for 416)
    type Expect = Result<Option<(u64, u64)>, ()>;
    let cases: Vec<(String, Expect)> = vec![
        ("bytes=0-9".into(), Ok(Some((0, 10)))),
        ("bytes=10-19".into(), Ok(Some((10, 20)))),
        ("bytes=5-5".into(), Ok(Some((5, 6)))),
        ("bytes=100-".into(), Ok(Some((100, size)))),
        ("bytes=0-".into(), Ok(Some((0, size)))),
        ("bytes=-50".into(), Ok(Some((size - 50, size)))),
        ("bytes=-1".into(), Ok(Some((size - 1, size)))),
        (format!("bytes={}-", size - 1), Ok(Some((size - 1, size)))),
        (format!("bytes=299990-{}", size * 10), Ok(Some((299_990, size)))),
        (format!("bytes=-{}", size * 10), Ok(Some((0, size)))),
        (format!("bytes={size}-"), Err(())),
        (format!("bytes={}-{}", size, size + 10), Err(())),
        ("bytes=-0".into(), Err(())),
        // Not a single satisfiable byte range: ignored, 200 with everything.
        ("bytes=0-1,3-4".into(), Ok(None)),
        ("bytes=9-0".into(), Ok(None)),
        ("items=0-1".into(), Ok(None)),
    ];
    for (range, expect) in &cases {
        // A new proxy per case: the first request meets a cold blob.
        let proxy = TestProxy::with_default_upstream(&s.registry.url()).await;
        let url = proxy.url(&url_path);
        for round in ["cold", "cached"] {
            let what = format!("{round} Range: {range}");
            let r = request(Method::GET, &url, &[("range", range)]).await;
            assert_api_version(&r, &what);
            match expect {
                Ok(None) => assert_blob(&r, &blob.digest, &blob.bytes, false, &what),
                Ok(Some((start, end))) => {
                    assert_eq!(
                        r.status,
                        StatusCode::PARTIAL_CONTENT,
                        "{what}: body {:?}",
                        r.body.as_ref().map(|b| b.len())
                    );
                    let expected_range = format!("bytes {start}-{}/{size}", end - 1);
                    assert_eq!(r.header("content-range"), Some(expected_range.as_str()), "{what}");
                    assert_eq!(
                        r.header("content-length"),
                        Some((end - start).to_string().as_str()),
                        "{what}"
                    );
                    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{what}");
                    assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{what}");
                    assert!(
                        r.bytes() == blob.bytes[*start as usize..*end as usize],
                        "{what}: exact slice"
                    );
                }
                Err(()) => {
                    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{what}");
                    assert_eq!(
                        r.header("content-range"),
                        Some(format!("bytes */{size}").as_str()),
                        "{what}"
                    );
                    assert_error(&r, StatusCode::RANGE_NOT_SATISFIABLE, "UNSUPPORTED", &what);
                }
            }
            // Even a partial or refused first request leaves the whole,
            // verified blob in the store for the second round.
            wait_cached(&proxy, &blob.digest).await;
        }
    }
}

/// Push and delete: every endpoint answers 405 with an `UNSUPPORTED` OCI
/// error, and nothing reaches the upstream.
#[tokio::test]
async fn push_and_delete_refused() {
    let (s, proxy) = seeded_proxy().await;
    let m = &s.oci.manifest.digest;
    let b = &s.oci.layers[0].digest;
    let cases: Vec<(Method, String)> = vec![
        (Method::POST, format!("/v2/{REPO}/blobs/uploads/")),
        (Method::POST, format!("/v2/{REPO}/blobs/uploads/?digest={b}")),
        (
            Method::POST,
            format!("/v2/{REPO}/blobs/uploads/?mount={b}&from=other/repo"),
        ),
        (
            Method::PATCH,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (
            Method::PUT,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585?digest={b}"),
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (
            Method::DELETE,
            format!("/v2/{REPO}/blobs/uploads/0c226f86-8d53-48f1-984e-8fa5a01b7585"),
        ),
        (Method::PUT, format!("/v2/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/{REPO}/manifests/{m}")),
        (Method::PUT, format!("/v2/{REPO}/manifests/sha256:totallywrong")),
        (Method::DELETE, format!("/v2/{REPO}/manifests/v1")),
        (Method::DELETE, format!("/v2/{REPO}/manifests/{m}")),
        (Method::DELETE, format!("/v2/{REPO}/blobs/{b}")),
        (Method::PUT, format!("/v2/{REPO}/blobs/{b}")),
        (Method::POST, format!("/v2/{REPO}/manifests/v1")),
        (Method::PATCH, format!("/v2/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/registry.test/{REPO}/manifests/v1")),
        (Method::PUT, format!("/v2/{REPO}/manifests/v1?ns={}", s.registry.host())),
        (Method::DELETE, format!("/v2/{REPO}/tags/list")),
        (Method::POST, format!("/v2/{REPO}/referrers/{m}")),
    ];
    for (method, path) in &cases {
        let what = format!("{method} {path}");
        let r = request(method.clone(), &proxy.url(path), &[("content-type", OCI_MANIFEST)]).await;
        assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", &what);
    }
    // The upstream still has everything.
    let r = request(
        Method::GET,
        &s.registry.url_for(&format!("/v2/{REPO}/manifests/v1")),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), s.oci.manifest.bytes);
    assert!(s.registry.has_blob(REPO, &s.oci.layers[0]).await);
}

/// Unknown routes and methods: always an OCI error JSON body, never plain
/// text (Docker fails on `404 page not found`).
#[tokio::test]
async fn unknown_routes_are_oci_json() {
    let (_s, proxy) = seeded_proxy().await;
    let d = unknown_digest();
    let cases: Vec<(Method, String, StatusCode, &str)> = vec![
        (Method::GET, "/".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, "/v1/_ping".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, "/v2x/".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (Method::GET, format!("/v2/{REPO}"), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (
            Method::GET,
            format!("/v2/{REPO}/unknown"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/manifests/"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/blobs/{d}/extra"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            format!("/v2/{REPO}/tags/list/extra"),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (Method::GET, "/v2/_catalog".into(), StatusCode::NOT_FOUND, "UNSUPPORTED"),
        (
            Method::GET,
            "/v2/_catalog?n=10".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::OPTIONS,
            format!("/v2/{REPO}/manifests/v1"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::TRACE,
            format!("/v2/{REPO}/blobs/{d}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::HEAD,
            format!("/v2/{REPO}/tags/list"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in &cases {
        let r = request(method.clone(), &proxy.url(path), &[]).await;
        let what = format!("{method} {path}");
        assert_error(&r, *status, code, &what);
        assert!(OCI_CODES.contains(code));
    }
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

/// The four routing shapes over the plain HTTP API: default upstream,
/// host in path (portless and host:port), alias, and `?ns=` (echoed as
/// `OCI-Namespace`). Every shape serves the same bytes.
#[tokio::test]
async fn routing_shapes() {
    let s = seed().await;
    s.registry.push_manifest(REPO, "v2", &s.docker.manifest).await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let host = s.registry.host();
    let encoded_host = host.replace(':', "%3A");
    // (label, name prefix, query, expected OCI-Namespace, client-visible name)
    let shapes: Vec<(&str, String, String, Option<String>, String)> = vec![
        ("default", format!("/v2/{REPO}"), String::new(), None, REPO.to_owned()),
        (
            "host in path",
            format!("/v2/registry.test/{REPO}"),
            String::new(),
            None,
            format!("registry.test/{REPO}"),
        ),
        (
            "host:port in path",
            format!("/v2/{host}/{REPO}"),
            String::new(),
            None,
            format!("{host}/{REPO}"),
        ),
        (
            "alias",
            format!("/v2/local/{REPO}"),
            String::new(),
            None,
            format!("local/{REPO}"),
        ),
        (
            "ns host:port",
            format!("/v2/{REPO}"),
            format!("ns={host}"),
            Some(host.clone()),
            REPO.to_owned(),
        ),
        (
            "ns encoded",
            format!("/v2/{REPO}"),
            format!("ns={encoded_host}"),
            Some(host.clone()),
            REPO.to_owned(),
        ),
        (
            "ns host",
            format!("/v2/{REPO}"),
            "ns=registry.test".into(),
            Some("registry.test".into()),
            REPO.to_owned(),
        ),
    ];
    let layer = &s.oci.layers[0];
    for (label, prefix, query, namespace, client_name) in &shapes {
        let with = |path: &str, extra: &str| {
            let q: Vec<&str> = [extra, query.as_str()].into_iter().filter(|x| !x.is_empty()).collect();
            if q.is_empty() {
                proxy.url(&format!("{prefix}{path}"))
            } else {
                proxy.url(&format!("{prefix}{path}?{}", q.join("&")))
            }
        };
        let check_ns = |r: &Resp, what: &str| {
            assert_eq!(
                r.header("oci-namespace"),
                namespace.as_deref(),
                "{label} {what}: OCI-Namespace"
            );
        };
        let r = request(Method::GET, &with("/manifests/v1", ""), &[("accept", OCI_MANIFEST)]).await;
        assert_manifest(&r, &s.oci.manifest, false, &format!("{label}: GET manifest by tag"));
        check_ns(&r, "manifest");
        let r = head(&with(&format!("/manifests/{}", s.index.digest), "")).await;
        assert_manifest(&r, &s.index, true, &format!("{label}: HEAD index by digest"));
        check_ns(&r, "index");
        let r = get(&with(&format!("/blobs/{}", layer.digest), "")).await;
        assert_blob(&r, &layer.digest, &layer.bytes, false, &format!("{label}: GET blob"));
        check_ns(&r, "blob");
        let r = get(&with("/tags/list", "")).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: tags");
        check_ns(&r, "tags");
        assert_eq!(
            r.json()["name"],
            json!(client_name),
            "{label}: tag list names the repository as the client does"
        );
        let mut all = tags_of(&r);
        assert!(
            all.contains(&"v1".to_owned()) && all.contains(&"v2".to_owned()),
            "{label}: {all:?}"
        );
        // Pagination keeps the shape (including `ns`).
        let r = get(&with("/tags/list", "n=1")).await;
        let next = next_link(&r).unwrap_or_else(|| panic!("{label}: Link header"));
        assert!(
            next.starts_with(&format!("/v2/{client_name}/tags/list?")),
            "{label}: {next}"
        );
        if let Some(ns) = namespace {
            assert!(
                next.contains(&format!("ns={}", ns.replace(':', "%3A"))),
                "{label}: Link keeps ns: {next}"
            );
        }
        let mut paged = tags_of(&r);
        let r = get(&proxy.url(&next)).await;
        check_ns(&r, "tags page 2");
        paged.extend(tags_of(&r));
        all.truncate(2);
        assert_eq!(paged, all, "{label}: second page");
        let r = get(&with(&format!("/referrers/{}", s.oci.manifest.digest), "")).await;
        assert_eq!(referrers_descriptors(&r, label).len(), 2, "{label}: referrers");
        check_ns(&r, "referrers");
        let r = get(&with(
            &format!("/referrers/{}", s.oci.manifest.digest),
            &format!("artifactType={}", SIG.replace('+', "%2B")),
        ))
        .await;
        assert_eq!(
            referrers_descriptors(&r, label),
            vec![with_artifact_type(&s.sig, SIG)],
            "{label}: filtered"
        );
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
        let r = get(&with("/manifests/nonexistent", "")).await;
        assert_error(
            &r,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("{label}: unknown tag"),
        );
    }
}

/// Hosts that are not allow-listed are refused with 403 `DENIED`, for every
/// endpoint and both the host-in-path and the `?ns=` shapes.
#[tokio::test]
async fn non_allow_listed_hosts_denied() {
    let s = seed().await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let d = &s.oci.layers[0].digest;
    let m = &s.oci.manifest.digest;
    let cases = [
        format!("/v2/evil.example/{REPO}/manifests/v1"),
        format!("/v2/evil.example/{REPO}/manifests/{m}"),
        format!("/v2/evil.example/{REPO}/blobs/{d}"),
        format!("/v2/evil.example/{REPO}/tags/list"),
        format!("/v2/evil.example/{REPO}/referrers/{m}"),
        format!("/v2/127.0.0.1:1/{REPO}/manifests/v1"),
        format!("/v2/localhost/{REPO}/manifests/v1"),
        format!("/v2/localhost:{}/{REPO}/manifests/v1", s.registry.port),
        "/v2/docker.io/library/alpine/manifests/latest".to_owned(),
        format!("/v2/{REPO}/manifests/v1?ns=evil.example"),
        format!("/v2/{REPO}/blobs/{d}?ns=evil.example"),
        format!("/v2/{REPO}/tags/list?ns=docker.io"),
        format!("/v2/{REPO}/referrers/{m}?ns=127.0.0.1:1"),
        format!("/v2/{REPO}/manifests/v1?ns=localhost:{}", s.registry.port),
    ];
    for path in &cases {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "DENIED", &format!("GET {path}"));
        if !path.contains("/tags/") && !path.contains("/referrers/") {
            let r = head(&proxy.url(path)).await;
            assert_error(&r, StatusCode::FORBIDDEN, "DENIED", &format!("HEAD {path}"));
        }
    }
    assert!(!proxy.has_blob(d));
}
