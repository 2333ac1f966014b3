//! Cold signature-verification latency per format, through the library API
//! (no network, no verdict cache): what one admission costs in CPU once the
//! verification material has been fetched.
//!
//! Run: `cargo bench --bench verification` (about 30 s), optionally
//! `-- <substring>` to run only the cases whose name contains it.
//! Environment: `VERIFY_BENCH_SECONDS` = time budget per case [2.5],
//! `VERIFY_BENCH_MAX_ITERS` = iteration cap per case [20000].
//!
//! Fixtures are the real cosign / Sigstore outputs in
//! `tests/fixtures/sigstore/`. The key-based bundle
//! without a log entry is generated here with a fresh P-256 key, in the
//! shape `cosign sign --key --tlog-upload=false` (v3) writes.
//!
//! A small std-only harness (no criterion): warm-up, then per-call timings
//! with `Instant`, reported as median / p90.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis::oci::{Algorithm, Digest};
use portcullis::policy::{Authority, AuthorityKind, BlobSignatures, Identity, Matcher, Sct, Tlog};
use portcullis::verify::signature::check::{self, LegacyLayer, SIMPLE_SIGNING_MEDIA_TYPE};
use portcullis::verify::signature::{PublicKey, SignatureHash, TrustRoot};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sigstore");
const TRUSTED_ROOT: &str = "trusted_root/public-good.trusted_root.json";

// ------------------------------------------------------------------ harness

struct Stats {
    name: String,
    median: Duration,
    p90: Duration,
    min: Duration,
    /// The very first call of the case (before warm-up).
    first: Duration,
    iterations: usize,
}

struct Harness {
    budget: Duration,
    max_iters: usize,
    filter: Option<String>,
    results: Vec<Stats>,
}

impl Harness {
    fn from_env() -> Harness {
        let budget = std::env::var("VERIFY_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(2.5);
        let max_iters = std::env::var("VERIFY_BENCH_MAX_ITERS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(20_000);
        // `cargo bench` passes `--bench`; anything else not starting with `-` filters.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        Harness {
            budget: Duration::from_secs_f64(budget),
            max_iters,
            filter,
            results: Vec::new(),
        }
    }

    /// Time `f` per call: one first call (reported apart: lazy initialisation,
    /// cold CPU caches), warm-up (10% of the budget, at least 3 calls), then
    /// up to `max_iters` calls or the budget, whichever ends first (at least
    /// 10 calls). `f` must return `true` (the verification succeeded).
    fn bench(&mut self, name: &str, mut f: impl FnMut() -> bool) {
        if self.filter.as_deref().is_some_and(|flt| !name.contains(flt)) {
            return;
        }
        let t = Instant::now();
        assert!(f(), "{name}: verification failed on the first call");
        let first = t.elapsed();
        let warm_until = Instant::now() + self.budget / 10;
        let mut warm = 1;
        while warm < 3 || Instant::now() < warm_until {
            assert!(f(), "{name}: verification failed during warm-up");
            warm += 1;
        }
        let mut samples = Vec::with_capacity(self.max_iters.min(100_000));
        let end = Instant::now() + self.budget;
        while samples.len() < self.max_iters && (samples.len() < 10 || Instant::now() < end) {
            let t = Instant::now();
            let ok = f();
            samples.push(t.elapsed());
            assert!(ok, "{name}: verification failed");
        }
        samples.sort_unstable();
        let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        let s = Stats {
            name: name.to_owned(),
            median: pick(0.5),
            p90: pick(0.9),
            min: samples[0],
            first,
            iterations: samples.len(),
        };
        eprintln!(
            "  {:<58} median {:>9.1} µs  p90 {:>9.1} µs  ({} iterations)",
            s.name,
            us(s.median),
            us(s.p90),
            s.iterations
        );
        self.results.push(s);
    }

    fn print_table(&self) {
        println!();
        println!("## Portcullis signature verification, cold (no verdict cache), per call");
        println!();
        println!("| Format | median µs | p90 µs | min µs | first call µs | iterations |");
        println!("|---|---:|---:|---:|---:|---:|");
        for s in &self.results {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                s.name,
                us(s.median),
                us(s.p90),
                us(s.min),
                us(s.first),
                s.iterations
            );
        }
        println!();
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ------------------------------------------------------------------ fixtures

fn fixture_path(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

const MISSING_HINT: &str = "The verification benchmark reads the Sigstore golden fixtures in place from \
<repo>/tests/fixtures/sigstore (see its README.md).";

fn fixture(rel: &str) -> Vec<u8> {
    let p = fixture_path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}\n{MISSING_HINT}", p.display()))
}

fn public_good() -> Arc<TrustRoot> {
    let p = fixture_path(TRUSTED_ROOT);
    Arc::new(TrustRoot::load("public-good", &p, None).unwrap_or_else(|e| panic!("trusted root: {e}")))
}

fn key_authority(key_file: &str, tlog: Tlog, root: Option<Arc<TrustRoot>>) -> Authority {
    let key = PublicKey::from_pem(&fixture(key_file), SignatureHash::Sha256).expect("fixture key parses");
    Authority {
        name: "key".into(),
        kind: AuthorityKind::Key {
            keys: vec![(key_file.into(), Arc::new(key))],
        },
        tlog,
        sct: Sct::Required,
        trust_root: root,
        blob_signatures: BlobSignatures::Refuse,
    }
}

fn keyless_authority(subject: &str, issuer: &str, root: Arc<TrustRoot>) -> Authority {
    Authority {
        name: "keyless".into(),
        kind: AuthorityKind::Keyless {
            identities: vec![Identity {
                issuer: Matcher::Exact(issuer.into()),
                subject: Matcher::Exact(subject.into()),
                claims: Vec::new(),
            }],
        },
        tlog: Tlog::Required,
        sct: Sct::Required,
        trust_root: Some(root),
        blob_signatures: BlobSignatures::Refuse,
    }
}

/// A legacy `.sig` layer from a `legacy-tag/<case>` fixture and the image it signs.
struct Legacy {
    blob: Vec<u8>,
    annotations: BTreeMap<String, String>,
    image: Digest,
}

impl Legacy {
    fn load(case: &str) -> Legacy {
        let annotations = serde_json::from_slice(&fixture(&format!("legacy-tag/{case}/layer-annotations.json")))
            .expect("layer-annotations.json");
        Legacy {
            blob: fixture(&format!("legacy-tag/{case}/layer-payload.json")),
            annotations,
            image: Digest::of(
                Algorithm::Sha256,
                &fixture(&format!("legacy-tag/{case}/signed-image-manifest.json")),
            ),
        }
    }

    fn verify(&self, authority: &Authority) -> bool {
        let layer = LegacyLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
            blob: &self.blob,
            annotations: &self.annotations,
        };
        check::verify_legacy(black_box(&layer), &self.image, authority).is_ok()
    }
}

fn digest(s: &str) -> Digest {
    s.parse().expect("digest")
}

/// `cosign sign --key --tlog-upload=false` (v3): a v0.3 bundle without log
/// entry, DSSE over the cosign-sign in-toto Statement v1 for `image`, signed
/// by a fresh P-256 key. Returns the bundle JSON and the public key.
fn key_bundle(image: &Digest) -> (Vec<u8>, PublicKey) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let spki = kp.public_key().as_der().expect("SPKI").as_ref().to_vec();
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "digest": { "sha256": image.hex() }, "annotations": {} }],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .expect("json");
    let payload_type = "application/vnd.in-toto+json";
    let mut pae = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), statement.len()).into_bytes();
    pae.extend_from_slice(&statement);
    let sig = kp.sign(&rng, &pae).expect("sign");
    let bundle = serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "publicKey": { "hint": STANDARD.encode(Digest::of(Algorithm::Sha256, &spki).as_bytes()) }
        },
        "dsseEnvelope": {
            "payload": STANDARD.encode(&statement),
            "payloadType": payload_type,
            "signatures": [{ "sig": STANDARD.encode(sig.as_ref()) }],
        },
    }))
    .expect("json");
    let key = PublicKey::from_spki_der(&spki, SignatureHash::Sha256).expect("own key");
    (bundle, key)
}

