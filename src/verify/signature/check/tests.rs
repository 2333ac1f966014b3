//! Golden tests over the real cosign/Sigstore fixtures in
//! `tests/fixtures/sigstore/` (carried in the repository): positives
//! verify with the expected key or identity, negatives fail for the stated
//! reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::verify::signature::authority::{Authority, AuthorityKind, BlobSignatures, Identity, Matcher, Sct, Tlog};
use crate::verify::signature::{PublicKey, SignatureHash, TrustRoot};

fn fixture_path(rel: &str) -> String {
    format!("{}/tests/fixtures/sigstore/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = fixture_path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {p}: {e}"))
}

fn public_good() -> Arc<TrustRoot> {
    let p = fixture_path("trusted_root/public-good.trusted_root.json");
    Arc::new(TrustRoot::load("public-good", std::path::Path::new(&p), None).expect("trusted root"))
}

fn key_authority(key_file: &str, tlog: Tlog) -> Authority {
    let key = PublicKey::from_pem(&fixture(key_file), SignatureHash::Sha256).expect("key");
    Authority {
        name: "keys".into(),
        kind: AuthorityKind::Key {
            keys: vec![(key_file.into(), Arc::new(key))],
        },
        tlog,
        sct: Sct::Required,
        trust_root: (tlog != Tlog::Ignore).then(public_good),
        blob_signatures: BlobSignatures::Refuse,
    }
}

fn keyless_authority(subject: Matcher, issuer: &str) -> Authority {
    Authority {
        name: "keyless".into(),
        kind: AuthorityKind::Keyless {
            identities: vec![Identity {
                issuer: Matcher::Exact(issuer.into()),
                subject,
                claims: Vec::new(),
            }],
        },
        tlog: Tlog::Required,
        sct: Sct::Required,
        trust_root: Some(public_good()),
        blob_signatures: BlobSignatures::Refuse,
    }
}

struct Legacy {
    blob: Vec<u8>,
    annotations: BTreeMap<String, String>,
    image: Digest,
}

impl Legacy {
    fn load(case: &str) -> Legacy {
        let annotations: BTreeMap<String, String> =
            serde_json::from_slice(&fixture(&format!("legacy-tag/{case}/layer-annotations.json")))
                .expect("annotations");
        let manifest = fixture(&format!("legacy-tag/{case}/signed-image-manifest.json"));
        Legacy {
            blob: fixture(&format!("legacy-tag/{case}/layer-payload.json")),
            annotations,
            image: Digest::of(Algorithm::Sha256, &manifest),
        }
    }

    fn verify(&self, authority: &Authority) -> Result<Proof, SigError> {
        let layer = LegacyLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
            blob: &self.blob,
            annotations: &self.annotations,
        };
        verify_legacy(&layer, &self.image, authority)
    }
}

#[test]
fn legacy_key_only() {
    let l = Legacy::load("key-only");
    let proof = l
        .verify(&key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore))
        .expect("verifies");
    assert!(proof.is_signature() && !proof.tlog_verified);
    // The other key does not verify it.
    assert!(matches!(
        l.verify(&key_authority("legacy-tag/keys/cosign2.pub", Tlog::Ignore)),
        Err(SigError::BadSignature(_))
    ));
    // No Rekor entry: a tlog-requiring authority refuses it.
    assert_eq!(
        l.verify(&key_authority("legacy-tag/keys/cosign.pub", Tlog::Required))
            .err(),
        Some(SigError::MissingTlog)
    );
    // A flipped payload byte (still valid JSON) breaks the signature.
    let mut tampered = Legacy::load("key-only");
    let pos = tampered
        .blob
        .windows(4)
        .position(|w| w == b"cosi")
        .expect("text in payload");
    tampered.blob[pos] = b'C';
    assert!(matches!(
        tampered.verify(&key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore)),
        Err(SigError::BadSignature(_))
    ));
    // The payload names another image than the one asked about.
    let mut other = Legacy::load("key-only");
    other.image = Digest::of(Algorithm::Sha256, b"another image");
    assert!(matches!(
        other.verify(&key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore)),
        Err(SigError::NotForThisImage { .. })
    ));
}

