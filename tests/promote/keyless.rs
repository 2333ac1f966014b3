//! A keyless promoter recognised among the signers: a test Fulcio CA and a
//! test Rekor key (in a trusted root written by the test) let the test make
//! keyless legacy signatures that verify offline — a leaf certificate with
//! an email identity and the OIDC issuer extension, a hashedrekord entry and
//! its signed entry timestamp. The build authority accepts any identity of
//! the domain; the promoter's identity is one of them.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis::oci::Algorithm;
use serde_json::json;

use super::common::*;
use crate::support::cosign::{
    docker_reference, legacy_manifest, push_legacy_object, sig_tag as cosign_sig_tag, signature_layer_raw,
    simple_signing_payload,
};

const ISSUER: &str = "https://issuer.acme.test";
const BUILDER: &str = "builder@acme.test";
const PROMOTER: &str = "release@acme.test";

/// The test's Fulcio and Rekor, and the trusted root naming them.
struct Sigstore {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    rekor: EcdsaKeyPair,
    rekor_spki: Vec<u8>,
}

impl Sigstore {
    fn new() -> Sigstore {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "test fulcio");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "test");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key")).expect("CA");
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let rekor = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
        let rekor_spki = rekor.public_key().as_der().expect("spki").as_ref().to_vec();
        Sigstore { ca, rekor, rekor_spki }
    }

    fn trusted_root(&self) -> serde_json::Value {
        let log_id = Digest::of(Algorithm::Sha256, &self.rekor_spki);
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.acme.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": STANDARD.encode(&self.rekor_spki),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": { "start": "2020-01-01T00:00:00Z" }
                },
                "logId": { "keyId": STANDARD.encode(log_id.as_bytes()) }
            }],
            "certificateAuthorities": [{
                "subject": { "organization": "test", "commonName": "test fulcio" },
                "uri": "https://fulcio.acme.test",
                "certChain": { "certificates": [{ "rawBytes": STANDARD.encode(self.ca.der()) }] },
                "validFor": { "start": "2020-01-01T00:00:00Z" }
            }],
            "ctlogs": [],
            "timestampAuthorities": []
        })
    }

    /// A Fulcio-like leaf for `email` (issuer extension, code signing) and its key.
    fn leaf(&self, email: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(email.try_into().expect("email"))];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2021, 1, 1);
        params.not_after = rcgen::date_time_ymd(2089, 1, 1);
        // 1.3.6.1.4.1.57264.1.8: the OIDC issuer, a DER UTF8String.
        let mut issuer = vec![0x0c, ISSUER.len() as u8];
        issuer.extend_from_slice(ISSUER.as_bytes());
        params.custom_extensions = vec![
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], issuer),
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 1], ISSUER.as_bytes().to_vec()),
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf");
        (cert, key)
    }

    /// A keyless legacy signature layer of `image` by `email`: signature,
    /// certificate, chain and a Rekor bundle (hashedrekord, SET).
    fn signature_layer(&self, reference: &str, image: &Digest, email: &str) -> crate::support::cosign::SignedLayer {
        let (cert, key) = self.leaf(email);
        let payload = simple_signing_payload(reference, image);
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der()).expect("key");
        let rng = SystemRandom::new();
        let sig = signer.sign(&rng, &payload).expect("sign").as_ref().to_vec();
        let cert_pem = cert.pem();
        let body = json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": { "hash": { "algorithm": "sha256", "value": Digest::of(Algorithm::Sha256, &payload).hex() } },
                "signature": { "content": STANDARD.encode(&sig), "publicKey": { "content": STANDARD.encode(cert_pem.as_bytes()) } }
            }
        });
        let body = STANDARD.encode(body.to_string());
        let integrated_time = jiff::Timestamp::now().as_second() - 60;
        let log_id = Digest::of(Algorithm::Sha256, &self.rekor_spki).hex();
        // RFC 8785 canonical JSON: keys sorted, no whitespace.
        let canonical = format!(
            "{{\"body\":\"{body}\",\"integratedTime\":{integrated_time},\"logID\":\"{log_id}\",\"logIndex\":1}}"
        );
        let set = self.rekor.sign(&rng, canonical.as_bytes()).expect("SET");
        let bundle = json!({
            "SignedEntryTimestamp": STANDARD.encode(set.as_ref()),
            "Payload": { "body": body, "integratedTime": integrated_time, "logIndex": 1, "logID": log_id }
        });
        let extra = std::collections::BTreeMap::from([
            ("dev.sigstore.cosign/certificate".to_owned(), cert_pem),
            ("dev.sigstore.cosign/chain".to_owned(), self.ca.pem()),
            ("dev.sigstore.cosign/bundle".to_owned(), bundle.to_string()),
        ]);
        signature_layer_raw(payload, &sig, &extra)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_promoter_signing_under_the_build_authority_is_refused() {
    let sigstore = Sigstore::new();
    let policies = tempfile::tempdir().expect("tempdir");
    let root = policies.path().join("trusted_root.json");
    std::fs::write(&root, sigstore.trusted_root().to_string()).expect("root");
    // The build authority accepts every identity of the domain, the
    // promoter's included: authority names alone cannot tell them apart.
    let identity = |subject: &str| format!("{{ issuer: \"{ISSUER}\", {subject} }}");
    let policy = format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: Policy\ntrustRoots:\n  t: {{ trustedRoot: {} }}\n\
         authorities:\n  \
         builders: {{ keyless: {{ trustRoot: t, identities: [ {} ] }}, sct: ignore }}\n  \
         promoter: {{ keyless: {{ trustRoot: t, identities: [ {} ] }}, sct: ignore }}\n\
         rules:\n  - name: apps\n    match: {{ repositories: [\"test/**\"] }}\n    require: {{ signatures: {{ anyOf: [builders] }} }}\n\
         promotion:\n  promoter: promoter\n",
        root.display(),
        identity("subjectRegExp: '.*@acme\\.test'"),
        identity(&format!("subject: \"{PROMOTER}\"")),
    );
    std::fs::write(policies.path().join("policy.yaml"), policy).expect("policy");
    let s = Setup::start_with(policies).await;
    let reference = docker_reference(&s.staging, REPO);
    for (tag, seed, who) in [("by-promoter", 491, PROMOTER), ("by-builder", 492, BUILDER)] {
        let image = small_image(seed);
        s.staging.push_image(REPO, tag, &image).await;
        let layer = sigstore.signature_layer(&reference, &image.manifest.digest, who);
        let object = legacy_manifest(vec![layer]);
        push_legacy_object(&s.staging, REPO, &cosign_sig_tag(&image.manifest.digest), &object).await;
    }

    let (code, report) = s.promote("by-promoter", "stable", &[]).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report["error"],
        format!(
            "separation of roles: the promoter's authority `promoter` accepts {PROMOTER} ({ISSUER}), who signed for the source's requirement"
        )
    );
    assert_eq!(manifest_digest(&s.prod, "stable").await, None);

    let (code, report) = s.promote("by-builder", "stable", &[]).await;
    assert_eq!(code, 0, "{report}");
    let (code, stdout, stderr) = s.portcullis(&["verify", &format!("prod.test/{REPO}:stable")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}
