//! End-to-end proof of the signature policy: a real CNCF Distribution
//! upstream seeded with images and signatures in exactly cosign's formats
//! (legacy `.sig`/`.att`, key-based Sigstore bundle referrers behind the
//! referrers fallback index), Portcullis in front with a policy directory,
//! and skopeo as the client. Every case checks what the client sees (skopeo
//! succeeds or fails), the exact HTTP answer (403 `DENIED` naming the rule
//! and the reasons) and the audit event (verdict, rule, authorities,
//! policy revision, cache).
//!
//! The `portcullis policy check` and `portcullis verify` commands are run
//! as the built binary at the end.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis::oci::Digest;
use serde_json::{Value, json};
use support::client::{self, Resp};
use support::cosign::*;
use support::distribution::Distribution;
use support::fake::{FakeRegistry, Fault};
use support::images::*;
use support::proxy::TestProxy;

const REPO: &str = "test/app";
/// Time limit for one client command.
const LIMIT: Duration = Duration::from_secs(60);
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";

/// One rule requiring a signature by `key-a` for everything under `test/`.
const APPS: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

// ------------------------------------------------------------- policies

/// Three keys of the types cosign signs with.
fn keys() -> (SigningKey, SigningKey, SigningKey) {
    (
        SigningKey::generate_p256(),
        SigningKey::generate_ed25519(),
        SigningKey::generate_p521(),
    )
}

/// A policy document: key `<name>` from `<name>.pub` and authority
/// `key-<name>` (transparency log ignored) for each key, then `rules`.
fn policy_yaml(names: &[&str], rules: &str) -> String {
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
fn write_policy(dir: &Path, keys: &[(&str, &SigningKey)], rules: &str) {
    for (n, k) in keys {
        k.write_public_pem(&dir.join(format!("{n}.pub")));
    }
    let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    std::fs::write(dir.join("policy.yaml"), policy_yaml(&names, rules)).expect("write policy");
}

fn policy_dir(keys: &[(&str, &SigningKey)], rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_policy(dir.path(), keys, rules);
    dir
}

/// The revision the proxy must report for the policies in `dir`.
fn revision(dir: &Path) -> String {
    let p = portcullis::policy::load_dir(dir).expect("valid policy");
    assert!(p.warnings.is_empty(), "unexpected policy warnings: {:?}", p.warnings);
    p.revision
}

// ------------------------------------------------------------- seeding

fn small_image(seed: u64) -> Image {
    oci_image(&[2000, 300], seed)
}

/// Push `image` as `repo:tag` with a legacy `.sig` holding one layer per key.
async fn push_signed(registry: &Distribution, repo: &str, tag: &str, image: &Image, keys: &[&SigningKey]) {
    registry.push_image(repo, tag, image).await;
    push_legacy_signature(registry, repo, &image.manifest, keys).await;
}

/// Push `layers` as the `.sig` object of `subject` in `repo`.
async fn push_sig_layers(
    registry: &Distribution,
    repo: &str,
    subject: &Digest,
    layers: Vec<SignedLayer>,
) -> LegacyObject {
    let object = legacy_manifest(layers);
    push_legacy_object(registry, repo, &sig_tag(subject), &object).await;
    object
}

// ------------------------------------------------------------- HTTP

async fn get_manifest(proxy: &TestProxy, repo: &str, reference: &str) -> Resp {
    let url = proxy.url(&format!("/v2/{repo}/manifests/{reference}"));
    client::request(Method::GET, &url, &[("accept", ACCEPT)]).await
}

async fn get_blob(proxy: &TestProxy, repo: &str, digest: &Digest) -> Resp {
    client::get(&proxy.url(&format!("/v2/{repo}/blobs/{digest}"))).await
}

/// 200 with exactly `manifest`'s bytes and digest.
fn assert_manifest(resp: &Resp, manifest: &Blob, what: &str) {
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
fn assert_blob(resp: &Resp, blob: &Blob, what: &str) {
    assert_eq!(resp.status, StatusCode::OK, "{what}");
    assert_eq!(resp.bytes(), blob.bytes, "{what}: bytes");
}

/// 403 `DENIED` naming `rule` and each of `reasons`; returns the message.
fn assert_denied(resp: &Resp, rule: &str, reasons: &[&str]) -> String {
    assert_eq!(
        resp.status,
        StatusCode::FORBIDDEN,
        "expected a denial, got {}: {:?}",
        resp.status,
        resp.body
    );
    assert_eq!(resp.error_code(), "DENIED");
    let message = resp.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
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
fn assert_blob_denied(resp: &Resp, digest: &Digest) {
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "blob {digest}: {:?}", resp.body);
    assert_eq!(resp.error_code(), "DENIED");
    let message = resp.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        message,
        format!("blob {digest} is not referenced by an admitted manifest of this repository (pull the manifest first)")
    );
}

// ------------------------------------------------------------- audit

fn events_for(proxy: &TestProxy, digest: &Digest) -> Vec<Value> {
    let d = digest.to_string();
    proxy.audit_events().into_iter().filter(|e| e["digest"] == d).collect()
}

/// The expectation for audit events.
struct Expect<'a> {
    verdict: &'a str,
    rule: &'a str,
    satisfied: &'a [&'a str],
    revision: &'a str,
    upstream: &'a str,
    repo: &'a str,
}

impl Expect<'_> {
    fn check(&self, e: &Value) {
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
    fn all(&self, proxy: &TestProxy, digest: &Digest) -> Vec<Value> {
        let events = events_for(proxy, digest);
        assert!(!events.is_empty(), "no audit event for {digest}");
        for e in &events {
            self.check(e);
        }
        assert_eq!(events[0]["cached"], json!(false), "first event {}", events[0]);
        events
    }
}

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or_default()
}

// ------------------------------------------------------------- skopeo