/// A minimal policy directory: one key, one authority (tlog: ignore), one rule.
fn minimal_policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: Policy
keys:
  team-a: {{ path: {a} }}
authorities:
  key-a: {{ key: {{ keys: [team-a] }}, tlog: ignore }}
rules:
  - name: all
    match: {{ repositories: ["**"] }}
    require: {{ signatures: {{ anyOf: [key-a] }} }}
"#,
        a = fixture_path("legacy-tag/keys/cosign.pub").display(),
    );
    std::fs::write(dir.path().join("policy.yaml"), yaml).expect("write policy");
    dir
}

/// A small policy directory: the public-good trusted root, the two fixture
/// keys, three authorities (key/ignore, key+Rekor, keyless) and three rules.
/// Paths are absolute (into the fixtures); only the YAML is written.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: Policy
defaults: {{ mode: enforce, noMatch: deny, formats: [bundle, legacy] }}
trustRoots:
  public-good: {{ trustedRoot: {root} }}
keys:
  team-a: {{ path: {a} }}
  team-b: {{ path: {b} }}
authorities:
  key-a: {{ key: {{ keys: [team-a] }}, tlog: ignore }}
  key-b: {{ key: {{ keys: [team-b] }}, tlog: required, trustRoot: public-good }}
  redhat:
    keyless:
      trustRoot: public-good
      identities:
        - {{ issuer: https://github.com/login/oauth, subjectRegExp: '.*@redhat\.com' }}
rules:
  - name: platform
    match: {{ repositories: ["platform/**"] }}
    require: {{ signatures: {{ anyOf: [key-a, key-b], threshold: 1 }} }}
  - name: apps
    match: {{ registry: "ghcr.io", repositories: ["acme/*"], tags: ["v*"] }}
    require:
      signatures: {{ anyOf: [redhat] }}
      attestations:
        - name: provenance
          predicateType: https://slsa.dev/provenance/v1
          authorities: [redhat]
          checks:
            - {{ path: /predicate/buildDefinition/buildType, startsWith: "https://" }}
  - name: mirror
    match: {{ repositories: ["library/**"] }}
    static: allow
"#,
        root = fixture_path(TRUSTED_ROOT).display(),
        a = fixture_path("legacy-tag/keys/cosign.pub").display(),
        b = fixture_path("legacy-tag/keys/cosign2.pub").display(),
    );
    std::fs::write(dir.path().join("policy.yaml"), yaml).expect("write policy");
    dir
}

