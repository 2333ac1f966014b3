//! What every attack needs: documents written as JSON text (duplicate keys,
//! key case and order are the point, so nothing here serialises a struct),
//! a real Distribution upstream with an enforcing policy and a fresh key,
//! Portcullis in front, and the victims (skopeo, ctr) with their outcomes
//! collected as findings so one run reports every way an attack still works.

pub(crate) use crate::support::admission::*;
pub(crate) use crate::support::client::{self, Resp};
pub(crate) use crate::support::containerd::Containerd;
pub(crate) use crate::support::cosign::*;
pub(crate) use crate::support::distribution::Distribution;
pub(crate) use crate::support::fake::FakeRegistry;
pub(crate) use crate::support::images::*;
pub(crate) use crate::support::proxy::TestProxy;
pub(crate) use http::{Method, StatusCode};
pub(crate) use portcullis::oci::Digest;
pub(crate) use std::path::Path;
pub(crate) use std::time::Duration;

pub const REPO: &str = "test/app";

/// One enforcing rule: everything under `test/` needs a signature by `key-a`.
pub const ENFORCE: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// How the Go clients report a refusal (their own wording; a bare status
/// number could match a digest's hex in their output).
/// 502: skopeo "received unexpected HTTP status: 502 Bad Gateway", ctr
/// "failed with status code [manifests …]: 502 Bad Gateway".
pub const BAD_GATEWAY: &[&str] = &["502 Bad Gateway"];
/// 403: skopeo "denied: denied by policy …" for a manifest, "invalid status
/// code from registry 403 (Forbidden)" for a blob; ctr "403 Forbidden".
pub const FORBIDDEN: &[&str] = &["denied by policy", "403 (Forbidden)", "403 Forbidden"];
/// 404 for a manifest: skopeo "manifest unknown", ctr "404 Not Found".
pub const UNKNOWN: &[&str] = &["manifest unknown", "404 Not Found"];

// ------------------------------------------------------------- documents

/// A descriptor as JSON text: `mediaType` (as given, whatever the blob's
/// own type), `digest`, `size` of `blob`.
pub fn desc(media_type: &str, blob: &Blob) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        blob.digest,
        blob.bytes.len()
    )
}

/// A descriptor of `blob` with its own media type.
pub fn desc_of(blob: &Blob) -> String {
    desc(&blob.media_type, blob)
}

/// A JSON array of the given elements.
pub fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

/// A document with exactly the bytes of `text`, pushed and served as
/// `media_type`. `text` must be JSON syntax (duplicate keys are syntax).
pub fn doc(media_type: &str, text: String) -> Blob {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        panic!("test document is not JSON ({e}): {text}");
    }
    Blob::new(media_type, text.into_bytes())
}

/// The unsigned, runnable payload an attacker wants run: two tar+gzip
/// layers (a script and some data) for this machine, all blobs distinct
/// per `seed`.
pub fn payload(seed: u64) -> Image {
    let data = random_bytes(3000, seed);
    let script = format!("#!/bin/sh\necho owned by {seed}\n");
    runnable_image(
        &[
            &[("evil.sh", script.as_bytes())],
            &[("data.bin", &data[..]), ("seed", seed.to_string().as_bytes())],
        ],
        seed,
    )
}

/// A signed image's content: one real tar+gzip layer for this machine.
pub fn benign(seed: u64) -> Image {
    let data = random_bytes(2000, seed);
    runnable_image(&[&[("hello.txt", b"hello\n"), ("data.bin", &data[..])]], seed)
}

// ------------------------------------------------------------- scene

/// A real Distribution upstream, a policy with one fresh key (`a`,
/// authority `key-a`) and Portcullis in front of it.
pub struct Scene {
    pub registry: Distribution,
    pub key: SigningKey,
    pub policies: tempfile::TempDir,
    pub proxy: TestProxy,
}

