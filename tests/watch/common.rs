//! The scenario shared by the watch tests: a Distribution upstream, a
//! policy with fresh keys, webhook receivers, and Portcullis watching
//! `test/app:stable` every 200ms.

use std::path::Path;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use http::{Method, StatusCode};
use portcullis::oci::Digest;
use serde_json::Value;

pub(crate) use crate::receiver::{Received, Receiver};
pub(crate) use crate::support::admission::{ACCEPT, policy_dir, push_signed, small_image};
pub(crate) use crate::support::client;
pub(crate) use crate::support::cosign::{SigningKey, push_legacy_signature, sig_tag};
pub(crate) use crate::support::distribution::Distribution;
pub(crate) use crate::support::images::Image;
pub(crate) use crate::support::proxy::TestProxy;

pub const REPO: &str = "test/app";
pub const TAG: &str = "stable";
/// Paths of the two sinks on the receiver.
pub const CLOUDEVENTS: &str = "/cloudevents";
pub const OCSF: &str = "/ocsf";
pub const SECRET: &str = "a watch secret, fresh per test run";
/// How long a test waits for something the watcher does every 200ms.
pub const WAIT: Duration = Duration::from_secs(60);

/// A signature by `key-a` required for `test/**`.
pub const APPS: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// The same, and the first admitted digest of a tag stays served.
pub const PINNED: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
    tags: { mutable: deny }
"#;

pub struct Scenario {
    pub registry: Distribution,
    pub receiver: Receiver,
    pub policy: tempfile::TempDir,
    pub secret_dir: tempfile::TempDir,
    pub proxy: TestProxy,
    /// The key the policy trusts (`key-a`) and one it knows but does not
    /// accept for `test/**` (`key-b`).
    pub a: SigningKey,
    pub b: SigningKey,
    /// The target's tag selection (`tags: [stable]` or `allTags: true`).
    pub selection: String,
}

impl Scenario {
    /// Upstream with `first` as `test/app:stable` signed by key a, receiver
    /// (answering 200), policy `rules` with keys a and b, and the proxy
    /// watching the tag (queue bound `queue_limit`).
    pub async fn start(rules: &str, queue_limit: usize, first: &Image) -> Scenario {
        Self::start_selecting(rules, queue_limit, first, &format!("tags: [{TAG}]")).await
    }

    /// [`Scenario::start`] watching the tags `selection` names.
    pub async fn start_selecting(rules: &str, queue_limit: usize, first: &Image, selection: &str) -> Scenario {
        let registry = Distribution::start().await;
        let receiver = Receiver::start().await;
        let (a, b) = (SigningKey::generate_p256(), SigningKey::generate_ed25519());
        push_signed(&registry, REPO, TAG, first, &[&a]).await;
        let policy = policy_dir(&[("a", &a), ("b", &b)], rules);
        let secret_dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(secret_dir.path().join("hook"), format!("{SECRET}\n")).expect("secret");
        let yaml = watch_yaml(&registry, &receiver, secret_dir.path(), queue_limit, selection);
        let proxy = TestProxy::with_policies_and_yaml(
            &registry.url(),
            policy.path(),
            tempfile::tempdir().expect("tempdir"),
            &yaml,
        )
        .await;
        Scenario {
            registry,
            receiver,
            policy,
            secret_dir,
            proxy,
            a,
            b,
            selection: selection.to_owned(),
        }
    }

    /// Stop the proxy and start another on the same data directory (queues
    /// and observations carry over), once the old one no longer listens.
    /// `prepare` is called with the data directory while no proxy runs on it.
    pub async fn restart_after(&mut self, prepare: impl FnOnce(&Path)) {
        let addr = self.proxy.addr;
        let placeholder = TestProxy::with_default_upstream(&self.registry.url()).await;
        let data_dir = std::mem::replace(&mut self.proxy, placeholder).stop();
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "old proxy still listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The watch task is aborted right after the listener closes; let an
        // in-flight queue write finish before another process opens it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        prepare(data_dir.path());
        let yaml = watch_yaml(
            &self.registry,
            &self.receiver,
            self.secret_dir.path(),
            2,
            &self.selection,
        );
        self.proxy = TestProxy::with_policies_and_yaml(&self.registry.url(), self.policy.path(), data_dir, &yaml).await;
    }

