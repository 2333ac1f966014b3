//! Policy YAML: `yaml_serde` into `PolicyDoc`, then `policy::compile::compile`
//! (public; the directory loader only adds reading files). Never panics; a
//! compiled policy evaluates rule matches and checks without panicking.
//! Keys and trust roots may only name regular files under the Sigstore
//! fixtures (an input must not make the target read /dev/zero or a FIFO).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::policy::compile;
use portcullis::policy::schema::PolicyDoc;

static BASE: LazyLock<PathBuf> =
    LazyLock::new(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigstore"));

fn safe(p: &Path) -> bool {
    p.is_relative()
        && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        && std::fs::metadata(BASE.join(p)).is_ok_and(|m| m.is_file() && m.len() < 1 << 20)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut doc) = yaml_serde::from_str::<PolicyDoc>(text) else {
        return;
    };
    doc.keys.retain(|_, k| safe(&k.path));
    doc.trust_roots.retain(|_, t| safe(&t.trusted_root));
    let Ok(set) = compile::compile(vec![(BASE.join("fuzz.yaml"), text.to_owned(), doc)]) else {
        return;
    };
    let _ = set.short_revision();
    let statement = serde_json::json!({"predicate": {"buildType": "x", "n": [1, 2]}, "subject": []});
    for (registry, repository, tag) in [
        ("docker.io", "library/alpine", Some("latest")),
        ("registry.k8s.io", "pause", None),
        ("ghcr.io", "org/app/sub", Some("v1.2.3")),
        ("", "", Some("")),
    ] {
        let _ = set.rule_for(registry, repository, tag);
    }
    for rule in &set.rules {
        if let portcullis::policy::RuleAction::Verify(req) = &rule.action {
            for a in &req.attestations {
                for check in &a.checks {
                    let _ = check.evaluate(&statement);
                }
            }
        }
    }
});