// ------------------------------------------------------------------ cases

fn main() -> ExitCode {
    if !Path::new(FIXTURES).join(TRUSTED_ROOT).is_file() {
        eprintln!("error: Sigstore fixtures not found at {FIXTURES}.\n{MISSING_HINT}");
        return ExitCode::FAILURE;
    }
    let mut h = Harness::from_env();
    let started = Instant::now();
    eprintln!(
        "verification benchmark: {:.1} s budget per case, at most {} iterations{}",
        h.budget.as_secs_f64(),
        h.max_iters,
        h.filter
            .as_deref()
            .map(|f| format!(", filter `{f}`"))
            .unwrap_or_default()
    );
    let root = public_good();

    // Legacy `.sig`, key only, tlog ignored: one ECDSA P-256 verify + payload parse.
    let key_only = Legacy::load("key-only");
    let a = key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore, None);
    h.bench("legacy .sig, key only (tlog: ignore)", || key_only.verify(&a));

    // Legacy `.sig`, key + Rekor SET (bundle annotation): key check, then the
    // v0.1 bundle bridge through sigstore-verify (SET over canonical JSON).
    let key_rekor = Legacy::load("key-rekor");
    let a = key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required, Some(root.clone()));
    h.bench("legacy .sig, key + Rekor SET (tlog: required)", || key_rekor.verify(&a));

    // Legacy `.sig`, keyless: Fulcio chain + SCT + SET + identity.
    let keyless = Legacy::load("keyless-fulcio-rekor");
    let a = keyless_authority("mitr@redhat.com", "https://github.com/login/oauth", root.clone());
    h.bench("legacy .sig, keyless Fulcio + Rekor SET", || keyless.verify(&a));

    // Sigstore bundle v0.3, keyless (cosign sign v3): DSSE, Fulcio, SET,
    // inclusion proof + checkpoint, RFC 3161 timestamp.
    let kubewarden = fixture("bundle-v03/kubewarden-controller-v1.34.0.sigstore.json");
    let image = digest("sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172");
    let a = keyless_authority(
        "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0",
        "https://token.actions.githubusercontent.com",
        root.clone(),
    );
    h.bench("bundle v0.3 keyless signature (kubewarden)", || {
        check::verify_bundle(black_box(&kubewarden), &image, &a).is_ok()
    });

    // Sigstore bundle v0.3 attestation (cosign attest --new-bundle-format).
    let att = fixture("bundle-v03/cosign-oci-attestation-custom-predicate.sigstore.json");
    let image = digest("sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4");
    let a = keyless_authority("cody@soyland.com", "https://github.com/login/oauth", root.clone());
    h.bench("bundle v0.3 keyless attestation (cosign attest)", || {
        check::verify_bundle(black_box(&att), &image, &a).is_ok()
    });

    // Key-based bundle without a log entry (generated; DSSE key check only).
    let image = Digest::of(Algorithm::Sha256, b"portcullis verification bench image");
    let (bundle, key) = key_bundle(&image);
    let a = Authority {
        name: "key".into(),
        kind: AuthorityKind::Key {
            keys: vec![("bench".into(), Arc::new(key))],
        },
        tlog: Tlog::Optional,
        sct: Sct::Required,
        trust_root: None,
        blob_signatures: BlobSignatures::Refuse,
    };
    h.bench("bundle v0.3 key, no tlog (generated P-256)", || {
        check::verify_bundle(black_box(&bundle), &image, &a).is_ok()
    });

    // Building the Sigstore verifier from trusted_root.json (read + sha256 +
    // parse + Verifier::new): once per policy load.
    let p = fixture_path(TRUSTED_ROOT);
    h.bench("TrustRoot::load (public-good trusted_root.json)", || {
        TrustRoot::load("public-good", black_box(&p), None).is_ok()
    });

    // Policy compilation: 1 trusted root, 2 keys, 3 authorities, 3 rules.
    let dir = policy_dir();
    h.bench(
        "policy::load_dir (1 root, 2 keys, 3 authorities, 3 rules)",
        || match portcullis::policy::load_dir(black_box(dir.path())) {
            Ok(p) => p.rules.len() == 3,
            Err(e) => panic!("policy: {e}"),
        },
    );

    let dir = minimal_policy_dir();
    h.bench(
        "policy::load_dir (1 key, 1 authority, 1 rule; no root)",
        || match portcullis::policy::load_dir(black_box(dir.path())) {
            Ok(p) => p.rules.len() == 1,
            Err(e) => panic!("policy: {e}"),
        },
    );

    h.print_table();
    println!(
        "cargo bench --bench verification; {} cores; total {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