impl Scene {
    pub async fn start(rules: &str) -> Scene {
        let registry = Distribution::start().await;
        let key = SigningKey::generate_p256();
        let policies = policy_dir(&[("a", &key)], rules);
        let proxy = TestProxy::with_policies(&registry.url(), policies.path()).await;
        Scene {
            registry,
            key,
            policies,
            proxy,
        }
    }

    /// Push `image` as `repo:tag` with a legacy `.sig` by the scene's key.
    pub async fn signed(&self, repo: &str, tag: &str, image: &Image) {
        push_signed(&self.registry, repo, tag, image, &[&self.key]).await;
    }

    /// Push the blobs of `image` (not its manifest).
    pub async fn blobs(&self, repo: &str, image: &Image) {
        for b in image.blobs() {
            self.registry.push_blob(repo, b).await;
        }
    }

    /// Push a hand-written document by digest and, if given, under `tag`.
    pub async fn push_doc(&self, repo: &str, tag: Option<&str>, m: &Blob) {
        self.registry.push_manifest(repo, &m.digest.to_string(), m).await;
        if let Some(tag) = tag {
            self.registry.push_manifest(repo, tag, m).await;
        }
    }
}

/// `ctr images pull --plain-http --snapshotter native <proxy>/<reference>`:
/// containerd fetches, verifies and unpacks every layer.
pub async fn ctr_pull(c: &Containerd, proxy: &TestProxy, reference: &str) -> Result<String, String> {
    let image = format!("{}/{reference}", proxy.addr);
    c.ctr(&["images", "pull", "--plain-http", "--snapshotter", "native", &image])
        .await
}

/// `ctr content fetch --plain-http <proxy>/<reference>`: containerd fetches
/// and verifies every blob the manifest names (no unpacking).
pub async fn ctr_fetch(c: &Containerd, proxy: &TestProxy, reference: &str) -> Result<String, String> {
    let image = format!("{}/{reference}", proxy.addr);
    c.ctr(&["content", "fetch", "--plain-http", &image]).await
}

/// Every file under `dir` whose name contains `hex`.
pub fn files_named(dir: &Path, hex: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_named(&path, hex));
        } else if e.file_name().to_string_lossy().contains(hex) {
            out.push(path);
        }
    }
    out
}

// ------------------------------------------------------------- findings

/// Expectations checked one after another; every unmet one is recorded and
/// the test fails at the end with all of them (so a run against code that
/// still has the side door says everything the attack achieved).
#[derive(Default)]
pub struct Findings {
    test: &'static str,
    failed: Vec<String>,
}