#[test]
fn legacy_key_with_rekor_set() {
    let l = Legacy::load("key-rekor");
    let proof = l
        .verify(&key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required))
        .expect("verifies with SET");
    assert!(proof.tlog_verified);
    // A corrupted SET fails even though the signature itself is fine.
    let mut bad = Legacy::load("key-rekor");
    let set = bad.annotations.get_mut(BUNDLE_ANNOTATION).expect("bundle annotation");
    *set = set.replacen(
        "\"SignedEntryTimestamp\":\"MEYCIQCt",
        "\"SignedEntryTimestamp\":\"MEYCIQCu",
        1,
    );
    assert!(matches!(
        bad.verify(&key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required)),
        Err(SigError::Sigstore(_))
    ));
    // A SET from the log cannot be replayed for another signature: swap in
    // the key-only signature with this entry.
    let mut replay = Legacy::load("key-rekor");
    let other_sig = Legacy::load("key-only").annotations[SIGNATURE_ANNOTATION].clone();
    replay.annotations.insert(SIGNATURE_ANNOTATION.into(), other_sig);
    assert!(
        replay
            .verify(&key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required))
            .is_err()
    );
}

#[test]
fn legacy_keyless_fulcio_rekor() {
    let l = Legacy::load("keyless-fulcio-rekor");
    let ok = keyless_authority(
        Matcher::Exact("mitr@redhat.com".into()),
        "https://github.com/login/oauth",
    );
    let proof = l
        .verify(&ok)
        .expect("keyless legacy signature verifies at its integrated time");
    assert_eq!(proof.signer, "mitr@redhat.com (https://github.com/login/oauth)");
    assert!(proof.tlog_verified);
    let wrong = keyless_authority(
        Matcher::Exact("someone@example.com".into()),
        "https://github.com/login/oauth",
    );
    assert!(matches!(l.verify(&wrong), Err(SigError::Identity { .. })));
    let anchored = keyless_authority(
        Matcher::anchored("mitr@redhat").expect("regex"),
        "https://github.com/login/oauth",
    );
    assert!(
        matches!(l.verify(&anchored), Err(SigError::Identity { .. })),
        "regexps are anchored"
    );
    // Without the certificate there is nothing to chain.
    let mut no_cert = Legacy::load("keyless-fulcio-rekor");
    no_cert.annotations.remove(CERTIFICATE_ANNOTATION);
    assert_eq!(no_cert.verify(&ok).err(), Some(SigError::MissingCertificate));
}

const KUBEWARDEN_URI: &str =
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
const GHA: &str = "https://token.actions.githubusercontent.com";

fn kubewarden_image() -> Digest {
    "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"
        .parse()
        .expect("digest")
}

#[test]
fn bundle_v03_cosign_sign() {
    let bundle = fixture("bundle-v03/kubewarden-controller-v1.34.0.sigstore.json");
    let ok = keyless_authority(Matcher::Exact(KUBEWARDEN_URI.into()), GHA);
    let proof = verify_bundle(&bundle, &kubewarden_image(), &ok).expect("verifies");
    assert!(proof.is_signature() && proof.tlog_verified);
    // Regex identity, anchored.
    let re = keyless_authority(
        Matcher::anchored(r"https://github\.com/kubewarden/[a-z-]+/\.github/workflows/release\.yml@refs/tags/v[0-9.]+")
            .expect("re"),
        GHA,
    );
    assert!(verify_bundle(&bundle, &kubewarden_image(), &re).is_ok());
    // Another image digest: the statement subject does not name it.
    let other = Digest::of(Algorithm::Sha256, b"x");
    assert!(matches!(verify_bundle(&bundle, &other, &ok), Err(SigError::Malformed(m)) if m.contains("subject")));
    // Wrong issuer.
    let wrong = keyless_authority(Matcher::Exact(KUBEWARDEN_URI.into()), "https://accounts.google.com");
    assert!(matches!(
        verify_bundle(&bundle, &kubewarden_image(), &wrong),
        Err(SigError::Identity { .. })
    ));
}

