//! Helpers shared by this suite's modules.

pub(crate) use crate::support::client::{Resp, get, head, request};
pub(crate) use crate::support::distribution::Distribution;
pub(crate) use crate::support::images::*;
pub(crate) use crate::support::proxy::TestProxy;
pub(crate) use http::{Method, StatusCode};
pub(crate) use portcullis::oci::{Algorithm, Digest};
pub(crate) use serde_json::{Value, json};

pub const REPO: &str = "conformance/app";
pub const SIG: &str = "application/vnd.example.signature.v1+json";
pub const SBOM: &str = "application/vnd.example.sbom.v1+json";
/// containerd's resolve `Accept` list.
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
/// Error codes the distribution-spec defines (plus `UNKNOWN` for 5xx).
pub const OCI_CODES: &[&str] = &[
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
pub struct Seeded {
    pub registry: Distribution,
    /// OCI image, tag `v1`; its second layer is large enough for ranges.
    pub oci: Image,
    /// Docker schema 2 image, tag `docker`.
    pub docker: Image,
    /// OCI index over two platforms, tag `multi`.
    pub index: Blob,
    pub index_children: Vec<Image>,
    /// Docker manifest list over two platforms, tag `list`.
    pub list: Blob,
    pub list_children: Vec<Image>,
    /// Two referrers of `oci.manifest` (signature, SBOM).
    pub sig: Blob,
    pub sbom: Blob,
}

pub async fn seed() -> Seeded {
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

pub async fn seeded_proxy() -> (Seeded, TestProxy) {
    let s = seed().await;
    let proxy = TestProxy::with_default_upstream(&s.registry.url()).await;
    (s, proxy)
}

pub fn assert_api_version(r: &Resp, what: &str) {
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}: API version header"
    );
}

/// An OCI error response: exact status, JSON content type, the spec's body
/// shape and exact code. HEAD responses must have an empty body.
pub fn assert_error(r: &Resp, status: StatusCode, code: &str, what: &str) {
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
pub fn assert_manifest(r: &Resp, m: &Blob, is_head: bool, what: &str) {
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
pub fn assert_blob(r: &Resp, digest: &Digest, bytes: &[u8], is_head: bool, what: &str) {
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
pub async fn wait_cached(proxy: &TestProxy, digest: &Digest) {
    assert!(
        proxy.stores_blob(digest).await,
        "blob {digest} was not stored within 15 s"
    );
}

pub fn unknown_digest() -> Digest {
    Digest::of(Algorithm::Sha256, b"nothing has this content")
}

/// The tags a tag-listing test pushes, deliberately out of order and mixing
/// digits, upper case, `_` and `.` (lexical = byte order).
pub const TAGS: &[&str] = &[
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

pub async fn seed_tags(registry: &Distribution, repo: &str) -> Vec<String> {
    let img = oci_image(&[16], 99);
    registry.push_image(repo, TAGS[0], &img).await;
    for tag in &TAGS[1..] {
        registry.push_manifest(repo, tag, &img.manifest).await;
    }
    let mut sorted: Vec<String> = TAGS.iter().map(|t| (*t).to_owned()).collect();
    sorted.sort();
    sorted
}

pub fn tags_of(r: &Resp) -> Vec<String> {
    serde_json::from_value(r.json()["tags"].clone()).expect("tags array")
}

/// The path of a `Link: <path>; rel="next"` header.
pub fn next_link(r: &Resp) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "Link header shape: {link}");
    let start = link.find('<').expect("<") + 1;
    let end = link.find('>').expect(">");
    Some(link[start..end].to_owned())
}

pub fn referrers_descriptors(r: &Resp, what: &str) -> Vec<Value> {
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

pub fn with_artifact_type(m: &Blob, artifact_type: &str) -> Value {
    let mut d = m.descriptor();
    d["artifactType"] = json!(artifact_type);
    d
}
