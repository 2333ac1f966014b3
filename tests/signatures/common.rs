//! Helpers shared by the signature suites: policies, seeding, HTTP and
//! audit assertions, skopeo, and the upstream + policy + proxy scenario.

pub(crate) use crate::support::admission::*;
pub(crate) use crate::support::client;
pub(crate) use crate::support::cosign::*;
pub(crate) use crate::support::distribution::Distribution;
pub(crate) use crate::support::fake::{FakeRegistry, Fault};
pub(crate) use crate::support::images::*;
pub(crate) use crate::support::proxy::TestProxy;
pub(crate) use http::{Method, StatusCode};
pub(crate) use portcullis::oci::Digest;
pub(crate) use serde_json::{Value, json};
pub(crate) use std::path::Path;
pub(crate) use std::time::{Duration, Instant};

pub const REPO: &str = "test/app";
pub const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";

/// One rule requiring a signature by `key-a` for everything under `test/`.
pub const APPS: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

// ------------------------------------------------------------- policies

/// Three keys of the types cosign signs with.
pub fn keys() -> (SigningKey, SigningKey, SigningKey) {
    (
        SigningKey::generate_p256(),
        SigningKey::generate_ed25519(),
        SigningKey::generate_p521(),
    )
}

// ------------------------------------------------------------- seeding

/// Push `layers` as the `.sig` object of `subject` in `repo`.
pub async fn push_sig_layers(
    registry: &Distribution,
    repo: &str,
    subject: &Digest,
    layers: Vec<SignedLayer>,
) -> LegacyObject {
    let object = legacy_manifest(layers);
    push_legacy_object(registry, repo, &sig_tag(subject), &object).await;
    object
}

// ------------------------------------------------------------- audit

pub fn events_for(proxy: &TestProxy, digest: &Digest) -> Vec<Value> {
    let d = digest.to_string();
    proxy.audit_events().into_iter().filter(|e| e["digest"] == d).collect()
}

/// The expectation for audit events.
pub struct Expect<'a> {
    pub verdict: &'a str,
    pub rule: &'a str,
    pub satisfied: &'a [&'a str],
    pub revision: &'a str,
    pub upstream: &'a str,
    pub repo: &'a str,
}

impl Expect<'_> {
    pub fn check(&self, e: &Value) {
        let what = format!("audit event {e}");
        assert_eq!(e["verdict"], json!(self.verdict), "{what}");
        assert_eq!(e["served"], json!(self.verdict != "deny"), "{what}");
        assert_eq!(e["rule"], json!(self.rule), "{what}");
        assert_eq!(e["authorities_satisfied"], json!(self.satisfied), "{what}");
        assert_eq!(e["policy_revision"], json!(self.revision), "{what}");
        assert_eq!(e["integrity_only"], json!(false), "{what}");
        assert_eq!(e["registry"], json!(self.upstream), "{what}");
        assert_eq!(e["repository"], json!(self.repo), "{what}");
        assert!(
            e["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{what}"
        );
        assert!(e["time"].as_str().is_some_and(|t| !t.is_empty()), "{what}");
        assert!(e["cached"].is_boolean(), "{what}");
        assert!(e["mode"] == json!("enforce") || e["mode"] == json!("audit"), "{what}");
    }

    /// Every event for `digest` matches; the first was verified afresh.
    /// Returns the events.
    pub fn all(&self, proxy: &TestProxy, digest: &Digest) -> Vec<Value> {
        let events = events_for(proxy, digest);
        assert!(!events.is_empty(), "no audit event for {digest}");
        for e in &events {
            self.check(e);
        }
        assert_eq!(events[0]["cached"], json!(false), "first event {}", events[0]);
        events
    }
}

pub fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or_default()
}

// ------------------------------------------------------------- scenarios

/// An upstream, a policy and a proxy.
pub struct Env {
    pub registry: Distribution,
    pub policies: tempfile::TempDir,
    pub proxy: TestProxy,
    pub revision: String,
    /// The upstream's `host:port`, as audit events name it.
    pub upstream: String,
}

impl Env {
    pub async fn start(registry: Distribution, policies: tempfile::TempDir) -> Env {
        let proxy = TestProxy::with_policies(&registry.url(), policies.path()).await;
        let revision = revision(policies.path());
        let upstream = registry.host();
        Env {
            registry,
            policies,
            proxy,
            revision,
            upstream,
        }
    }