/// Run a command with a time limit: stdout on success, a report (command,
/// status, stdout, stderr) otherwise.
async fn try_run(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let path = support::require_tool(program);
    let shown = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("`{shown}`: {e}"))?,
        Err(_) => return Err(format!("`{shown}` did not finish within {limit:?} (killed)")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{shown}` failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            output.status
        ))
    }
}

/// `skopeo copy --all` of `reference` (`repo:tag` or `repo@digest`) through
/// the proxy into a `dir:` copy at `dest`.
async fn skopeo_copy(proxy: &TestProxy, reference: &str, dest: &Path) -> Result<String, String> {
    let src = format!("docker://{}/{reference}", proxy.addr);
    let dest = format!("dir:{}", dest.display());
    try_run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &src,
            &dest,
        ],
        LIMIT,
    )
    .await
}

/// skopeo must fail because the proxy denied the pull.
async fn skopeo_refused(proxy: &TestProxy, reference: &str) -> String {
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

/// A `dir:` copy: the top-level manifest's digest and every file's digest
/// (each file checked against its name).
fn read_dir_copy(dir: &Path) -> (Digest, BTreeSet<Digest>) {
    let top = support::images::sha256_file(&dir.join("manifest.json"));
    let mut all = BTreeSet::from([top.clone()]);
    for entry in std::fs::read_dir(dir).expect("dir copy") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if name == "manifest.json" || name == "version" {
            continue;
        }
        let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
        let named: Digest = format!("sha256:{hex}").parse().expect("file named by digest");
        assert_eq!(
            support::images::sha256_file(&path),
            named,
            "{} does not hash to its name",
            path.display()
        );
        all.insert(named);
    }
    (top, all)
}

/// skopeo copies `reference` completely: the copy holds exactly `top` and
/// `expected` (all digests equal to the upstream's).
async fn skopeo_copies(proxy: &TestProxy, reference: &str, top: &Digest, expected: &[&Digest]) {
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("copy");
    if let Err(e) = skopeo_copy(proxy, reference, &dest).await {
        panic!("{e}");
    }
    let (got_top, got) = read_dir_copy(&dest);
    assert_eq!(&got_top, top, "{reference}: the copy's manifest is not the upstream's");
    let mut want: BTreeSet<Digest> = expected.iter().map(|d| (*d).clone()).collect();
    want.insert(top.clone());
    assert_eq!(got, want, "{reference}: copied digests");
}

/// Everything a pull of `image` copies, besides its manifest.
fn image_blobs(image: &Image) -> Vec<&Digest> {
    image.blobs().into_iter().map(|b| &b.digest).collect()
}

// ------------------------------------------------------------- scenarios

/// An upstream, a policy and a proxy.
struct Env {
    registry: Distribution,
    policies: tempfile::TempDir,
    proxy: TestProxy,
    revision: String,
    /// The upstream's `host:port`, as audit events name it.
    upstream: String,
}

impl Env {
    async fn start(registry: Distribution, policies: tempfile::TempDir) -> Env {
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

    fn expect<'a>(&'a self, verdict: &'a str, rule: &'a str, satisfied: &'a [&'a str]) -> Expect<'a> {
        self.expect_in(REPO, verdict, rule, satisfied)
    }

    fn expect_in<'a>(&'a self, repo: &'a str, verdict: &'a str, rule: &'a str, satisfied: &'a [&'a str]) -> Expect<'a> {
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
    async fn allowed(&self, repo: &str, tag: &str, image: &Image, rule: &str, satisfied: &[&str]) -> Vec<Value> {
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
    async fn denied(
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

// ============================================================= 1, 2: signed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_signature_is_served_and_copied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(1);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    let events = env.allowed(REPO, "v1", &image, "apps", &["key-a"]).await;
    let first = &events[0];
    assert_eq!(first["tag"], json!("v1"));
    assert_eq!(first["mode"], json!("enforce"));
    assert_eq!(reason(first), "signatures verified by key-a");
    // A pull by digest is the same decision, from the cache.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &image.manifest.digest.to_string()).await,
        &image.manifest,
        "by digest",
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    assert_eq!(last["tag"], Value::Null);
    assert_eq!(last["cached"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_referrer_through_the_fallback_index_is_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(2);
    registry.push_image(REPO, "v1", &image).await;
    let referrer = push_bundle_signature(&registry, REPO, &image.manifest, &a).await;
    // Distribution 2.8 has no referrers API: only the fallback tag lists it.
    let listed = read_fallback_index(&registry, REPO, &image.manifest.digest).await;
    assert_eq!(listed, vec![IndexEntry::ggcr(&referrer.manifest)]);
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    env.allowed(REPO, "v1", &image, "apps", &["key-a"]).await;
    // Only bundles are accepted by a bundle-only rule, and this one has one.
    let bundle_only = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: bundles
    match: { repositories: ["test/**"] }
    formats: [bundle]
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let proxy = TestProxy::with_policies(&env.registry.url(), bundle_only.path()).await;
    assert_manifest(
        &get_manifest(&proxy, REPO, "v1").await,
        &image.manifest,
        "bundle-only rule",
    );
    let legacy_only = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: legacy
    match: { repositories: ["test/**"] }
    formats: [legacy]
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let proxy = TestProxy::with_policies(&env.registry.url(), legacy_only.path()).await;
    assert_denied(
        &get_manifest(&proxy, REPO, "v1").await,
        "legacy",
        &["no signatures or attestations found"],
    );
}

// ============================================================= 3: refused

const NONE_VERIFIED: &str = "signatures: 0 of 1 required authorities verified (none; needed 1 of [key-a])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_image_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(3);
    registry.push_image(REPO, "v1", &image).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let first = env
        .denied(
            REPO,
            "v1",
            &image,
            "apps",
            &[],
            &["no signatures or attestations found", NONE_VERIFIED],
        )
        .await;
    assert_eq!(
        reason(&first),
        format!("{NONE_VERIFIED}; no signatures or attestations found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_by_another_key_is_denied() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(4);
    push_signed(&registry, REPO, "v1", &image, &[&b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let first = env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED]).await;
    // A signature was found; it just is not key-a's.
    assert!(!reason(&first).contains("no signatures"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_payload_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(5);
    registry.push_image(REPO, "v1", &image).await;
    let layer = tamper::tampered_signature(&a, &docker_reference(&registry, REPO), &image.manifest.digest);
    push_sig_layers(&registry, REPO, &image.manifest.digest, vec![layer]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_naming_another_digest_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(6);
    let other = small_image(7);
    registry.push_image(REPO, "v1", &image).await;
    let layer = tamper::signature_for_other_image(&a, &docker_reference(&registry, REPO), &other.manifest.digest);
    push_sig_layers(&registry, REPO, &image.manifest.digest, vec![layer]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let binding = format!(
        "{}.sig layer 0 for `key-a`: signed payload names {}, not this image ({})",
        image.manifest.digest.tag_form(),
        other.manifest.digest,
        image.manifest.digest
    );
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED, &binding])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_of_another_image_copied_onto_the_sig_tag_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(8);
    let other = small_image(9);
    registry.push_image(REPO, "v1", &image).await;
    // `other` is genuinely signed; its .sig object is copied under image's tag.
    let genuine = push_signed_object(&registry, &other, &a).await;
    push_legacy_object(&registry, REPO, &sig_tag(&image.manifest.digest), &genuine).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let binding = format!(
        "signed payload names {}, not this image ({})",
        other.manifest.digest, image.manifest.digest
    );
    env.denied(REPO, "v1", &image, "apps", &[], &[NONE_VERIFIED, &binding])
        .await;
    // The signed image itself is fine.
    env.allowed(REPO, "other", &other, "apps", &["key-a"]).await;
}

/// Push `image` as `test/app:other` signed by `key`; its `.sig` object.
async fn push_signed_object(registry: &Distribution, image: &Image, key: &SigningKey) -> LegacyObject {
    registry.push_image(REPO, "other", image).await;
    push_legacy_signature(registry, REPO, &image.manifest, &[key]).await
}

// ============================================================= 4: thresholds

const TWO_OF_THREE: &str = r#"
rules:
  - name: strict
    match: { repositories: ["test/strict"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2, required: [key-a] } }
  - name: two-of-three
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_authorities_are_enough() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    // Two layers in one .sig (a, b).
    let ab = small_image(10);
    push_signed(&registry, REPO, "ab", &ab, &[&a, &b]).await;
    // A legacy .sig by a plus a bundle referrer by c.
    let ac = small_image(11);
    push_signed(&registry, REPO, "ac", &ac, &[&a]).await;
    push_bundle_signature(&registry, REPO, &ac.manifest, &c).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;

    let events = env.allowed(REPO, "ab", &ab, "two-of-three", &["key-a", "key-b"]).await;
    assert_eq!(reason(&events[0]), "signatures verified by key-a, key-b");
    let events = env.allowed(REPO, "ac", &ac, "two-of-three", &["key-a", "key-c"]).await;
    assert_eq!(reason(&events[0]), "signatures verified by key-a, key-c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_authorities_is_not_enough() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    let one = small_image(12);
    push_signed(&registry, REPO, "a", &one, &[&a]).await;
    // The same authority twice still counts once.
    let twice = small_image(13);
    push_signed(&registry, REPO, "aa", &twice, &[&a, &a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;
    let threshold = "signatures: 1 of 2 required authorities verified (key-a; needed 2 of [key-a, key-b, key-c])";
    for (tag, image) in [("a", &one), ("aa", &twice)] {
        let first = env
            .denied(REPO, tag, image, "two-of-three", &["key-a"], &[threshold])
            .await;
        assert_eq!(reason(&first), threshold);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_authority_missing_is_denied_even_with_two_others() {
    let (a, b, c) = keys();
    let registry = Distribution::start().await;
    let bc = small_image(14);
    push_signed(&registry, "test/strict", "bc", &bc, &[&b, &c]).await;
    let ab = small_image(15);
    push_signed(&registry, "test/strict", "ab", &ab, &[&a, &b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a), ("b", &b), ("c", &c)], TWO_OF_THREE)).await;
    let missing = "signatures: required authority `key-a` did not verify";
    let first = env
        .denied("test/strict", "bc", &bc, "strict", &["key-b", "key-c"], &[missing])
        .await;
    assert_eq!(reason(&first), missing);
    env.allowed("test/strict", "ab", &ab, "strict", &["key-a", "key-b"])
        .await;
}

// ============================================================= 5: attestations

const PROVENANCE: &str = r#"
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

fn provenance(builder: &str) -> Value {
    json!({ "builder": { "id": builder }, "buildType": "https://ci.example/build@v1" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_with_passing_checks_is_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let legacy = small_image(20);
    push_signed(&registry, REPO, "legacy", &legacy, &[&a]).await;
    let predicate = provenance("https://ci.example/builders/main");
    push_legacy_attestation(&registry, REPO, &legacy.manifest, &[&a], SLSA_V02, &predicate).await;
    // The same, both as bundles (cosign v3's default format).
    let bundled = small_image(21);
    registry.push_image(REPO, "bundled", &bundled).await;
    push_bundle_signature(&registry, REPO, &bundled.manifest, &a).await;
    push_bundle_attestation(&registry, REPO, &bundled.manifest, &a, SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;

    for (tag, image) in [("legacy", &legacy), ("bundled", &bundled)] {
        let events = env.allowed(REPO, tag, image, "provenance", &["key-a"]).await;
        assert_eq!(
            reason(&events[0]),
            format!("signatures verified by key-a; attestation `slsa` ({SLSA_V02}) verified by key-a"),
            "{tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_failing_a_check_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(22);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let predicate = provenance("https://evil.example/builder");
    push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;
    let check = format!(
        "attestation `slsa` ({SLSA_V02}): 0 of 1 authorities satisfied: `key-a`: check /predicate/builder/id \
         startsWith \"https://ci.example/\" failed (found \"https://evil.example/builder\")"
    );
    let first = env
        .denied(REPO, "v1", &image, "provenance", &["key-a"], &[&check])
        .await;
    assert_eq!(reason(&first), format!("signatures verified by key-a; {check}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_of_another_predicate_type_is_denied() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(23);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let predicate = provenance("https://ci.example/builders/main");
    // Right content, wrong type; and the right type from the wrong signer.
    push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_PROVENANCE_V1, &predicate).await;
    let other_signer = small_image(24);
    push_signed(&registry, REPO, "v2", &other_signer, &[&a]).await;
    push_legacy_attestation(&registry, REPO, &other_signer.manifest, &[&b], SLSA_V02, &predicate).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PROVENANCE)).await;
    let missing =
        format!("attestation `slsa` ({SLSA_V02}): 0 of 1 authorities satisfied: no verified attestation of that type");
    for (tag, image) in [("v1", &image), ("v2", &other_signer)] {
        let first = env
            .denied(REPO, tag, image, "provenance", &["key-a"], &[&missing])
            .await;
        assert_eq!(
            reason(&first),
            format!("signatures verified by key-a; {missing}"),
            "{tag}"
        );
    }
}

// ============================================================= 6: audit mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_serves_and_logs_would_deny() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(30);
    registry.push_image(REPO, "v1", &image).await;
    let policies = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: rollout
    match: { repositories: ["test/**"] }
    mode: audit
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let env = Env::start(registry, policies).await;
    skopeo_copies(&env.proxy, "test/app:v1", &image.manifest.digest, &image_blobs(&image)).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "audit mode",
    );
    let events = env
        .expect("would-deny", "rollout", &[])
        .all(&env.proxy, &image.manifest.digest);
    for e in &events {
        assert_eq!(e["mode"], json!("audit"), "{e}");
        assert_eq!(e["served"], json!(true), "{e}");
        assert!(reason(e).contains(NONE_VERIFIED), "{e}");
    }
}

// ============================================================= 7: moving tags

const PINNED: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
    tags: { mutable: deny }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tag_keeps_serving_the_first_admitted_digest() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(40);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], PINNED)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");

    let second = small_image(41);
    push_signed(&env.registry, REPO, "v1", &second, &[&a]).await;
    let upstream = client::request(
        Method::HEAD,
        &env.registry.url_for("/v2/test/app/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(
        upstream.header("docker-content-digest"),
        Some(second.manifest.digest.to_string().as_str()),
        "the tag moved upstream"
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &first.manifest,
        "after the move",
    );
    skopeo_copies(&env.proxy, "test/app:v1", &first.manifest.digest, &image_blobs(&first)).await;
    // The moved-to digest was never admitted through the tag.
    assert!(events_for(&env.proxy, &second.manifest.digest).is_empty());
    env.expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &first.manifest.digest);
    // It is not forbidden by digest, though: it is signed.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &second.manifest.digest.to_string()).await,
        &second.manifest,
        "new digest by digest",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutable_tag_serves_the_new_signed_digest() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(42);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");
    let second = small_image(43);
    push_signed(&env.registry, REPO, "v1", &second, &[&a]).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &second.manifest,
        "after the move",
    );
    skopeo_copies(
        &env.proxy,
        "test/app:v1",
        &second.manifest.digest,
        &image_blobs(&second),
    )
    .await;
    let events = env
        .expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &second.manifest.digest);
    assert_eq!(events[0]["tag"], json!("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutable_tag_moved_to_an_unsigned_digest_is_denied() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let first = small_image(44);
    push_signed(&registry, REPO, "v1", &first, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &first.manifest, "before");
    // Time of check = time of use: the new digest is verified before it is served.
    let unsigned = small_image(45);
    env.registry.push_image(REPO, "v1", &unsigned).await;
    env.denied(REPO, "v1", &unsigned, "apps", &[], &[NONE_VERIFIED]).await;
    // The first digest is still fine by digest.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &first.manifest.digest.to_string()).await,
        &first.manifest,
        "old digest",
    );
}

// ============================================================= 8: indexes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_signed_at_the_top_covers_its_children() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let children = [
        oci_image_for("amd64", &[3000, 100], 50),
        oci_image_for("arm64", &[2500], 51),
    ];
    let index = oci_index(&[(&children[0], "amd64"), (&children[1], "arm64")]);
    registry
        .push_index(REPO, "multi", &index, &[&children[0], &children[1]])
        .await;
    push_legacy_signature(&registry, REPO, &index, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    let mut expected: Vec<&Digest> = children.iter().map(|c| &c.manifest.digest).collect();
    for c in &children {
        expected.extend(image_blobs(c));
    }
    skopeo_copies(&env.proxy, "test/app:multi", &index.digest, &expected).await;
    env.expect("allow", "apps", &["key-a"]).all(&env.proxy, &index.digest);
    let why = format!("listed by admitted index {}", index.digest);
    for c in &children {
        let events = events_for(&env.proxy, &c.manifest.digest);
        assert!(!events.is_empty(), "child {} not pulled", c.manifest.digest);
        for e in &events {
            env.expect("allow", "apps", &["key-a"]).check(e);
            assert!(reason(e).starts_with(&why), "{e}");
        }
    }

    // A fresh proxy asked for a child directly: verified on its own.
    let fresh = TestProxy::with_policies(&env.registry.url(), env.policies.path()).await;
    let child = &children[1];
    let resp = get_manifest(&fresh, REPO, &child.manifest.digest.to_string()).await;
    assert_denied(&resp, "apps", &["no signatures or attestations found", NONE_VERIFIED]);
    let events = events_for(&fresh, &child.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    env.expect("deny", "apps", &[]).check(&events[0]);
    assert_blob_denied(
        &get_blob(&fresh, REPO, &child.layers[0].digest).await,
        &child.layers[0].digest,
    );
    // After the index is pulled, the same child is served.
    assert_manifest(&get_manifest(&fresh, REPO, "multi").await, &index, "index");
    assert_manifest(
        &get_manifest(&fresh, REPO, &child.manifest.digest.to_string()).await,
        &child.manifest,
        "child after its index",
    );

    // With `indexCoversChildren: false` the unsigned children are refused.
    let own = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: each
    match: { repositories: ["test/**"] }
    indexCoversChildren: false
    require: { signatures: { anyOf: [key-a] } }
"#,
    );
    let strict = TestProxy::with_policies(&env.registry.url(), own.path()).await;
    skopeo_refused(&strict, "test/app:multi").await;
    assert_manifest(&get_manifest(&strict, REPO, "multi").await, &index, "index itself");
    assert_denied(
        &get_manifest(&strict, REPO, &child.manifest.digest.to_string()).await,
        "each",
        &[NONE_VERIFIED],
    );
}

// ============================================================= 9: blobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_need_an_admitted_manifest_of_the_same_repository() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let signed = small_image(60);
    push_signed(&registry, REPO, "v1", &signed, &[&a]).await;
    let unsigned = small_image(61);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let elsewhere = small_image(62);
    push_signed(&registry, "test/other", "v1", &elsewhere, &[&a]).await;
    // The other repository's layer also exists upstream in test/app.
    registry.push_blob(REPO, &elsewhere.layers[0]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    // Before any manifest: nothing.
    let layer = &signed.layers[0];
    assert_blob_denied(&get_blob(&env.proxy, REPO, &layer.digest).await, &layer.digest);
    // A denied image's blobs stay refused.
    assert_denied(
        &get_manifest(&env.proxy, REPO, "unsigned").await,
        "apps",
        &[NONE_VERIFIED],
    );
    for b in unsigned.blobs() {
        assert_blob_denied(&get_blob(&env.proxy, REPO, &b.digest).await, &b.digest);
        assert!(!env.proxy.has_blob(&b.digest));
    }
    // The admitted image's blobs are served.
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &signed.manifest, "signed");
    for b in signed.blobs() {
        assert_blob(&get_blob(&env.proxy, REPO, &b.digest).await, b, "signed blob");
    }
    // Admitted in test/other: served there, not from test/app (although
    // the proxy now holds it, and test/app upstream has it).
    assert_manifest(
        &get_manifest(&env.proxy, "test/other", "v1").await,
        &elsewhere.manifest,
        "other repo",
    );
    let foreign = &elsewhere.layers[0];
    assert_blob(
        &get_blob(&env.proxy, "test/other", &foreign.digest).await,
        foreign,
        "own repo",
    );
    assert!(env.proxy.has_blob(&foreign.digest));
    assert_blob_denied(&get_blob(&env.proxy, REPO, &foreign.digest).await, &foreign.digest);
    let head = client::head(&env.proxy.url(&format!("/v2/{REPO}/blobs/{}", foreign.digest))).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
}

// ============================================================= 10: material

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_material_passes_through() {
    let (a, b, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(70);
    registry.push_image(REPO, "v1", &image).await;
    let sig = push_legacy_signature(&registry, REPO, &image.manifest, &[&a]).await;
    let predicate = provenance("https://ci.example/x");
    let att = push_legacy_attestation(&registry, REPO, &image.manifest, &[&a], SLSA_V02, &predicate).await;
    let referrer = push_bundle_signature(&registry, REPO, &image.manifest, &a).await;
    let fallback = referrers_fallback_index(&[IndexEntry::ggcr(&referrer.manifest)]);
    // Another image whose only signature is by a key the policy does not trust.
    let foreign = small_image(71);
    registry.push_image(REPO, "foreign", &foreign).await;
    let foreign_sig = push_legacy_signature(&registry, REPO, &foreign.manifest, &[&b]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &image.manifest, "image");
    let digest = &image.manifest.digest;
    // Legacy .sig and .att: manifest, layers and config.
    for (tag, object) in [(sig_tag(digest), &sig), (att_tag(digest), &att)] {
        assert_manifest(&get_manifest(&env.proxy, REPO, &tag).await, &object.manifest, &tag);
        for l in &object.layers {
            assert_blob(&get_blob(&env.proxy, REPO, &l.blob.digest).await, &l.blob, &tag);
        }
        assert_blob(
            &get_blob(&env.proxy, REPO, &object.config.digest).await,
            &object.config,
            &tag,
        );
    }
    // Referrers: the listing (with the referrer's real artifactType), the
    // fallback index itself, the referrer manifest and its bundle.
    let listing = client::get(&env.proxy.url(&format!("/v2/{REPO}/referrers/{digest}"))).await;
    assert_eq!(listing.status, StatusCode::OK);
    assert_eq!(listing.header("content-type"), Some(OCI_INDEX));
    let manifests = listing.json()["manifests"].as_array().cloned().expect("manifests");
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert_eq!(manifests[0]["digest"], json!(referrer.manifest.digest.to_string()));
    assert_eq!(manifests[0]["artifactType"], json!(BUNDLE_V03_MEDIA_TYPE));
    assert_eq!(manifests[0]["size"], json!(referrer.manifest.bytes.len()));
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrers_tag(digest)).await,
        &fallback,
        "fallback index",
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrer.manifest.digest.to_string()).await,
        &referrer.manifest,
        "referrer",
    );
    assert_blob(
        &get_blob(&env.proxy, REPO, &referrer.bundle.digest).await,
        &referrer.bundle,
        "bundle",
    );
    assert_blob(
        &get_blob(&env.proxy, REPO, &referrer.config.digest).await,
        &referrer.config,
        "referrer config",
    );
    // Each is admitted as the image's material, under the image's rule.
    let events = events_for(&env.proxy, &sig.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    env.expect("allow", "apps", &["key-a"]).check(&events[0]);
    assert!(
        reason(&events[0]).starts_with(&format!("verification material of {digest}")),
        "{}",
        events[0]
    );
    let events = events_for(&env.proxy, &referrer.manifest.digest);
    assert!(
        reason(&events[0]).starts_with(&format!("referrer of {digest}")),
        "{}",
        events[0]
    );

    // The material of a denied image is refused like the image.
    let foreign_tag = sig_tag(&foreign.manifest.digest);
    assert_denied(
        &get_manifest(&env.proxy, REPO, &foreign_tag).await,
        "apps",
        &[
            &format!("verification material of {}", foreign.manifest.digest),
            NONE_VERIFIED,
        ],
    );
    let l = &foreign_sig.layers[0].blob;
    assert_blob_denied(&get_blob(&env.proxy, REPO, &l.digest).await, &l.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_tags_holding_an_index_do_not_vouch_for_unsigned_manifests() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(72);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    // Whoever can push to the upstream (but cannot sign) lists unsigned
    // manifests in indexes under the signed image's material tags: the
    // referrers fallback tag and the (unused by this policy) `.att` tag.
    let evil = [small_image(73), small_image(74)];
    for e in &evil {
        registry.push_image(REPO, "", e).await;
    }
    let digest = &image.manifest.digest;
    let fallback = oci_index(&[(&evil[0], "amd64")]);
    registry.push_manifest(REPO, &referrers_tag(digest), &fallback).await;
    let att = oci_index(&[(&evil[1], "amd64")]);
    registry.push_manifest(REPO, &att_tag(digest), &att).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;

    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "signed image",
    );
    // The material itself is the signed image's business: served.
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &referrers_tag(digest)).await,
        &fallback,
        "fallback tag",
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &att_tag(digest)).await,
        &att,
        ".att tag",
    );
    // What it lists is not vouched for by the image's signature.
    for e in &evil {
        let resp = get_manifest(&env.proxy, REPO, &e.manifest.digest.to_string()).await;
        assert_denied(&resp, "apps", &[NONE_VERIFIED]);
        let layer = &e.layers[0].digest;
        assert_blob_denied(&get_blob(&env.proxy, REPO, layer).await, layer);
    }
}

/// An image manifest (runnable: config and tar layers) that also carries a
/// `subject`, as if it were a referrer of `subject`.
fn image_with_subject(image: &Image, subject: &Blob) -> Blob {
    let mut m: Value = serde_json::from_slice(&image.manifest.bytes).expect("json");
    m["subject"] = subject.descriptor();
    Blob::new(OCI_MANIFEST, serde_json::to_vec(&m).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_images_posing_as_material_are_not_served() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(75);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let digest = &image.manifest.digest;
    // An unsigned runnable image under the signed image's `.sbom` tag, and
    // one with a `subject` naming the signed image (a "referrer").
    let under_tag = small_image(76);
    registry
        .push_image(REPO, &format!("{}.sbom", digest.tag_form()), &under_tag)
        .await;
    let posing = small_image(77);
    let with_subject = image_with_subject(&posing, &image.manifest);
    for b in posing.blobs() {
        registry.push_blob(REPO, b).await;
    }
    registry
        .push_manifest(REPO, &with_subject.digest.to_string(), &with_subject)
        .await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "signed image",
    );

    let sbom = format!("{}.sbom", digest.tag_form());
    assert_denied(&get_manifest(&env.proxy, REPO, &sbom).await, "apps", &[NONE_VERIFIED]);
    assert_denied(
        &get_manifest(&env.proxy, REPO, &with_subject.digest.to_string()).await,
        "apps",
        &[NONE_VERIFIED],
    );
    for b in under_tag.blobs().into_iter().chain(posing.blobs()) {
        assert_blob_denied(&get_blob(&env.proxy, REPO, &b.digest).await, &b.digest);
    }
}

// ============================================================= 11: upstream failure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfetchable_signatures_deny_without_caching() {
    let (a, _, _) = keys();
    let fake = FakeRegistry::start().await;
    let image = small_image(80);
    fake.put_image(REPO, "v1", &image);
    let layer = signature_layer(&a, &format!("{}/{REPO}", fake.host()), &image.manifest.digest);
    let object = legacy_manifest(vec![layer]);
    for l in &object.layers {
        fake.put_blob(REPO, &l.blob);
    }
    fake.put_blob(REPO, &object.config);
    let tag = sig_tag(&image.manifest.digest);
    fake.tag(REPO, &tag, &object.manifest);
    fake.set_fault(&tag, Fault::always(503));
    let policies = policy_dir(&[("a", &a)], APPS);
    let proxy = TestProxy::with_policies(&fake.url(), policies.path()).await;
    let rev = revision(policies.path());
    let host = fake.host();
    let expect = |verdict, satisfied| Expect {
        verdict,
        rule: "apps",
        satisfied,
        revision: &rev,
        upstream: &host,
        repo: REPO,
    };

    let resp = get_manifest(&proxy, REPO, "v1").await;
    let message = assert_denied(
        &resp,
        "apps",
        &["verification material could not be fetched", "not cached, retry later"],
    );
    assert!(message.contains("503"), "{message}");
    let events = events_for(&proxy, &image.manifest.digest);
    assert_eq!(events.len(), 1, "{events:?}");
    expect("deny", &[]).check(&events[0]);
    assert_eq!(events[0]["cached"], json!(false));
    assert!(fake.manifest_requests("GET", REPO, &tag) > 0, "the .sig was asked for");

    // The upstream recovers: the very next request is verified and allowed.
    fake.clear_faults();
    assert_manifest(
        &get_manifest(&proxy, REPO, "v1").await,
        &image.manifest,
        "after recovery",
    );
    let events = events_for(&proxy, &image.manifest.digest);
    assert_eq!(events.len(), 2, "{events:?}");
    expect("allow", &["key-a"]).check(&events[1]);
    assert_eq!(events[1]["cached"], json!(false));
    skopeo_copies(&proxy, "test/app:v1", &image.manifest.digest, &image_blobs(&image)).await;
}

// ============================================================= 12: requireDigest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_digest_refuses_tags() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(90);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let unsigned = small_image(91);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let policies = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: pinned
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
    tags: { requireDigest: true }
"#,
    );
    let env = Env::start(registry, policies).await;
    let by_tag = "rule requires pulls by digest; `v1` is a tag";
    skopeo_refused(&env.proxy, "test/app:v1").await;
    assert_denied(&get_manifest(&env.proxy, REPO, "v1").await, "pinned", &[by_tag]);
    let events = env
        .expect("deny", "pinned", &[])
        .all(&env.proxy, &image.manifest.digest);
    assert_eq!(reason(&events[0]), by_tag);

    let by_digest = format!("test/app@{}", image.manifest.digest);
    skopeo_copies(&env.proxy, &by_digest, &image.manifest.digest, &image_blobs(&image)).await;
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    env.expect("allow", "pinned", &["key-a"]).check(&last);
    assert_eq!(last["tag"], Value::Null);
    // Verification material stays reachable by its tag (cosign resolves it so).
    let sig = sig_tag(&image.manifest.digest);
    assert_eq!(
        get_manifest(&env.proxy, REPO, &sig).await.status,
        StatusCode::OK,
        "{sig}"
    );
    // By digest still needs the signature.
    assert_denied(
        &get_manifest(&env.proxy, REPO, &unsigned.manifest.digest.to_string()).await,
        "pinned",
        &[NONE_VERIFIED],
    );
}

// ============================================================= 13: verdict cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_verdicts_are_cached_and_survive_a_restart() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(100);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let digest = image.manifest.digest.to_string();

    assert_manifest(&get_manifest(&env.proxy, REPO, &digest).await, &image.manifest, "first");
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "second",
    );
    let events = env
        .expect("allow", "apps", &["key-a"])
        .all(&env.proxy, &image.manifest.digest);
    let cached: Vec<&Value> = events.iter().map(|e| &e["cached"]).collect();
    assert_eq!(cached, [&json!(false), &json!(true)]);

    // Remove the signature upstream: a re-verification would now deny.
    let sig_url = env.registry.url_for(&format!(
        "/v2/{REPO}/manifests/{}",
        sig_manifest_digest(&env.registry, &image.manifest.digest).await
    ));
    let deleted = client::request(Method::DELETE, &sig_url, &[]).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{:?}", deleted.body);
    let gone = client::get(
        &env.registry
            .url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(&image.manifest.digest))),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "the .sig is gone upstream");

    // Same data directory, new process state: the allow was persisted.
    let Env {
        registry,
        policies,
        proxy,
        revision,
        upstream,
    } = env;
    let proxy = proxy.restart_with_policies(&registry.url(), policies.path()).await;
    let env = Env {
        registry,
        policies,
        proxy,
        revision,
        upstream,
    };
    let before = events_for(&env.proxy, &image.manifest.digest).len();
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "after restart",
    );
    let events = events_for(&env.proxy, &image.manifest.digest);
    assert_eq!(events.len(), before + 1);
    let last = events.last().expect("event");
    env.expect("allow", "apps", &["key-a"]).check(last);
    assert_eq!(last["cached"], json!(true), "{last}");
    // A digest never verified is verified (and now denied: no signature).
    let unsigned = small_image(101);
    env.registry.push_image(REPO, "", &unsigned).await;
    assert_denied(
        &get_manifest(&env.proxy, REPO, &unsigned.manifest.digest.to_string()).await,
        "apps",
        &[NONE_VERIFIED],
    );
}

/// Signatures are discovered in the repository pulled from: a (cached)
/// denial of a digest in a repository holding no signature for it must not
/// refuse the same digest where it is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_in_one_repository_does_not_deny_a_signed_copy_elsewhere() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(102);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    registry.push_image("test/mirror", "v1", &image).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let digest = image.manifest.digest.to_string();
    assert_denied(
        &get_manifest(&env.proxy, "test/mirror", &digest).await,
        "apps",
        &[NONE_VERIFIED],
    );
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &digest).await,
        &image.manifest,
        "signed repository",
    );
    // Nor does the allow there vouch for the copy without a signature (as
    // `cosign verify test/mirror@…` fails without COSIGN_REPOSITORY).
    assert_denied(
        &get_manifest(&env.proxy, "test/mirror", &digest).await,
        "apps",
        &[NONE_VERIFIED],
    );
}

async fn sig_manifest_digest(registry: &Distribution, image: &Digest) -> String {
    let resp = client::request(
        Method::HEAD,
        &registry.url_for(&format!("/v2/{REPO}/manifests/{}", sig_tag(image))),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    resp.header("docker-content-digest").expect("digest").to_owned()
}

// ============================================================= 14: reload

/// Poll `GET repo:reference` until it answers `status` (at most 10 s).
async fn wait_for_status(proxy: &TestProxy, reference: &str, status: StatusCode) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get_manifest(proxy, REPO, reference).await;
        if resp.status == status {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after 10 s: {:?}",
            resp.status,
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const STATIC_DENY: &str = r#"
rules:
  - name: lockdown
    match: { repositories: ["test/**"] }
    static: deny
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_new_policies_and_refuses_invalid_ones() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(110);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    let dir = env.policies.path();
    assert_manifest(&get_manifest(&env.proxy, REPO, "v1").await, &image.manifest, "initial");

    // An invalid policy is refused: the old one stays in force.
    let valid = std::fs::read_to_string(dir.join("policy.yaml")).expect("read");
    std::fs::write(dir.join("policy.yaml"), format!("{valid}bogus: true\n")).expect("write");
    assert!(portcullis::policy::load_dir(dir).is_err());
    tokio::time::sleep(Duration::from_millis(4500)).await; // two polls
    assert_manifest(
        &get_manifest(&env.proxy, REPO, "v1").await,
        &image.manifest,
        "after invalid",
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    env.expect("allow", "apps", &["key-a"]).check(&last);

    // A valid new policy replaces it within a few seconds.
    write_policy(dir, &[("a", &a)], STATIC_DENY);
    let new_revision = revision(dir);
    assert_ne!(new_revision, env.revision);
    let resp = wait_for_status(&env.proxy, "v1", StatusCode::FORBIDDEN).await;
    let message = assert_denied(&resp, "lockdown", &["static deny"]);
    assert!(message.contains(&new_revision[..12]), "{message}");
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    let expect = Expect {
        revision: &new_revision,
        ..env.expect("deny", "lockdown", &[])
    };
    expect.check(&last);
    assert_eq!(reason(&last), "static deny");

    // Invalid again: the deny policy (and its revision) stays.
    std::fs::write(
        dir.join("policy.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Nope\n",
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_denied(
        &get_manifest(&env.proxy, REPO, "v1").await,
        "lockdown",
        &["static deny"],
    );
    let last = events_for(&env.proxy, &image.manifest.digest).pop().expect("event");
    expect.check(&last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_applies_to_children_of_an_admitted_index() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let child = oci_image_for("amd64", &[1000], 120);
    let index = oci_index(&[(&child, "amd64")]);
    registry.push_index(REPO, "multi", &index, &[&child]).await;
    push_legacy_signature(&registry, REPO, &index, &[&a]).await;
    let env = Env::start(registry, policy_dir(&[("a", &a)], APPS)).await;
    assert_manifest(&get_manifest(&env.proxy, REPO, "multi").await, &index, "index");
    let by_digest = child.manifest.digest.to_string();
    assert_manifest(
        &get_manifest(&env.proxy, REPO, &by_digest).await,
        &child.manifest,
        "child",
    );

    write_policy(env.policies.path(), &[("a", &a)], STATIC_DENY);
    wait_for_status(&env.proxy, "multi", StatusCode::FORBIDDEN).await;
    // The child was vouched for by the index under the old policy; the new
    // policy denies everything, the child included.
    assert_denied(
        &get_manifest(&env.proxy, REPO, &by_digest).await,
        "lockdown",
        &["static deny"],
    );
}

// ============================================================= 15: no policy

#[tokio::test]
async fn no_policy_refuses_to_start_unless_integrity_only() {
    use portcullis::config::{Config, Overrides};
    use portcullis::proxy::{Proxy, StartError};
    use portcullis::server::{ListenError, Server};
    use std::sync::Arc;

    let data = tempfile::tempdir().expect("tempdir");
    let empty = tempfile::tempdir().expect("tempdir");
    let missing = empty.path().join("missing");
    let config = |policies: &Path, integrity_only: bool| {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data.path().to_owned()),
            default_upstream: Some("http://127.0.0.1:1".parse().expect("url")),
            policies: Some(policies.to_owned()),
            integrity_only,
        };
        Config::load(None, &overrides).expect("config")
    };
    for dir in [empty.path(), missing.as_path()] {
        match Proxy::new(Arc::new(config(dir, false))) {
            Err(StartError::NoPolicy(d)) => assert_eq!(d, dir),
            other => panic!("expected NoPolicy for {}, got {other:?}", dir.display()),
        }
        match Server::bind(config(dir, false)).await {
            Err(ListenError::Start(StartError::NoPolicy(d))) => {
                assert_eq!(d, dir);
                let text = ListenError::Start(StartError::NoPolicy(d)).to_string();
                assert!(text.contains("--integrity-only"), "{text}");
            }
            Err(e) => panic!("expected NoPolicy, got {e}"),
            Ok(_) => panic!("the server started without a policy"),
        }
        let proxy = Proxy::new(Arc::new(config(dir, true))).expect("integrity-only starts");
        assert!(proxy.gate().policy().is_none());
    }
    // An invalid policy is an error of its own, naming the file.
    std::fs::write(empty.path().join("broken.yaml"), "apiVersion: x\n").expect("write");
    match Proxy::new(Arc::new(config(empty.path(), false))) {
        Err(StartError::Policy(e)) => assert!(e.to_string().contains("broken.yaml"), "{e}"),
        other => panic!("expected a policy error, got {other:?}"),
    }
}

// ============================================================= CLI

/// Run the built `portcullis` with a time limit in `cwd`: (exit code, stdout, stderr).
async fn portcullis(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run portcullis");
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("portcullis {args:?} did not finish within {LIMIT:?}"))
        .expect("portcullis output");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_policy_check_reports_revision_and_shadowed_rules() {
    let (a, _, _) = keys();
    let dir = policy_dir(
        &[("a", &a)],
        r#"
rules:
  - name: everything
    match: { repositories: ["**"] }
    require: { signatures: { anyOf: [key-a] } }
  - name: apps
    match: { repositories: ["test/**"] }
    static: allow
"#,
    );
    let policy = portcullis::policy::load_dir(dir.path()).expect("valid");
    let path = dir.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", path], dir.path()).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("policy in {path}: valid, revision {}", policy.revision)),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: rule `apps` is shadowed by the earlier rule `everything` and never applies"),
        "{stdout}"
    );

    // An invalid document: non-zero, naming the file and the problem.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        bad.path().join("10-bad.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nrules:\n  - name: x\n    match: { repositories: [\"**\"] }\n    static: maybe\n",
    )
    .expect("write");
    let bad_path = bad.path().to_str().expect("utf8");
    let (code, stdout, stderr) = portcullis(&["policy", "check", bad_path], bad.path()).await;
    assert_ne!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("10-bad.yaml"), "{stderr}");
    assert!(!stdout.contains("valid"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_allows_signed_and_denies_unsigned() {
    let (a, _, _) = keys();
    let registry = Distribution::start().await;
    let image = small_image(130);
    push_signed(&registry, REPO, "v1", &image, &[&a]).await;
    let unsigned = small_image(131);
    registry.push_image(REPO, "unsigned", &unsigned).await;
    let policies = policy_dir(&[("a", &a)], APPS);
    let rev = revision(policies.path());
    let work = tempfile::tempdir().expect("tempdir");
    let upstream = registry.url();
    let run = |tag: &'static str| {
        let image = format!("{}/{REPO}:{tag}", registry.host());
        let policies = policies.path().to_str().expect("utf8").to_owned();
        let upstream = upstream.clone();
        let cwd = work.path().to_owned();
        async move {
            portcullis(
                &[
                    "verify",
                    &image,
                    "--policies",
                    &policies,
                    "--default-upstream",
                    &upstream,
                ],
                &cwd,
            )
            .await
        }
    };

    let (code, stdout, stderr) = run("v1").await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("ALLOW {}/{REPO}:v1", registry.host())),
        "{stdout}"
    );
    assert!(stdout.contains("\"verdict\": \"allow\""), "{stdout}");
    assert!(
        stdout.contains("\"reason\": \"signatures verified by key-a\""),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("\"policy_revision\": \"{rev}\"")), "{stdout}");
    assert!(stdout.contains(&image.manifest.digest.to_string()), "{stdout}");

    let (code, stdout, stderr) = run("unsigned").await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("\"verdict\": \"deny\""), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "DENY {}/{REPO}:unsigned: denied by policy (rule `apps`",
            registry.host()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(NONE_VERIFIED), "{stdout}");
    assert!(stdout.contains("no signatures or attestations found"), "{stdout}");
    assert!(stdout.contains(&unsigned.manifest.digest.to_string()), "{stdout}");
}

/// SIGHUP reloads the policy even when the directory looks unchanged to the
/// file watcher: the new policy has the same size and modification time, so
/// only the signal can make the running binary pick it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let registry = Distribution::start().await;
    let image = oci_image(&[1024], 901);
    registry.push_image("test/app", "v1", &image).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |verdict: &str| {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nrules:\n  - name: all\n    match: {{ repositories: [\"**\"] }}\n    static: {verdict}\n"
        )
    };
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("allow")).expect("write policy");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let data = tempfile::tempdir().expect("data dir");
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", &listen, "--default-upstream", &registry.url()])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--policies")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run portcullis serve");
    let url = format!("http://{listen}/v2/test/app/manifests/v1");
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), reachable(&listen)).await
            && s
        {
            break;
        }
        assert!(Instant::now() < deadline, "portcullis did not start listening");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client::get(&url).await.status, StatusCode::OK, "static allow");

    // Same length ("deny " vs "allow"), same mtime: invisible to the watcher.
    let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).expect("mtime");
    std::fs::write(&file, policy("deny ")).expect("rewrite policy");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        client::get(&url).await.status,
        StatusCode::OK,
        "no reload without the signal"
    );

    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(&url).await;
        if r.status == StatusCode::FORBIDDEN {
            assert_eq!(r.error_code(), "DENIED");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the policy: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.expect("stop portcullis");
}

async fn reachable(addr: &str) -> std::io::Result<bool> {
    Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
}
