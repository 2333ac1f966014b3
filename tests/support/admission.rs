//! Admission helpers shared by the suites that run Portcullis under a
//! signature policy: policy directories with fresh keys, seeding signed
//! images, manifest/blob requests with their admission assertions, and
//! pulling through the proxy with skopeo.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use portcullis::oci::Digest;

pub use super::client::Resp;

use super::client;
use super::cosign::{SigningKey, push_legacy_signature};
use super::distribution::Distribution;
use super::images::{Blob, Image, oci_image, read_dir_copy};
use super::proxy::TestProxy;
use super::skopeo_copy_exact;

/// Time limit for one client command.
pub const LIMIT: Duration = Duration::from_secs(60);
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";

// ------------------------------------------------------------- policies

/// A policy document: key `<name>` from `<name>.pub` and authority
/// `key-<name>` (transparency log ignored) for each key, then `rules`.
pub fn policy_yaml(names: &[&str], rules: &str) -> String {
    let mut y = String::from("apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nkeys:\n");
    for n in names {
        y.push_str(&format!("  {n}: {{ path: {n}.pub }}\n"));
    }
    y.push_str("authorities:\n");
    for n in names {
        y.push_str(&format!("  key-{n}: {{ key: {{ keys: [{n}] }}, tlog: ignore }}\n"));
    }
    y.push_str(rules.trim_start_matches('\n'));
    y
}

/// Write the keys' public PEMs and `policy.yaml` into `dir`.
pub fn write_policy(dir: &Path, keys: &[(&str, &SigningKey)], rules: &str) {
    for (n, k) in keys {
        k.write_public_pem(&dir.join(format!("{n}.pub")));
    }
    let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    std::fs::write(dir.join("policy.yaml"), policy_yaml(&names, rules)).expect("write policy");
}

pub fn policy_dir(keys: &[(&str, &SigningKey)], rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_policy(dir.path(), keys, rules);
    dir
}

/// The revision the proxy must report for the policies in `dir`.
pub fn revision(dir: &Path) -> String {
    let p = portcullis::policy::load_dir(dir).expect("valid policy");
    assert!(p.warnings.is_empty(), "unexpected policy warnings: {:?}", p.warnings);
    p.revision
}

// ------------------------------------------------------------- seeding

pub fn small_image(seed: u64) -> Image {
    oci_image(&[2000, 300], seed)
}

/// Push `image` as `repo:tag` with a legacy `.sig` holding one layer per key.
pub async fn push_signed(registry: &Distribution, repo: &str, tag: &str, image: &Image, keys: &[&SigningKey]) {
    registry.push_image(repo, tag, image).await;
    push_legacy_signature(registry, repo, &image.manifest, keys).await;
}

// ------------------------------------------------------------- HTTP

pub async fn get_manifest(proxy: &TestProxy, repo: &str, reference: &str) -> Resp {
    let url = proxy.url(&format!("/v2/{repo}/manifests/{reference}"));
    client::request(Method::GET, &url, &[("accept", ACCEPT)]).await
}

pub async fn get_blob(proxy: &TestProxy, repo: &str, digest: &Digest) -> Resp {
    client::get(&proxy.url(&format!("/v2/{repo}/blobs/{digest}"))).await
}

/// 200 with exactly `manifest`'s bytes and digest.
pub fn assert_manifest(resp: &Resp, manifest: &Blob, what: &str) {
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(&resp.bytes())
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(manifest.digest.to_string().as_str()),
        "{what}"
    );
    assert_eq!(resp.bytes(), manifest.bytes, "{what}: bytes");
}

/// 200 with exactly `blob`'s bytes.
pub fn assert_blob(resp: &Resp, blob: &Blob, what: &str) {
    assert_eq!(resp.status, StatusCode::OK, "{what}");
    assert_eq!(resp.bytes(), blob.bytes, "{what}: bytes");
}