impl Findings {
    pub fn new(test: &'static str) -> Findings {
        Findings {
            test,
            failed: Vec::new(),
        }
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            let what = what.into();
            eprintln!("[{}] FINDING: {what}", self.test);
            self.failed.push(what);
        }
        ok
    }

    fn summary(resp: &Resp) -> String {
        match &resp.body {
            Ok(b) => format!("{} {}", resp.status, String::from_utf8_lossy(&b[..b.len().min(300)])),
            Err(e) => format!("{} (body broke: {e})", resp.status),
        }
    }

    fn error_message(resp: &Resp) -> Option<(String, String)> {
        let body = resp.body.as_ref().ok()?;
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let e = &v["errors"][0];
        Some((e["code"].as_str()?.to_owned(), e["message"].as_str()?.to_owned()))
    }

    /// 502 with OCI error JSON whose message says `ambiguous`.
    pub fn ambiguous(&mut self, resp: &Resp, what: &str) {
        let ok = resp.status == StatusCode::BAD_GATEWAY
            && Self::error_message(resp).is_some_and(|(_, m)| m.to_lowercase().contains("ambiguous"));
        self.check(
            ok,
            format!("{what}: expected 502 naming `ambiguous`, got {}", Self::summary(resp)),
        );
    }

    /// 502 with OCI error JSON (any reason).
    pub fn bad_gateway(&mut self, resp: &Resp, what: &str) {
        let ok = resp.status == StatusCode::BAD_GATEWAY && Self::error_message(resp).is_some();
        self.check(ok, format!("{what}: expected 502, got {}", Self::summary(resp)));
    }

    /// 403 `DENIED`.
    pub fn denied(&mut self, resp: &Resp, what: &str) {
        let ok = resp.status == StatusCode::FORBIDDEN && Self::error_message(resp).is_some_and(|(c, _)| c == "DENIED");
        self.check(ok, format!("{what}: expected 403 DENIED, got {}", Self::summary(resp)));
    }

    /// Exactly `status`, and when `code` is given, that OCI error code.
    pub fn status(&mut self, resp: &Resp, status: StatusCode, code: Option<&str>, what: &str) {
        let ok =
            resp.status == status && code.is_none_or(|c| Self::error_message(resp).is_some_and(|(got, _)| got == c));
        let want = code.map_or(status.to_string(), |c| format!("{status} {c}"));
        self.check(ok, format!("{what}: expected {want}, got {}", Self::summary(resp)));
    }

    /// One of `statuses`.
    pub fn status_in(&mut self, resp: &Resp, statuses: &[StatusCode], what: &str) {
        self.check(
            statuses.contains(&resp.status),
            format!("{what}: expected one of {statuses:?}, got {}", Self::summary(resp)),
        );
    }

    /// 200 with exactly `blob`'s bytes.
    pub fn serves(&mut self, resp: &Resp, blob: &Blob, what: &str) {
        let ok = resp.status == StatusCode::OK && resp.body.as_ref().is_ok_and(|b| *b == blob.bytes);
        self.check(
            ok,
            format!("{what}: expected 200 with its exact bytes, got {}", Self::summary(resp)),
        );
    }

    /// A client command that must fail, with one of `needles` in its output
    /// (the refusal, not some other failure).
    pub fn client_fails(&mut self, result: Result<String, String>, needles: &[&str], what: &str) {
        match result {
            Ok(out) => {
                self.check(false, format!("{what}: succeeded (the attack works): {}", out.trim()));
            }
            Err(e) => {
                let found = needles.iter().any(|n| e.contains(n));
                self.check(found, format!("{what}: failed, but not with any of {needles:?}:\n{e}"));
            }
        }
    }

    /// A client command that must succeed.
    pub fn client_succeeds(&mut self, result: Result<String, String>, what: &str) -> bool {
        match result {
            Ok(_) => true,
            Err(e) => self.check(false, format!("{what}: failed:\n{e}")),
        }
    }

    /// skopeo copies `reference` through the proxy: must fail with one of
    /// `needles`.
    pub async fn skopeo_fails(&mut self, proxy: &TestProxy, reference: &str, needles: &[&str]) {
        let work = tempfile::tempdir().expect("tempdir");
        let r = skopeo_copy(proxy, reference, &work.path().join("copy")).await;
        self.client_fails(r, needles, &format!("skopeo copy {reference}"));
    }

    /// skopeo copies `reference` completely: the copy holds exactly `top`
    /// and `expected`.
    pub async fn skopeo_copies(&mut self, proxy: &TestProxy, reference: &str, top: &Digest, expected: &[&Digest]) {
        let r = skopeo_copy_checked(proxy, reference, top, expected).await;
        self.client_succeeds(
            r.map(|()| String::new()),
            &format!("skopeo copy {reference} (must succeed)"),
        );
    }

    /// Nothing named by `digest` anywhere in the proxy's data directory.
    pub fn nothing_stored(&mut self, proxy: &TestProxy, digest: &Digest, what: &str) {
        let found = files_named(proxy.data_dir.path(), &digest.hex());
        self.check(found.is_empty(), format!("{what}: stored as {found:?}"));
    }

    /// Fail the test with every unmet expectation.
    pub fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{}: {} unmet expectation(s):\n- {}",
            self.test,
            self.failed.len(),
            self.failed.join("\n- ")
        );
    }
}
