//! Policy compilation and evaluation tests, with real YAML files and keys.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;

use super::*;

fn write_p256_key(dir: &Path, name: &str) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("kp");
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(kp.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    std::fs::write(
        dir.join(name),
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
    )
    .expect("write key");
}

fn trusted_root_path() -> String {
    format!(
        "{}/tests/fixtures/sigstore/trusted_root/public-good.trusted_root.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A directory with keys a, b, c and the given policy text.
fn policy_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for k in ["a.pub", "b.pub", "c.pub"] {
        write_p256_key(dir.path(), k);
    }
    let yaml = yaml.replace("TRUSTED_ROOT", &trusted_root_path());
    std::fs::write(dir.path().join("policy.yaml"), yaml).expect("write policy");
    dir
}

fn load(yaml: &str) -> Result<PolicySet, PolicyError> {
    let dir = policy_dir(yaml);
    load_dir(dir.path())
}

const KEYS: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: Policy
keys:
  a: { path: a.pub }
  b: { path: b.pub }
  c: { path: c.pub }
authorities:
  key-a: { key: { keys: [a] }, tlog: ignore }
  key-b: { key: { keys: [b] }, tlog: ignore }
  key-c: { key: { keys: [c] }, tlog: ignore }
"#;

fn with_rules(rules: &str) -> String {
    format!("{KEYS}rules:\n{rules}")
}

fn evidence(authorities: &[&str]) -> Evidence {
    let mut e = Evidence::default();
    for a in authorities {
        e.signatures.insert((*a).to_owned(), vec!["test".into()]);
    }
    e
}

#[test]
fn first_match_wins_and_no_match_denies() {
    let p = load(&with_rules(
        r#"
  - name: platform
    match: { repositories: ["platform/base"] }
    require: { signatures: { anyOf: [key-b] } }
  - name: apps
    match: { repositories: ["apps/*"] }
    require: { signatures: { anyOf: [key-a] } }
"#,
    ))
    .expect("valid");
    assert_eq!(
        p.rule_for("docker.io", "apps/web", Some("v1")).map(|r| r.name.as_str()),
        Some("apps")
    );
    assert_eq!(
        p.rule_for("docker.io", "platform/base", None).map(|r| r.name.as_str()),
        Some("platform")
    );
    let d = eval::evaluate(&p, p.rule_for("x", "other/thing", None), &Evidence::default());
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule, None);
    assert_eq!(p.revision.len(), 64);
}

#[test]
fn threshold_two_of_three_with_a_required_authority() {
    let p = load(&with_rules(
        r#"
  - name: prod
    match: { registry: ghcr.io, repositories: ["acme/prod/**"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2, required: [key-a] } }
"#,
    ))
    .expect("valid");
    let rule = p.rule_for("ghcr.io", "acme/prod/api", Some("v1"));
    assert!(rule.is_some());
    assert!(
        p.rule_for("docker.io", "acme/prod/api", None).is_none(),
        "registry must match"
    );
    let decide = |who: &[&str]| eval::evaluate(&p, rule, &evidence(who));
    assert_eq!(decide(&["key-a", "key-b"]).verdict, Verdict::Allow);
    assert_eq!(
        decide(&["key-a", "key-b"]).satisfied,
        vec!["key-a".to_owned(), "key-b".to_owned()]
    );
    assert_eq!(decide(&["key-a"]).verdict, Verdict::Deny);
    let d = decide(&["key-b", "key-c"]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reasons.iter().any(|r| r.contains("required authority `key-a`")),
        "{:?}",
        d.reasons
    );
    // An authority counts once however many signatures it made.
    let mut e = evidence(&["key-a"]);
    e.signatures.get_mut("key-a").expect("present").push("second".into());
    assert_eq!(eval::evaluate(&p, rule, &e).verdict, Verdict::Deny);
}