    /// Every stored observation of `test/app`, by tag.
    pub fn observations(&self) -> serde_json::Map<String, Value> {
        let path = self
            .proxy
            .data_dir
            .path()
            .join("watch/observations")
            .join(self.registry.host())
            .join(REPO)
            .join("_watch.json");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The watcher's stored observation of `test/app:stable`.
    pub fn observation(&self) -> Option<Value> {
        self.observations().get(TAG).cloned()
    }

    /// Wait until the watcher has recorded `digest` with `verdict` for the tag.
    pub async fn wait_observed(&self, digest: &Digest, verdict: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(o) = self.observation()
                && o["digest"] == digest.to_string()
                && o["verdict"] == verdict
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "watcher did not record {digest} as {verdict}; observation: {:?}",
                self.observation()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Watch records of the audit log, in order.
    pub fn watch_records(&self) -> Vec<Value> {
        self.proxy
            .audit_events()
            .into_iter()
            .filter(|e| e["record"] == "watch")
            .collect()
    }

    /// Wait until the audit log holds `n` watch records.
    pub async fn wait_records(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.watch_records();
            if r.len() >= n {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} watch records: {r:#?}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Push `image` as the watched tag, signed by `keys` (none: unsigned).
    pub async fn push(&self, image: &Image, keys: &[&SigningKey]) {
        push_signed_first(&self.registry, TAG, image, keys).await;
    }

    /// Delete a manifest upstream by digest (Distribution also drops the
    /// tags that point to it).
    pub async fn delete_manifest(&self, digest: &Digest) {
        let url = self.registry.url_for(&format!("/v2/{REPO}/manifests/{digest}"));
        let resp = client::request(Method::DELETE, &url, &[]).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "delete {digest}: {:?}", resp.body);
    }

    /// The digest of the legacy `.sig` object of `image`.
    pub async fn signature_digest(&self, image: &Digest) -> Digest {
        let url = self
            .registry
            .url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(image)));
        let resp = client::request(Method::HEAD, &url, &[("accept", ACCEPT)]).await;
        assert_eq!(resp.status, StatusCode::OK, "HEAD .sig");
        resp.header("docker-content-digest")
            .expect("digest header")
            .parse()
            .expect("digest")
    }
}

/// Push `image`'s signature by `keys` (if any), then the image as `tag`:
/// a watcher never sees the tag on the digest before its signature exists
/// (which it would rightly report as a denied move).
pub async fn push_signed_first(registry: &Distribution, tag: &str, image: &Image, keys: &[&SigningKey]) {
    if !keys.is_empty() {
        push_legacy_signature(registry, REPO, &image.manifest, keys).await;
    }
    registry.push_image(REPO, tag, image).await;
}

/// The `watch:` section: both sinks on `receiver`, the CloudEvents one
/// signed with the secret in `secret_dir/hook`.
pub fn watch_yaml(
    registry: &Distribution,
    receiver: &Receiver,
    secret_dir: &Path,
    queue_limit: usize,
    selection: &str,
) -> String {
    format!(
        r#"watch:
  interval: 200ms
  reverify: 0s
  queueLimit: {queue_limit}
  targets:
    - {{ registry: "{host}", repository: {REPO}, {selection} }}
  sinks:
    - webhook: {{ name: soc, url: "{ce}", secretFile: "{secret}", format: cloudevents }}
    - webhook: {{ name: siem, url: "{ocsf}", format: ocsf }}
"#,
        host = registry.host(),
        ce = receiver.url(CLOUDEVENTS),
        ocsf = receiver.url(OCSF),
        secret = secret_dir.join("hook").display(),
    )
}

/// Whether `header` is `sha256=<hex HMAC-SHA256(secret, body)>`, checked
/// with the MAC's constant-time comparison.
pub fn hmac_verifies(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(tag) = decode_hex(hex) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every CloudEvents 1.0 required attribute, and the ones this sender
/// promises (`subject`, `time`, `datacontenttype`), with their types; the
/// event's `data`.
pub fn assert_cloudevent(r: &Received) -> Value {
    assert_eq!(
        r.header("content-type"),
        Some("application/cloudevents+json; charset=UTF-8")
    );
    assert!(
        hmac_verifies(SECRET, &r.body, r.header("x-portcullis-signature-256")),
        "HMAC"
    );
    let ce = r.json();
    assert_eq!(ce["specversion"], "1.0");
    for attr in ["id", "source", "type", "subject", "time", "datacontenttype"] {
        let v = ce[attr]
            .as_str()
            .unwrap_or_else(|| panic!("{attr} missing or not a string: {ce}"));
        assert!(!v.is_empty(), "{attr} empty");
    }
    assert!(
        ce["type"].as_str().is_some_and(|t| t.starts_with("dev.portcullis.")),
        "{ce}"
    );
    assert!(
        ce["time"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "time is RFC 3339: {ce}"
    );
    assert_eq!(ce["datacontenttype"], "application/json");
    let data = &ce["data"];
    let subject = format!(
        "{}/{}:{}",
        data["registry"].as_str().unwrap_or(""),
        data["repository"].as_str().unwrap_or(""),
        data["tag"].as_str().unwrap_or("")
    );
    assert_eq!(ce["subject"], subject);
    assert_eq!(ce["id"], ce["data"]["id"]);
    assert_eq!(
        ce["type"],
        format!("dev.portcullis.{}", ce["data"]["event"].as_str().unwrap_or(""))
    );
    ce["data"].clone()
}

/// The attributes OCSF 1.8.0 requires of a Detection Finding (class 2004).
pub fn assert_ocsf(r: &Received) -> Value {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-portcullis-signature-256"),
        None,
        "the OCSF sink has no secret"
    );
    let f = r.json();
    assert_eq!(f["class_uid"], 2004);
    assert_eq!(f["category_uid"], 2);
    assert_eq!(f["activity_id"], 1);
    assert_eq!(f["type_uid"], 200401);
    assert!(f["severity_id"].as_u64().is_some_and(|s| (1..=6).contains(&s)), "{f}");
    assert!(
        f["time"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
        "time in ms: {f}"
    );
    assert_eq!(f["metadata"]["version"], "1.8.0");
    assert_eq!(f["metadata"]["product"]["name"], "Portcullis");
    assert!(f["finding_info"]["uid"].as_str().is_some_and(|u| !u.is_empty()), "{f}");
    assert_eq!(f["finding_info"]["uid"], f["unmapped"]["id"]);
    f["unmapped"].clone()
}
