//! The fixture: an upstream with public and private repositories, the
//! credentials files, certificates, and the log captured from the process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;

use crate::support::distribution::Distribution;
use crate::support::images::{Image, OCI_LAYER, image_from, oci_image, random_bytes, tar};
use crate::support::proxy::TestProxy;

pub const ALICE: (&str, &str) = ("alice", "alice-Pa55-w0rd-7d1f3e");
pub const BOB: (&str, &str) = ("bob", "bob-S3cret-9c2e41aa");
pub const ROBOT: (&str, &str) = ("ci-robot", "robot-token-5b8f6a2e91c04d7f");
/// Every secret of the fixture: none may appear in any log.
pub const SECRETS: [&str; 3] = [ALICE.1, BOB.1, ROBOT.1];

// ------------------------------------------------------------- logs

/// Everything the process logs (all tests of this binary), at debug level;
/// kept in memory only (the assertions print what they need).
static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

#[derive(Clone, Copy)]
struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(Ok(mut log)) = LOG.get().map(Mutex::lock) {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber (once per process).
pub fn capture_logs() {
    if LOG.set(Mutex::new(Vec::new())).is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    }
}

pub fn captured_log() -> String {
    LOG.get()
        .and_then(|l| l.lock().ok().map(|v| String::from_utf8_lossy(&v).into_owned()))
        .unwrap_or_default()
}

/// No secret (nor its Basic encoding) in the process log or `extra` text.
pub fn assert_no_secrets(extra: &[&str], more_secrets: &[&str]) {
    let log = captured_log();
    assert!(!log.is_empty(), "the log capture is not working");
    for secret in SECRETS.iter().chain(more_secrets) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x:{secret}"));
        for text in std::iter::once(log.as_str()).chain(extra.iter().copied()) {
            assert!(!text.contains(secret), "a secret appears in the logs");
            assert!(!text.contains(&basic[4..]), "a Basic credential appears in the logs");
        }
    }
}

// ------------------------------------------------------------- upstream

pub struct Upstream {
    pub registry: Distribution,
    /// `apps/web:v1`: allowed to group `ci` and node certificates.
    pub web: Image,
    /// `apps/rootfs:v1`: real tar layers, for podman and containerd.
    pub rootfs: Image,
    /// `private/db:v1`: no rule names it for alice.
    pub private: Image,
    /// `bob/tool:v1`: allowed to bob only.
    pub bobs: Image,
}

pub async fn upstream() -> Upstream {
    capture_logs();
    let registry = Distribution::start().await;
    let web = oci_image(&[3000, 500], 31);
    let private = oci_image(&[2000], 32);
    let bobs = oci_image(&[1000], 33);
    let rootfs = rootfs_image();
    registry.push_image("apps/web", "v1", &web).await;
    registry.push_image("apps/rootfs", "v1", &rootfs).await;
    registry.push_image("private/db", "v1", &private).await;
    registry.push_image("bob/tool", "v1", &bobs).await;
    Upstream {
        registry,
        web,
        rootfs,
        private,
        bobs,
    }
}

fn rootfs_image() -> Image {
    let layers = vec![crate::support::images::Blob::new(
        OCI_LAYER,
        tar(&[
            ("hello.txt", b"hello through auth\n"),
            ("data.bin", &random_bytes(50_000, 34)),
        ]),
    )];
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = serde_json::json!({
        "architecture": crate::support::images::host_arch(), "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": { "Cmd": ["/hello.txt"] }
    });
    image_from(&config, layers)
}

// ------------------------------------------------------------- files

/// `user:$2y$…` (the prefix Apache's `htpasswd -B` writes).
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    format!("{user}:$2y${}", &hash[4..])
}

/// The credentials and key files in `dir`.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Files { dir };
        f.write(
            "htpasswd",
            &format!(
                "# test users\n{}\n{}\n",
                htpasswd_line(ALICE.0, ALICE.1),
                htpasswd_line(BOB.0, BOB.1)
            ),
        );
        f.write("groups", "ci: alice ci-robot\n");
        f.write("tokens", &format!("# robots\n{} {}\n", ROBOT.0, ROBOT.1));
        f.write("token.key", "0123456789abcdef0123456789abcdef-shared-test-key\n");
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write fixture file");
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.path("audit.jsonl")).unwrap_or_default()
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit_log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `auth:` section (and the audit log), with `extra` lines inside
    /// `auth:` and `rules_extra` appended to its rules.
    pub fn config(&self, registry: &Distribution, extra: &str, rules_extra: &str) -> String {
        format!(
            "{routing}auditLog: {audit}\nauth:\n  htpasswd: {htpasswd}\n  groupsFile: {groups}\n  tokens: {tokens}\n  tokenKey: {key}\n{extra}  rules:\n    - identities: [\"group:ci\", \"cert:CN=node-*\"]\n      match: {{ repositories: [\"apps/**\"] }}\n    - identities: [bob]\n      match: {{ registry: registry.test, repositories: [\"bob/**\"] }}\n{rules_extra}",
            routing = Distribution::routing_config(registry),
            audit = self.path("audit.jsonl").display(),
            htpasswd = self.path("htpasswd").display(),
            groups = self.path("groups").display(),
            tokens = self.path("tokens").display(),
            key = self.path("token.key").display(),
        )
    }
}

pub async fn proxy(yaml: &str) -> TestProxy {
    TestProxy::start(yaml).await
}

// ------------------------------------------------------------- HTTP

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub const ACCEPT_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// `GET` a manifest with an optional `Authorization`.
pub async fn get_manifest(proxy: &TestProxy, name: &str, authorization: Option<&str>) -> crate::support::client::Resp {
    let url = proxy.url(&format!("/v2/{name}/manifests/v1"));
    let mut headers = vec![("accept", ACCEPT_OCI)];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    crate::support::client::request(http::Method::GET, &url, &headers).await
}

/// A token from `/token` for `scopes`, with Basic credentials.
pub async fn token(proxy: &TestProxy, creds: (&str, &str), scopes: &[&str]) -> (String, serde_json::Value) {
    let mut url = proxy.url("/token?service=portcullis");
    for s in scopes {
        url.push_str(&format!("&scope=repository:{s}:pull"));
    }
    let auth = basic(creds.0, creds.1);
    let r = crate::support::client::request(http::Method::GET, &url, &[("authorization", &auth)]).await;
    assert_eq!(r.status.as_u16(), 200, "token: {:?}", r.body);
    let body = r.json();
    let t = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["access_token"].as_str(), Some(t.as_str()));
    assert!(body["expires_in"].as_u64().is_some_and(|n| n > 0), "{body}");
    assert!(body["issued_at"].as_str().is_some(), "{body}");
    (t, claims_of(body["token"].as_str().unwrap_or_default()))
}

/// The (unverified) claims of a JWT, to look at.
pub fn claims_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

pub use crate::support::tls::{Ca, write_pair};

/// Run a command with extra environment variables; stdout, or the report.
pub async fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let path = crate::support::require_tool(program);
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| format!("`{shown}` timed out"))?
        .map_err(|e| format!("`{shown}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{shown}` failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        ))
    }
}