#[test]
fn attestation_checks() {
    let p = load(&with_rules(
        r#"
  - name: slsa
    match: { repositories: ["**"] }
    require:
      attestations:
        - name: provenance
          predicateType: https://slsa.dev/provenance/v1
          authorities: [key-a]
          checks:
            - { path: /predicate/runDetails/builder/id, startsWith: "https://github.com/acme/" }
            - { path: /predicate/buildDefinition/externalParameters/workflow/ref, matches: 'refs/tags/v.*' }
            - { path: /predicate/buildDefinition/buildType, exists: true }
"#,
    ))
    .expect("valid");
    let rule = p.rule_for("r", "x", None);
    let statement = |builder: &str| {
        serde_json::json!({
            "predicate": {
                "runDetails": { "builder": { "id": builder } },
                "buildDefinition": { "buildType": "t", "externalParameters": { "workflow": { "ref": "refs/tags/v1.2" } } }
            }
        })
    };
    let with = |authority: &str, pt: &str, builder: &str| Evidence {
        attestations: vec![VerifiedAttestation {
            authority: authority.into(),
            predicate_type: pt.into(),
            statement: statement(builder),
        }],
        ..Default::default()
    };
    let slsa = "https://slsa.dev/provenance/v1";
    assert_eq!(
        eval::evaluate(&p, rule, &with("key-a", slsa, "https://github.com/acme/builder")).verdict,
        Verdict::Allow
    );
    let d = eval::evaluate(&p, rule, &with("key-a", slsa, "https://evil.example/builder"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reasons[0].contains("/predicate/runDetails/builder/id"),
        "{:?}",
        d.reasons
    );
    // Right predicate from the wrong authority, or wrong predicate type: no.
    assert_eq!(
        eval::evaluate(&p, rule, &with("key-b", slsa, "https://github.com/acme/b")).verdict,
        Verdict::Deny
    );
    assert_eq!(
        eval::evaluate(
            &p,
            rule,
            &with("key-a", "https://slsa.dev/provenance/v0.2", "https://github.com/acme/b")
        )
        .verdict,
        Verdict::Deny
    );
}

#[test]
fn audit_mode_serves_but_records_denial() {
    let p = load(&with_rules(
        r#"
  - name: rollout
    match: { registry: docker.io, repositories: ["library/*"] }
    mode: audit
    require: { signatures: { anyOf: [key-a] } }
  - name: scratch
    match: { repositories: ["scratch/**"] }
    static: allow
"#,
    ))
    .expect("valid");
    let d = eval::evaluate(
        &p,
        p.rule_for("docker.io", "library/alpine", None),
        &Evidence::default(),
    );
    assert_eq!((d.verdict, d.mode, d.serves()), (Verdict::Deny, Mode::Audit, true));
    let d = eval::evaluate(&p, p.rule_for("any", "scratch/x/y", None), &Evidence::default());
    assert_eq!(d.verdict, Verdict::Allow);
}

const KEYLESS: &str = r#"
apiVersion: portcullis.dev/v1alpha1
kind: Policy
trustRoots:
  public-good: { trustedRoot: TRUSTED_ROOT, sha256: PIN }
authorities:
  acme:
    keyless:
      trustRoot: public-good
      identities:
        - issuer: https://token.actions.githubusercontent.com
          subjectRegExp: 'https://github\.com/acme/[a-z0-9-]+/\.github/workflows/release\.yml@refs/tags/v[0-9.]+'
          sourceRepositoryRefRegExp: 'refs/tags/v[0-9.]+'
rules:
  - name: acme
    match: { registry: ghcr.io, repositories: ["acme/**"] }
    require: { signatures: { anyOf: [acme] } }
"#;

#[test]
fn keyless_authority_with_pinned_trust_root_and_anchored_regex() {
    let pin = "6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66";
    let p = load(&KEYLESS.replace("PIN", pin)).expect("valid keyless policy");
    let Some(a) = p.authorities.get("acme") else {
        panic!("authority")
    };
    assert_eq!(a.tlog, Tlog::Required, "keyless defaults to tlog: required");
    let AuthorityKind::Keyless { identities } = &a.kind else {
        panic!("keyless")
    };
    let subject = &identities[0].subject;
    assert!(subject.matches("https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2"));
    assert!(!subject.matches("https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2-evil"));
    assert!(!subject.matches("xhttps://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1"));
    assert_eq!(identities[0].claims.len(), 1);

    let bad_pin = load(&KEYLESS.replace("PIN", &"0".repeat(64)));
    assert!(
        matches!(bad_pin, Err(PolicyError::Invalid { ref message, .. }) if message.contains("pins")),
        "{bad_pin:?}"
    );
    let ignore_tlog = load(
        &KEYLESS
            .replace("PIN", pin)
            .replace("  acme:\n    keyless:", "  acme:\n    tlog: ignore\n    keyless:"),
    );
    assert!(ignore_tlog.is_err_and(|e| e.to_string().contains("verified time")));
}

#[test]
fn shadowed_rules_are_reported() {
    let p = load(&with_rules(
        r#"
  - name: everything
    match: { repositories: ["**"] }
    static: deny
  - name: never
    match: { repositories: ["apps/web"] }
    static: allow
"#,
    ))
    .expect("valid");
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("`never`"));
}

#[test]
fn invalid_policies_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        (
            "  - name: r\n    match: { repositories: [x] }\n    require: { signatures: { anyOf: [nobody] } }\n",
            "unknown authority `nobody`",
        ),
        (
            "  - name: r\n    match: { repositories: [x] }\n    require: { signatures: { anyOf: [key-a], threshold: 2 } }\n",
            "threshold 2",
        ),
        (
            "  - name: r\n    match: { repositories: [x] }\n    require: { signatures: { anyOf: [key-a], required: [key-b] } }\n",
            "must also be listed",
        ),
        ("  - name: r\n    match: { repositories: [x] }\n", "needs `static"),
        (
            "  - name: r\n    match: { repositories: [x] }\n    static: allow\n    require: { signatures: { anyOf: [key-a] } }\n",
            "not both",
        ),
        (
            "  - name: r\n    match: { repositories: [x] }\n    require: { attestations: [ { name: p, predicateType: t, authorities: [key-a], checks: [ { path: /a, equals: 1, exists: true } ] } ] }\n",
            "exactly one of",
        ),
        (
            "  - name: r\n    match: { repositories: [x] }\n    require: { attestations: [ { name: p, predicateType: t, authorities: [key-a], checks: [ { path: a } ] } ] }\n",
            "JSON pointer",
        ),
    ];
    for (rules, expected) in cases {
        let err = load(&with_rules(rules)).expect_err(expected);
        assert!(err.to_string().contains(expected), "expected `{expected}` in `{err}`");
    }
    let err = load(&format!("{KEYS}colour: red\n")).expect_err("unknown key");
    assert!(err.to_string().contains("colour"), "{err}");
    let err = load(&KEYS.replace(
        "key-a: { key: { keys: [a] }, tlog: ignore }",
        "key-a: { key: { keys: [a] } }",
    ))
    .expect_err("tlog without root");
    assert!(err.to_string().contains("trustRoot"), "{err}");
}
