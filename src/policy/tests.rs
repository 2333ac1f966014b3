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

/// A stand-in signer identity (the fingerprint of `seed`).
fn signer(seed: &str) -> SignerId {
    SignerId::Key(crate::oci::Digest::of(crate::oci::Algorithm::Sha256, seed.as_bytes()))
}

/// One signature per `(authority, signer)`.
fn signed(by: &[(&str, &str)]) -> Evidence {
    Evidence {
        signatures: by
            .iter()
            .map(|(authority, who)| VerifiedSignature {
                authority: (*authority).to_owned(),
                signer: signer(who),
                source: format!("test signature by {who}"),
            })
            .collect(),
        ..Default::default()
    }
}

/// Each authority verified a signature by its own signer.
fn evidence(authorities: &[&str]) -> Evidence {
    let pairs: Vec<(&str, &str)> = authorities.iter().map(|a| (*a, *a)).collect();
    signed(&pairs)
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
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(d.rule(), None);
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
    assert_eq!(decide(&["key-a", "key-b"]).verdict(), Verdict::Allow);
    assert_eq!(
        decide(&["key-a", "key-b"]).satisfied(),
        vec!["key-a".to_owned(), "key-b".to_owned()]
    );
    assert_eq!(decide(&["key-a"]).verdict(), Verdict::Deny);
    let d = decide(&["key-b", "key-c"]);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(
        d.reasons().iter().any(|r| r.contains("required authority `key-a`")),
        "{:?}",
        d.reasons()
    );
    // An authority counts once however many signatures it made.
    let e = signed(&[("key-a", "one key of key-a"), ("key-a", "another key of key-a")]);
    assert_eq!(eval::evaluate(&p, rule, &e).verdict(), Verdict::Deny);
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
            signer: signer(authority),
            predicate_type: pt.into(),
            statement: statement(builder),
        }],
        ..Default::default()
    };
    let slsa = "https://slsa.dev/provenance/v1";
    assert_eq!(
        eval::evaluate(&p, rule, &with("key-a", slsa, "https://github.com/acme/builder")).verdict(),
        Verdict::Allow
    );
    let d = eval::evaluate(&p, rule, &with("key-a", slsa, "https://evil.example/builder"));
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(
        d.reasons()[0].contains("/predicate/runDetails/builder/id"),
        "{:?}",
        d.reasons()
    );
    // Right predicate from the wrong authority, or wrong predicate type: no.
    assert_eq!(
        eval::evaluate(&p, rule, &with("key-b", slsa, "https://github.com/acme/b")).verdict(),
        Verdict::Deny
    );
    assert_eq!(
        eval::evaluate(
            &p,
            rule,
            &with("key-a", "https://slsa.dev/provenance/v0.2", "https://github.com/acme/b")
        )
        .verdict(),
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
    assert_eq!((d.verdict(), d.mode(), d.serves()), (Verdict::Deny, Mode::Audit, true));
    let d = eval::evaluate(&p, p.rule_for("any", "scratch/x/y", None), &Evidence::default());
    assert_eq!(d.verdict(), Verdict::Allow);
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

// ------------------------------------------------- distinct signers (issue 9)

const TWO_OF_TWO: &str = r#"
  - name: both
    match: { repositories: ["**"] }
    require: { signatures: { anyOf: [key-a, key-b], threshold: 2 } }
"#;

#[test]
fn one_signer_accepted_by_two_authorities_counts_once() {
    let p = load(&with_rules(TWO_OF_TWO)).expect("valid");
    let rule = p.rule_for("r", "x", None);
    // Both authorities verified the same signer (one key named twice, or
    // one keyless identity matched by both): one signature, one count.
    let d = eval::evaluate(&p, rule, &signed(&[("key-a", "K"), ("key-b", "K")]));
    assert_eq!(d.verdict(), Verdict::Deny);
    assert_eq!(
        d.reasons(),
        vec![
            "signatures: 1 of 2 required authorities verified (key-a; needed 2 of [key-a, key-b]); \
             key-b verified only by signers already counted (a signer counts once)"
                .to_owned()
        ]
    );
    assert_eq!(d.satisfied(), vec!["key-a".to_owned(), "key-b".to_owned()]);
    assert_eq!(d.signers(), vec![signer("K")], "one signer, whichever authority");
    // Control: two signers.
    let d = eval::evaluate(&p, rule, &signed(&[("key-a", "K"), ("key-b", "L")]));
    assert_eq!(d.verdict(), Verdict::Allow);
    assert_eq!(d.reasons(), vec!["signatures verified by key-a, key-b".to_owned()]);
    let mut both = vec![signer("K"), signer("L")];
    both.sort();
    assert_eq!(d.signers(), both);
    // A signer under an authority the rule does not name is not listed.
    let d = eval::evaluate(&p, rule, &signed(&[("key-a", "K"), ("key-c", "M")]));
    assert_eq!(d.signers(), vec![signer("K")]);
}

#[test]
fn signers_are_assigned_so_that_as_many_authorities_count_as_possible() {
    let p = load(&with_rules(
        r#"
  - name: three
    match: { repositories: ["three/**"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 3 } }
  - name: two
    match: { repositories: ["two/**"] }
    require: { signatures: { anyOf: [key-a, key-b], threshold: 2 } }
"#,
    ))
    .expect("valid");
    let three = p.rule_for("r", "three/x", None);
    let two = p.rule_for("r", "two/x", None);
    // key-a verified K1 and K2, key-b only K1: key-b takes K1, key-a K2.
    let e = signed(&[("key-a", "K1"), ("key-a", "K2"), ("key-b", "K1")]);
    assert_eq!(eval::evaluate(&p, two, &e).verdict(), Verdict::Allow);
    // key-a and key-b share their only signer; key-c has two: three
    // authorities, three signers, but at most two can count together.
    let e = signed(&[("key-a", "K1"), ("key-b", "K1"), ("key-c", "K2"), ("key-c", "K3")]);
    let d = eval::evaluate(&p, three, &e);
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(d.reasons()[0].starts_with("signatures: 2 of 3"), "{:?}", d.reasons());
}

#[test]
fn required_authorities_need_a_signer_of_their_own() {
    let p = load(&with_rules(
        r#"
  - name: both-required
    match: { repositories: ["**"] }
    require: { signatures: { anyOf: [key-a, key-b, key-c], threshold: 2, required: [key-a, key-b] } }
"#,
    ))
    .expect("valid");
    let rule = p.rule_for("r", "x", None);
    let d = eval::evaluate(&p, rule, &signed(&[("key-a", "K"), ("key-b", "K"), ("key-c", "L")]));
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(
        d.reasons()
            .iter()
            .any(|r| r == "signatures: required authority `key-b` verified only by a signer already counted for another authority"),
        "{:?}",
        d.reasons()
    );
    // key-b also verified L: key-a keeps K, key-b takes L; key-c is left
    // without a signer of its own, which the threshold of 2 does not need.
    let d = eval::evaluate(
        &p,
        rule,
        &signed(&[("key-a", "K"), ("key-b", "K"), ("key-b", "L"), ("key-c", "L")]),
    );
    assert_eq!(d.verdict(), Verdict::Allow, "{:?}", d.reasons());
    assert_eq!(d.reasons(), vec!["signatures verified by key-a, key-b".to_owned()]);
}

#[test]
fn attestation_thresholds_count_distinct_signers() {
    let p = load(&with_rules(
        r#"
  - name: slsa
    match: { repositories: ["**"] }
    require:
      attestations:
        - { name: provenance, predicateType: "https://slsa.dev/provenance/v1", authorities: [key-a, key-b], threshold: 2 }
"#,
    ))
    .expect("valid");
    let rule = p.rule_for("r", "x", None);
    let by = |pairs: &[(&str, &str)]| Evidence {
        attestations: pairs
            .iter()
            .map(|(authority, who)| VerifiedAttestation {
                authority: (*authority).to_owned(),
                signer: signer(who),
                predicate_type: "https://slsa.dev/provenance/v1".into(),
                statement: serde_json::json!({}),
            })
            .collect(),
        ..Default::default()
    };
    let d = eval::evaluate(&p, rule, &by(&[("key-a", "K"), ("key-b", "K")]));
    assert_eq!(d.verdict(), Verdict::Deny);
    assert!(
        d.reasons()[0].contains("1 of 2 authorities satisfied: `key-b`: verified only by signers already counted"),
        "{:?}",
        d.reasons()
    );
    assert_eq!(
        eval::evaluate(&p, rule, &by(&[("key-a", "K"), ("key-b", "L")])).verdict(),
        Verdict::Allow
    );
}

#[test]
fn two_authorities_naming_the_same_key_are_refused() {
    // The same key under two names and two files (a copy), and under one
    // name used by two authorities.
    for (keys, both) in [
        ("  a: { path: a.pub }\n  copy: { path: copy-of-a.pub }\n", "[copy]"),
        ("  a: { path: a.pub }\n", "[a]"),
    ] {
        let dir = policy_dir("");
        std::fs::copy(dir.path().join("a.pub"), dir.path().join("copy-of-a.pub")).expect("copy");
        let yaml = format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\nkeys:\n{keys}authorities:\n  \
             alpha: {{ key: {{ keys: [a] }}, tlog: ignore }}\n  beta: {{ key: {{ keys: {both} }}, tlog: ignore }}\n"
        );
        std::fs::write(dir.path().join("policy.yaml"), yaml).expect("write");
        let err = load_dir(dir.path()).expect_err("shared key");
        let fingerprint = crate::verify::signature::PublicKey::from_pem(
            &std::fs::read(dir.path().join("a.pub")).expect("read"),
            crate::verify::signature::SignatureHash::Sha256,
        )
        .expect("key")
        .fingerprint();
        let PolicyError::SharedKey {
            first,
            second,
            fingerprint: found,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((first.as_str(), second.as_str()), ("alpha", "beta"));
        assert_eq!(found, &fingerprint);
        let text = err.to_string();
        assert!(
            text.contains(&fingerprint.to_string()) && text.contains("a.pub"),
            "{text}"
        );
    }
}

fn keyless_policy(first: &str, second: &str) -> String {
    format!(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: Policy
trustRoots:
  public-good: {{ trustedRoot: TRUSTED_ROOT }}
authorities:
  first: {{ keyless: {{ trustRoot: public-good, identities: [ {{ {first} }} ] }} }}
  second: {{ keyless: {{ trustRoot: public-good, identities: [ {{ {second} }} ] }} }}
"#
    )
}

#[test]
fn overlapping_keyless_identities_are_warned_about() {
    let gha = "issuer: https://token.actions.githubusercontent.com";
    let cases: &[(&str, &str, Option<&str>)] = &[
        // Exactly the same identity: certain.
        (
            "subject: https://github.com/acme/app/.github/workflows/r.yml@refs/heads/main",
            "subject: https://github.com/acme/app/.github/workflows/r.yml@refs/heads/main",
            Some("both accept the keyless identity"),
        ),
        // An exact subject the other's expression accepts: certain.
        (
            "subject: https://github.com/acme/app/.github/workflows/r.yml@refs/heads/main",
            r"subjectRegExp: 'https://github\.com/acme/.*'",
            Some("both accept the keyless identity"),
        ),
        // Nested expressions: not provably disjoint.
        (
            r"subjectRegExp: 'https://github\.com/.*'",
            r"subjectRegExp: 'https://github\.com/acme/.*'",
            Some("may overlap"),
        ),
        // Different literal prefixes, or suffixes: disjoint.
        (
            r"subjectRegExp: 'https://github\.com/acme/.*'",
            r"subjectRegExp: 'https://github\.com/other/.*'",
            None,
        ),
        (
            r"subjectRegExp: '.*@acme\.com'",
            r"subjectRegExp: '.*@other\.com'",
            None,
        ),
        // Different exact subjects.
        ("subject: a@acme.com", "subject: b@acme.com", None),
    ];
    for (first, second, expected) in cases {
        let yaml = keyless_policy(&format!("{gha}, {first}"), &format!("{gha}, {second}"));
        let p = load(&yaml).expect("valid: overlaps are warnings");
        match expected {
            Some(text) => {
                assert_eq!(p.warnings.len(), 1, "{first} / {second}: {:?}", p.warnings);
                assert!(
                    p.warnings[0].contains(text) && p.warnings[0].contains("`first` and `second`"),
                    "{first} / {second}: {:?}",
                    p.warnings
                );
            }
            None => assert!(p.warnings.is_empty(), "{first} / {second}: {:?}", p.warnings),
        }
    }
    // Same subject, different issuers: disjoint.
    let p = load(&keyless_policy(
        "issuer: https://accounts.google.com, subject: a@acme.com",
        "issuer: https://github.com/login/oauth, subject: a@acme.com",
    ))
    .expect("valid");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn the_policy_lists_every_file_its_revision_hashes() {
    let outside = tempfile::tempdir().expect("tempdir");
    write_p256_key(outside.path(), "far.pub");
    let dir = policy_dir("");
    std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
    write_p256_key(&dir.path().join("keys"), "near.pub");
    let yaml = format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\ntrustRoots:\n  pg: {{ trustedRoot: {root} }}\nkeys:\n  \
         near: {{ path: keys/near.pub }}\n  far: {{ path: {far} }}\nauthorities:\n  \
         near: {{ key: {{ keys: [near] }}, tlog: ignore }}\n  far: {{ key: {{ keys: [far] }}, tlog: ignore, \
         acceptBlobSignatures: true }}\n",
        root = trusted_root_path(),
        far = outside.path().join("far.pub").display(),
    );
    std::fs::write(dir.path().join("policy.yaml"), yaml).expect("write");
    let p = load_dir(dir.path()).expect("valid");
    let sources: Vec<&Path> = p.sources().collect();
    assert_eq!(
        sources,
        vec![
            dir.path().join("policy.yaml").as_path(),
            Path::new(&trusted_root_path()),
            // Keys in name order (the document's mapping is sorted).
            outside.path().join("far.pub").as_path(),
            dir.path().join("keys/near.pub").as_path(),
        ]
    );
    assert_eq!(p.authorities["far"].blob_signatures, BlobSignatures::AcceptOverManifest);
    assert_eq!(p.authorities["near"].blob_signatures, BlobSignatures::Refuse);
}

#[test]
fn the_promotion_section_names_an_existing_authority() {
    let rules = "  - name: apps\n    match: { repositories: [\"apps/*\"] }\n    require: { signatures: { anyOf: [key-a, key-b] } }\n";
    let p = load(&format!("{}promotion:\n  promoter: key-b\n", with_rules(rules))).expect("valid");
    assert_eq!(p.promoter.as_deref(), Some("key-b"));
    assert_eq!(load(&with_rules(rules)).expect("valid").promoter, None);
    let err = load(&format!("{}promotion:\n  promoter: key-z\n", with_rules(rules)))
        .expect_err("unknown authority")
        .to_string();
    assert!(
        err.contains("promotion.promoter") && err.contains("no authority named `key-z`"),
        "{err}"
    );
    let err = load(&format!(
        "{}promotion:\n  promoter: key-b\n  extra: 1\n",
        with_rules(rules)
    ))
    .expect_err("unknown field")
    .to_string();
    assert!(err.contains("extra"), "{err}");
}

#[test]
fn promotion_rules_compile_with_names_of_their_own() {
    let rules =
        "  - name: apps\n    match: { repositories: [\"apps/*\"] }\n    require: { signatures: { anyOf: [key-a] } }\n";
    let promotion = |name: &str| {
        format!(
            "{}promotion:\n  rules:\n    - name: {name}\n      match: {{ registry: prod.example, repositories: [\"apps/*\"] }}\n      require: {{ signatures: {{ anyOf: [key-a, key-b], threshold: 2 }} }}\n",
            with_rules(rules)
        )
    };
    let p = load(&promotion("into-prod")).expect("valid");
    assert_eq!(p.promoter, None);
    assert_eq!(p.promotion_rules.len(), 1);
    assert!(p.promotion_rules[0].matches("prod.example", "apps/web", Some("v1")));
    assert!(!p.promotion_rules[0].matches("staging.example", "apps/web", Some("v1")));
    let err = load(&promotion("apps"))
        .expect_err("a name shared with a pull rule")
        .to_string();
    assert!(
        err.contains("promotion.rules.apps") && err.contains("used twice"),
        "{err}"
    );
}