/// 403 `DENIED` naming `rule` and each of `reasons`; returns the message.
pub fn assert_denied(resp: &Resp, rule: &str, reasons: &[&str]) -> String {
    assert_eq!(
        resp.status,
        StatusCode::FORBIDDEN,
        "expected a denial, got {}: {:?}",
        resp.status,
        resp.body
    );
    assert_eq!(resp.error_code(), "DENIED");
    let message = resp.error_message();
    assert!(
        message.starts_with(&format!("denied by policy (rule `{rule}`, revision ")),
        "message does not name rule `{rule}`: {message}"
    );
    for r in reasons {
        assert!(message.contains(r), "message lacks `{r}`: {message}");
    }
    message
}

/// 403 `DENIED` for a blob no admitted manifest of the repository references.
pub fn assert_blob_denied(resp: &Resp, digest: &Digest) {
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "blob {digest}: {:?}", resp.body);
    assert_eq!(resp.error_code(), "DENIED");
    let message = resp.error_message();
    assert_eq!(
        message,
        format!("blob {digest} is not referenced by an admitted manifest of this repository (pull the manifest first)")
    );
}

/// Poll `GET repo:reference` until it answers `status` (a policy reload is
/// picked up within a poll of the directory, every 2 s); panics after
/// `within`.
pub async fn wait_for_status(
    proxy: &TestProxy,
    repo: &str,
    reference: &str,
    status: StatusCode,
    within: Duration,
) -> Resp {
    let deadline = std::time::Instant::now() + within;
    loop {
        let resp = get_manifest(proxy, repo, reference).await;
        if resp.status == status {
            return resp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{repo}:{reference} still {} after {within:?}: {:?}",
            resp.status,
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------- skopeo

/// `skopeo copy --all` of `reference` (`repo:tag` or `repo@digest`) through
/// the proxy into a `dir:` copy at `dest`.
pub async fn skopeo_copy(proxy: &TestProxy, reference: &str, dest: &Path) -> Result<String, String> {
    let src = format!("docker://{}/{reference}", proxy.addr);
    skopeo_copy_exact(&src, &format!("dir:{}", dest.display()), LIMIT).await
}

/// skopeo must fail because the proxy denied the pull.
pub async fn skopeo_refused(proxy: &TestProxy, reference: &str) -> String {
    let work = tempfile::tempdir().expect("tempdir");
    match skopeo_copy(proxy, reference, &work.path().join("copy")).await {
        Ok(out) => panic!("skopeo copied {reference} although the policy denies it:\n{out}"),
        Err(e) => {
            assert!(
                e.contains("denied by policy"),
                "skopeo failed for another reason than the denial:\n{e}"
            );
            e
        }
    }
}

/// skopeo copies `reference` completely: the copy holds exactly `top` and
/// `expected` (all digests equal to the upstream's).
pub async fn skopeo_copies(proxy: &TestProxy, reference: &str, top: &Digest, expected: &[&Digest]) {
    if let Err(e) = skopeo_copy_checked(proxy, reference, top, expected).await {
        panic!("{e}");
    }
}

/// [`skopeo_copies`] as a result: `Err` with skopeo's report, or with what
/// the copy holds when it is not exactly `top` and `expected`.
pub async fn skopeo_copy_checked(
    proxy: &TestProxy,
    reference: &str,
    top: &Digest,
    expected: &[&Digest],
) -> Result<(), String> {
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("copy");
    skopeo_copy(proxy, reference, &dest).await?;
    let (got_top, got) = read_dir_copy(&dest);
    if &got_top != top {
        return Err(format!(
            "{reference}: the copy's manifest {got_top} is not the upstream's {top}"
        ));
    }
    let mut want: BTreeSet<Digest> = expected.iter().map(|d| (*d).clone()).collect();
    want.insert(top.clone());
    if got != want {
        return Err(format!("{reference}: copied {got:?}, expected {want:?}"));
    }
    Ok(())
}

/// Everything a pull of `image` copies, besides its manifest.
pub fn image_blobs(image: &Image) -> Vec<&Digest> {
    image.blobs().into_iter().map(|b| &b.digest).collect()
}