    pub fn expect<'a>(&'a self, verdict: &'a str, rule: &'a str, satisfied: &'a [&'a str]) -> Expect<'a> {
        self.expect_in(REPO, verdict, rule, satisfied)
    }

    pub fn expect_in<'a>(
        &'a self,
        repo: &'a str,
        verdict: &'a str,
        rule: &'a str,
        satisfied: &'a [&'a str],
    ) -> Expect<'a> {
        Expect {
            verdict,
            rule,
            satisfied,
            revision: &self.revision,
            upstream: &self.upstream,
            repo,
        }
    }

    /// `repo:tag` (= `image`) is served: skopeo copies it completely with
    /// the upstream's digests, a GET answers its exact bytes, and every
    /// audit event says allow by `rule` with `satisfied`. Returns the events.
    pub async fn allowed(&self, repo: &str, tag: &str, image: &Image, rule: &str, satisfied: &[&str]) -> Vec<Value> {
        skopeo_copies(
            &self.proxy,
            &format!("{repo}:{tag}"),
            &image.manifest.digest,
            &image_blobs(image),
        )
        .await;
        assert_manifest(
            &get_manifest(&self.proxy, repo, tag).await,
            &image.manifest,
            &format!("{repo}:{tag}"),
        );
        let events = self
            .expect_in(repo, "allow", rule, satisfied)
            .all(&self.proxy, &image.manifest.digest);
        assert_eq!(
            events.last().expect("event")["cached"],
            json!(true),
            "second pull is cached"
        );
        events
    }

    /// `repo:tag` (= `image`) is refused: skopeo fails, a GET is 403 naming
    /// `rule` and `reasons`, every audit event says deny with `satisfied`,
    /// no blob of the image was fetched and each is refused. Returns the
    /// first event.
    pub async fn denied(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        rule: &str,
        satisfied: &[&str],
        reasons: &[&str],
    ) -> Value {
        skopeo_refused(&self.proxy, &format!("{repo}:{tag}")).await;
        assert_denied(&get_manifest(&self.proxy, repo, tag).await, rule, reasons);
        let head = client::request(
            Method::HEAD,
            &self.proxy.url(&format!("/v2/{repo}/manifests/{tag}")),
            &[("accept", ACCEPT)],
        )
        .await;
        assert_eq!(head.status, StatusCode::FORBIDDEN, "HEAD {repo}:{tag}");
        assert_eq!(head.header("docker-content-digest"), None, "HEAD {repo}:{tag}");
        let events = self
            .expect_in(repo, "deny", rule, satisfied)
            .all(&self.proxy, &image.manifest.digest);
        for e in &events {
            assert_eq!(e["tag"], json!(tag), "{e}");
            for r in reasons {
                assert!(reason(e).contains(r), "event reason lacks `{r}`: {e}");
            }
        }
        for b in image.blobs() {
            assert!(!self.proxy.has_blob(&b.digest), "blob of a denied image was fetched");
            assert_blob_denied(&get_blob(&self.proxy, repo, &b.digest).await, &b.digest);
        }
        events[0].clone()
    }
}

pub const PINNED: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
    tags: { mutable: deny }
"#;

pub const STATIC_DENY: &str = r#"
rules:
  - name: lockdown
    match: { repositories: ["test/**"] }
    static: deny
"#;

pub const NONE_VERIFIED: &str = "signatures: 0 of 1 required authorities verified (none; needed 1 of [key-a])";

pub const TWO_OF_THREE: &str = r#"
rules:
  - name: strict
    match: { repositories: ["test/strict"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2, required: [key-a] } }
  - name: two-of-three
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2 } }
"#;

pub const PROVENANCE: &str = r#"
rules:
  - name: provenance
    match: { repositories: ["test/**"] }
    require:
      signatures: { anyOf: [key-a] }
      attestations:
        - name: slsa
          predicateType: https://slsa.dev/provenance/v0.2
          authorities: [key-a]
          checks:
            - { path: /predicate/builder/id, startsWith: "https://ci.example/" }
            - { path: /predicate/buildType, equals: "https://ci.example/build@v1" }
"#;

/// A SLSA v0.2-style predicate naming `builder`.
pub fn provenance(builder: &str) -> Value {
    json!({ "builder": { "id": builder }, "buildType": "https://ci.example/build@v1" })
}