#[test]
fn bundle_v03_negatives_fail() {
    let ok = keyless_authority(Matcher::Exact(KUBEWARDEN_URI.into()), GHA);
    for (file, why) in [
        ("kubewarden-tampered-integrated-time", "SET verification failed"),
        ("kubewarden-corrupted-set", "SET verification failed"),
        // The swapped payload names another subject: refused at the binding
        // before any cryptography, and sigstore-verify refuses it too.
        ("kubewarden-payload-swapped", "does not name"),
    ] {
        let bundle = fixture(&format!("bundle-v03/negative/{file}.sigstore.json"));
        let result = verify_bundle(&bundle, &kubewarden_image(), &ok);
        let err = result.expect_err(file).to_string();
        assert!(err.contains(why), "{file}: expected `{why}`, got `{err}`");
    }
    // With the subject check satisfied by the swapped subject itself, the
    // DSSE signature check must still refuse it.
    let swapped = fixture("bundle-v03/negative/kubewarden-payload-swapped.sigstore.json");
    let zeros: Digest = format!("sha256:{}", "0".repeat(64)).parse().expect("digest");
    let err = verify_bundle(&swapped, &zeros, &ok).expect_err("signature over the original payload");
    assert!(matches!(err, SigError::Sigstore(_)), "{err}");
}

#[test]
fn bundle_v03_attestation_custom_predicate() {
    let bundle = fixture("bundle-v03/cosign-oci-attestation-custom-predicate.sigstore.json");
    let image: Digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
        .parse()
        .expect("digest");
    let ok = keyless_authority(
        Matcher::Exact("cody@soyland.com".into()),
        "https://github.com/login/oauth",
    );
    let proof = verify_bundle(&bundle, &image, &ok).expect("verifies");
    assert!(!proof.is_signature());
    let (predicate_type, statement) = proof.statement.expect("statement");
    assert_eq!(predicate_type, "https://cosign.sigstore.dev/attestation/v1");
    assert!(statement.pointer("/predicate").is_some());
}

#[test]
fn bundle_v03_slsa_provenance_sha512_subject() {
    let bundle = fixture("bundle-v03/npm-sigstore-5.0.0-slsa-provenance-v1.sigstore.json");
    // The subject digest comes from the statement itself.
    let json: serde_json::Value = serde_json::from_slice(&bundle).expect("json");
    let payload = json
        .pointer("/dsseEnvelope/payload")
        .and_then(|p| p.as_str())
        .expect("payload");
    let statement: serde_json::Value = serde_json::from_slice(&decode_b64(payload).expect("b64")).expect("statement");
    let hex = statement
        .pointer("/subject/0/digest/sha512")
        .and_then(|s| s.as_str())
        .expect("sha512");
    let image: Digest = format!("sha512:{hex}").parse().expect("digest");
    let cert_identity = keyless_authority(
        Matcher::anchored("https://github.com/sigstore/sigstore-js/.*").expect("re"),
        GHA,
    );
    let proof = verify_bundle(&bundle, &image, &cert_identity).expect("verifies");
    let (predicate_type, st) = proof.statement.expect("statement");
    assert_eq!(predicate_type, "https://slsa.dev/provenance/v1");
    assert!(st.pointer("/predicate/runDetails/builder/id").is_some());
}

// ------------------------------------------------- signer identities (issue 9)

