//! The two registries, the configuration naming both, running the built
//! binary, and assertions on what production holds.

pub use std::path::Path;
pub use std::process::Stdio;
pub use std::time::Duration;

pub use crate::support::admission::{
    image_blobs, policy_dir, policy_yaml, push_signed, skopeo_copies, skopeo_refused, small_image,
};
pub use crate::support::cosign::{
    IndexEntry, SigningKey, push_bundle_signature, push_legacy_attestation, push_legacy_signature, read_fallback_index,
};
pub use crate::support::distribution::Distribution;
pub use crate::support::images::{Blob, Image, oci_image, oci_image_for, oci_index};
pub use crate::support::proxy::TestProxy;
pub use portcullis::oci::Digest;

pub const LIMIT: Duration = Duration::from_secs(120);
pub const REPO: &str = "test/app";
pub const RULES: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// Staging and production registries, a config naming both, and a policy
/// that requires key `a`.
pub struct Setup {
    pub staging: Distribution,
    pub prod: Distribution,
    pub work: tempfile::TempDir,
    pub policies: tempfile::TempDir,
}

impl Setup {
    pub async fn start(a: &SigningKey) -> Setup {
        Setup::start_with(policy_dir(&[("a", a)], RULES)).await
    }

    pub async fn start_with(policies: tempfile::TempDir) -> Setup {
        let (staging, prod) = tokio::join!(Distribution::start(), Distribution::start());
        let work = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "dataDir: {}\nupstreams:\n  - host: staging.test\n    url: {}\n    insecurePlainHttp: true\n  - host: prod.test\n    url: {}\n    insecurePlainHttp: true\n",
            work.path().join("data").display(),
            staging.url(),
            prod.url()
        );
        std::fs::write(work.path().join("portcullis.yaml"), config).expect("config");
        Setup {
            staging,
            prod,
            work,
            policies,
        }
    }

    /// Run the built binary with the config and policies: (exit code, stdout, stderr).
    pub async fn portcullis(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.work.path().join("portcullis.yaml");
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        all.extend([
            std::ffi::OsStr::new("--config"),
            config.as_os_str(),
            std::ffi::OsStr::new("--policies"),
            self.policies.path().as_os_str(),
        ]);
        crate::support::binary::run(&all, Some(self.work.path()), LIMIT).await
    }

    /// `portcullis promote` as a child that the test may kill.
    pub fn spawn_promote(&self, src: &str, dst: &str, extra: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "promote",
                &format!("staging.test/{REPO}:{src}"),
                &format!("prod.test/{REPO}:{dst}"),
            ])
            .args(extra)
            .arg("--config")
            .arg(self.work.path().join("portcullis.yaml"))
            .arg("--policies")
            .arg(self.policies.path())
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run portcullis promote")
    }

    /// `portcullis promote staging.test/REPO:src prod.test/REPO:dst --json …`:
    /// (exit code, the JSON report).
    pub async fn promote(&self, src: &str, dst: &str, extra: &[&str]) -> (i32, serde_json::Value) {
        let src = format!("staging.test/{REPO}:{src}");
        let dst = format!("prod.test/{REPO}:{dst}");
        let mut args = vec!["promote", src.as_str(), dst.as_str(), "--json"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = self.portcullis(&args).await;
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
        (code, report)
    }
}

/// The digest `repo:reference` names on `registry`, if it exists (a
/// manifest `HEAD` through the registry API).
pub async fn manifest_digest(registry: &Distribution, reference: &str) -> Option<Digest> {
    let url = registry.url_for(&format!("/v2/{REPO}/manifests/{reference}"));
    let out = tokio::process::Command::new("curl")
        .args(["-sSI", "-H"])
        .arg(format!("Accept: {}", crate::support::admission::ACCEPT))
        .arg(&url)
        .output()
        .await
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    head.lines()
        .find_map(|l| {
            l.strip_prefix("Docker-Content-Digest: ")
                .or(l.strip_prefix("docker-content-digest: "))
        })
        .map(|d| d.trim().parse().expect("digest"))
}

/// The `.sig` manifest of `image` in `registry`, as JSON.
pub async fn sig_manifest(registry: &Distribution, image: &Image) -> serde_json::Value {
    let url = registry.url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(&image.manifest.digest)));
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    serde_json::from_slice(&out.stdout).expect("sig manifest")
}

/// The digests of the `.sig` manifest's layers (one per signature).
pub async fn sig_layers(registry: &Distribution, image: &Image) -> Vec<String> {
    let m = sig_manifest(registry, image).await;
    let layers = m["layers"].as_array().expect("layers");
    layers
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

/// The bytes of the `.sig` manifest's config and layers in `registry`.
pub async fn sig_blob_bytes(registry: &Distribution, image: &Image) -> u64 {
    let m = sig_manifest(registry, image).await;
    let layers = m["layers"].as_array().expect("layers");
    let sizes = layers.iter().chain(std::iter::once(&m["config"]));
    sizes.map(|d| d["size"].as_u64().expect("size")).sum()
}

pub fn sig_tag(d: &Digest) -> String {
    format!("{}.sig", d.tag_form())
}

pub fn copied(report: &serde_json::Value, field: &str) -> u64 {
    report["promotion"]["copied"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no copied.{field} in {report}"))
}

/// Every blob of `image` is (or is not) in production.
pub async fn assert_blobs(prod: &Distribution, image: &Image, present: bool) {
    for blob in image.blobs() {
        assert_eq!(prod.has_blob(REPO, blob).await, present, "blob {}", blob.digest);
    }
}

/// The data file of `blob` in Distribution's filesystem storage.
pub fn blob_file(registry: &Distribution, blob: &Blob) -> std::path::PathBuf {
    let hex = blob.digest.hex();
    registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data")
}

/// Wait until production holds `blob`: the copy has started.
pub async fn copy_started(prod: &Distribution, blob: &Blob) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !prod.has_blob(REPO, blob).await {
        assert!(std::time::Instant::now() < deadline, "the copy never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn flip_first_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).expect("read blob file");
    let mut bad = original.clone();
    bad[0] ^= 0xff;
    std::fs::write(path, bad).expect("write blob file");
    original
}

/// Large enough that the copy (256 KiB chunks) is still running when the
/// concurrent change lands.
pub const LARGE: usize = 32 * 1024 * 1024;
