//! The container image fails closed: its policy directory, assembled from
//! the Dockerfile's own `COPY` lines, enforces every rule and refuses an
//! unsigned image; the rollout directory it also ships audits instead.

use http::StatusCode;
use portcullis::policy::{Mode, NoMatch};

use crate::support::client;
use crate::support::distribution::Distribution;
use crate::support::images::{OCI_MANIFEST, oci_image};
use crate::support::proxy::TestProxy;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The image's `/etc/portcullis/<dir>` rebuilt in a temporary root from the
/// Dockerfile's `COPY` lines (both files and directories), so the test
/// follows the Dockerfile rather than a copy of it.
fn image_dir(root: &std::path::Path, dir: &str) -> std::path::PathBuf {
    let dockerfile = std::fs::read_to_string(format!("{REPO}/Dockerfile")).expect("Dockerfile");
    let prefix = "/etc/portcullis/";
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let [_, src, dest] = words.as_slice() else { continue };
        let Some(rel) = dest.strip_prefix(prefix) else { continue };
        let target = root.join(rel);
        let source = std::path::Path::new(REPO).join(src);
        if source.is_dir() {
            copy_dir(&source, &target);
        } else {
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&source, &target).expect("copy");
        }
    }
    let out = root.join(dir);
    assert!(out.is_dir(), "the Dockerfile installs no /etc/portcullis/{dir}");
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn the_image_policy_enforces_every_rule_and_the_rollout_switch_audits() {
    let root = tempfile::tempdir().expect("tempdir");
    let enforcing = portcullis::policy::load_dir(&image_dir(root.path(), "policies")).expect("image policy loads");
    assert!(!enforcing.rules.is_empty());
    for rule in &enforcing.rules {
        assert_eq!(rule.mode, Mode::Enforce, "rule {} audits in the image", rule.name);
    }
    assert_eq!(enforcing.no_match, NoMatch::Deny);

    let rollout =
        portcullis::policy::load_dir(&image_dir(root.path(), "policies-audit")).expect("rollout policy loads");
    assert!(
        rollout.rules.iter().any(|r| r.mode == Mode::Audit),
        "the rollout directory audits its catch-all"
    );
    let dockerfile = std::fs::read_to_string(format!("{REPO}/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("ENV PORTCULLIS_POLICIES=/etc/portcullis/policies\n"));
}

/// Served with the image's policy, an unsigned image is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_policy_refuses_an_unsigned_image() {
    let registry = Distribution::start().await;
    registry.push_image("team/app", "v1", &oci_image(&[2048], 1103)).await;
    let root = tempfile::tempdir().expect("tempdir");
    let proxy = TestProxy::with_policies(&registry.url(), &image_dir(root.path(), "policies")).await;
    let r = client::request(
        http::Method::GET,
        &proxy.url("/v2/team/app/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "DENIED");

    let rollout = TestProxy::with_policies(&registry.url(), &image_dir(root.path(), "policies-audit")).await;
    let r = client::request(
        http::Method::GET,
        &rollout.url("/v2/team/app/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the rollout switch serves and audits");
    let audit = rollout.audit_events();
    assert!(audit.iter().any(|e| e["verdict"] == "would-deny"), "{audit:?}");
}

/// The Kubernetes example probes the admin listener the image opens, and
/// ships the Deployment, Service and PodDisruptionBudget.
#[test]
fn the_kubernetes_example_probes_the_admin_port() {
    let text = std::fs::read_to_string(format!("{REPO}/deploy/kubernetes/portcullis.yaml")).expect("manifests");
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| yaml_serde::from_str(d).expect("a YAML document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
    let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let admin = args
        .windows(2)
        .find(|w| w[0] == "--admin-listen")
        .map(|w| w[1])
        .expect("--admin-listen");
    let admin_port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("admin port");
    assert!(admin.ends_with(&format!(":{admin_port}")), "{admin} vs {admin_port}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
}