#[test]
fn proofs_name_their_signer_by_key_fingerprint_or_certificate_identity() {
    let l = Legacy::load("key-only");
    let authority = key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore);
    let proof = l.verify(&authority).expect("verifies");
    let key = PublicKey::from_pem(&fixture("legacy-tag/keys/cosign.pub"), SignatureHash::Sha256).expect("key");
    assert_eq!(proof.signer_id, SignerId::Key(key.fingerprint()));
    // Another authority holding the same key yields the same signer.
    let mut twin = key_authority("legacy-tag/keys/cosign.pub", Tlog::Ignore);
    twin.name = "twin".into();
    assert_eq!(l.verify(&twin).expect("verifies").signer_id, proof.signer_id);

    let keyless = Legacy::load("keyless-fulcio-rekor");
    let proof = keyless
        .verify(&keyless_authority(
            Matcher::anchored(".*@redhat\\.com").expect("re"),
            "https://github.com/login/oauth",
        ))
        .expect("verifies");
    assert_eq!(
        proof.signer_id,
        SignerId::Keyless {
            subject: "mitr@redhat.com".into(),
            issuer: "https://github.com/login/oauth".into()
        }
    );
    let bundle = fixture("bundle-v03/kubewarden-controller-v1.34.0.sigstore.json");
    let proof = verify_bundle(
        &bundle,
        &kubewarden_image(),
        &keyless_authority(Matcher::Exact(KUBEWARDEN_URI.into()), GHA),
    )
    .expect("verifies");
    assert_eq!(
        proof.signer_id,
        SignerId::Keyless {
            subject: KUBEWARDEN_URI.into(),
            issuer: GHA.into()
        }
    );
}

// ------------------------------------------------- tlog: required (issue 9)

#[test]
fn a_proof_without_verified_log_inclusion_does_not_count_when_the_log_is_required() {
    let signer = || Signer {
        label: "k".into(),
        id: SignerId::Key(Digest::of(Algorithm::Sha256, b"k")),
    };
    let required = key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required);
    assert_eq!(
        proof(&required, signer(), false, None).err(),
        Some(SigError::TlogNotVerified)
    );
    assert!(proof(&required, signer(), true, None).is_ok_and(|p| p.tlog_verified));
    let optional = key_authority("legacy-tag/keys/cosign2.pub", Tlog::Optional);
    assert!(proof(&optional, signer(), false, None).is_ok_and(|p| !p.tlog_verified));
    let mut keyless = keyless_authority(Matcher::Exact(KUBEWARDEN_URI.into()), GHA);
    assert_eq!(
        proof(&keyless, signer(), false, None).err(),
        Some(SigError::TlogNotVerified)
    );
    keyless.tlog = Tlog::Optional;
    assert!(proof(&keyless, signer(), false, None).is_ok());
}

#[test]
fn tlog_required_proofs_come_from_verified_log_entries() {
    // Every path that reaches a proof under `tlog: required` went through
    // the transparency-log verification and says so.
    let set = Legacy::load("key-rekor")
        .verify(&key_authority("legacy-tag/keys/cosign2.pub", Tlog::Required))
        .expect("SET verifies");
    assert!(set.tlog_verified);
    let keyless = Legacy::load("keyless-fulcio-rekor")
        .verify(&keyless_authority(
            Matcher::Exact("mitr@redhat.com".into()),
            "https://github.com/login/oauth",
        ))
        .expect("verifies");
    assert!(keyless.tlog_verified);
    // A key-based bundle without a log entry: refused under `required`.
    let (key, spki) = generated_p256();
    let image = Digest::of(Algorithm::Sha256, b"{\"schemaVersion\":2}");
    let bundle = key_bundle_over_statement(&key, &image);
    let mut authority = generated_key_authority(&spki, Tlog::Required);
    authority.trust_root = Some(public_good());
    assert_eq!(
        verify_bundle(&bundle, &image, &authority).err(),
        Some(SigError::MissingTlog)
    );
    authority.tlog = Tlog::Optional;
    let proof = verify_bundle(&bundle, &image, &authority).expect("optional log");
    assert!(!proof.tlog_verified);
}

// ------------------------------------------------- blob signatures (issue 9)

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

/// A fresh P-256 key pair and its DER SPKI.
fn generated_p256() -> (EcdsaKeyPair, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let spki = key.public_key().as_der().expect("spki").as_ref().to_vec();
    (key, spki)
}

fn sign(key: &EcdsaKeyPair, message: &[u8]) -> String {
    STANDARD.encode(key.sign(&SystemRandom::new(), message).expect("sign").as_ref())
}

fn generated_key_authority(spki: &[u8], tlog: Tlog) -> Authority {
    Authority {
        name: "team".into(),
        kind: AuthorityKind::Key {
            keys: vec![(
                "team".into(),
                Arc::new(PublicKey::from_spki_der(spki, SignatureHash::Sha256).expect("key")),
            )],
        },
        tlog,
        sct: Sct::Required,
        trust_root: None,
        blob_signatures: BlobSignatures::Refuse,
    }
}

/// `cosign sign --key --tlog-upload=false` (bundle format) for `image`.
fn key_bundle_over_statement(key: &EcdsaKeyPair, image: &Digest) -> Vec<u8> {
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [ { "digest": { "sha256": image.hex() } } ],
        "predicateType": COSIGN_SIGN_PREDICATE,
        "predicate": {}
    })
    .to_string();
    let sig = sign(key, &payload::pae(IN_TOTO_PAYLOAD_TYPE, statement.as_bytes()));
    serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": "" } },
        "dsseEnvelope": {
            "payload": STANDARD.encode(&statement),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [ { "sig": sig } ]
        }
    }))
    .expect("json")
}

/// `cosign sign-blob --key --bundle … --tlog-upload=false` over
/// `manifest`: a messageSignature whose digest field says `named`.
fn blob_bundle(key: &EcdsaKeyPair, manifest: &[u8], named: Option<&Digest>) -> Vec<u8> {
    let mut message = serde_json::json!({ "signature": sign(key, manifest) });
    if let Some(d) = named {
        message["messageDigest"] = serde_json::json!({
            "algorithm": "SHA2_256",
            "digest": STANDARD.encode(d.as_bytes())
        });
    }
    serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": "" } },
        "messageSignature": message
    }))
    .expect("json")
}

#[test]
fn blob_signatures_over_the_manifest_count_only_when_the_authority_opts_in() {
    let (key, spki) = generated_p256();
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let image = Digest::of(Algorithm::Sha256, manifest);
    let bundle = blob_bundle(&key, manifest, Some(&image));

    // Default: a sign-blob bundle is not an image signature.
    let mut authority = generated_key_authority(&spki, Tlog::Ignore);
    assert_eq!(
        verify_bundle(&bundle, &image, &authority).err(),
        Some(SigError::BlobSignatureNotAccepted)
    );

    // Opted in: it counts, as a signature, by this key.
    authority.blob_signatures = BlobSignatures::AcceptOverManifest;
    let proof = verify_bundle(&bundle, &image, &authority).expect("opted in");
    assert!(proof.is_signature());
    assert_eq!(
        proof.signer_id,
        SignerId::Key(
            PublicKey::from_spki_der(&spki, SignatureHash::Sha256)
                .expect("key")
                .fingerprint()
        )
    );

    // The message digest must be this manifest's digest ...
    let other = Digest::of(Algorithm::Sha256, b"another manifest");
    assert!(matches!(
        verify_bundle(&blob_bundle(&key, manifest, Some(&other)), &image, &authority),
        Err(SigError::NotForThisImage { .. })
    ));
    // ... and present (sigstore-verify compares it only when present).
    assert!(matches!(
        verify_bundle(&blob_bundle(&key, manifest, None), &image, &authority),
        Err(SigError::Malformed(m)) if m.contains("messageDigest")
    ));
    // A signature over other bytes that claims this digest does not verify.
    let lying = blob_bundle(&key, b"other bytes", Some(&image));
    assert!(matches!(
        verify_bundle(&lying, &image, &authority),
        Err(SigError::BadSignature(_))
    ));
    // The same bundle presented for another image names the wrong digest.
    assert!(matches!(
        verify_bundle(&bundle, &other, &authority),
        Err(SigError::NotForThisImage { .. })
    ));
}
