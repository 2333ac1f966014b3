//! The cosign formats of `support::cosign`, proven without the proxy: the
//! library verifier accepts what the helpers sign and rejects each broken
//! variant for the precise reason, the legacy layout reproduces the real
//! cosign fixtures byte for byte, and the objects survive a round trip
//! through a real CNCF Distribution registry.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis::oci::{Algorithm, Digest};
use portcullis::verify::signature::authority::{Authority, AuthorityKind, BlobSignatures, Sct, Tlog};
use portcullis::verify::signature::check::{Proof, SigError, verify_bundle, verify_legacy};
use portcullis::verify::signature::{KeyKind, PublicKey, SignatureHash};
use serde_json::{Value, json};
use support::cosign::*;
use support::distribution::Distribution;
use support::images::{Blob, oci_image};

const REFERENCE: &str = "registry.test:5000/team/app";

fn fixture(rel: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/sigstore/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn authority_with(keys: &[(&str, &SigningKey)], tlog: Tlog) -> Authority {
    Authority {
        name: "test".into(),
        kind: AuthorityKind::Key {
            keys: keys
                .iter()
                .map(|(name, k)| ((*name).to_owned(), Arc::new(k.public_key())))
                .collect(),
        },
        tlog,
        sct: Sct::Required,
        trust_root: None,
        blob_signatures: BlobSignatures::Refuse,
    }
}

fn authority(key: &SigningKey) -> Authority {
    authority_with(&[("k", key)], Tlog::Ignore)
}

fn bad_signature() -> SigError {
    SigError::BadSignature("the keys of `test`".into())
}

fn image_digest(seed: u64) -> Digest {
    oci_image(&[64], seed).manifest.digest
}

fn slsa_predicate() -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": { "workflow": { "ref": "refs/tags/v1.2.3", "repository": "https://github.com/acme/app" } }
        },
        "runDetails": { "builder": { "id": "https://github.com/acme/builder/.github/workflows/build.yml@refs/tags/v1" } }
    })
}

// ------------------------------------------------------------ fixtures

#[test]
fn simple_signing_payload_matches_cosign_byte_for_byte() {
    for case in ["key-only", "key-rekor", "keyless-fulcio-rekor"] {
        let real = fixture(&format!("legacy-tag/{case}/layer-payload.json"));
        let v: Value = serde_json::from_slice(&real).expect("payload JSON");
        let reference = v["critical"]["identity"]["docker-reference"].as_str().expect("ref");
        let digest: Digest = v["critical"]["image"]["docker-manifest-digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        // The payload names the signed fixture manifest.
        let signed = fixture(&format!("legacy-tag/{case}/signed-image-manifest.json"));
        assert_eq!(digest, Digest::of(Algorithm::Sha256, &signed), "{case}");
        assert_eq!(
            String::from_utf8(simple_signing_payload(reference, &digest)).expect("utf8"),
            String::from_utf8(real).expect("utf8"),
            "{case}"
        );
    }
}

#[test]
fn legacy_manifest_and_config_match_the_synthesized_fixtures() {
    for case in ["key-only", "key-rekor", "keyless-fulcio-rekor"] {
        let payload = fixture(&format!("legacy-tag/{case}/layer-payload.json"));
        let annotations: BTreeMap<String, String> =
            serde_json::from_slice(&fixture(&format!("legacy-tag/{case}/layer-annotations.json")))
                .expect("annotations");
        let layer_digest = Digest::of(Algorithm::Sha256, &payload);
        let config = empty_image_config(std::slice::from_ref(&layer_digest));
        let real_config = fixture(&format!("legacy-tag/{case}/synthesized/signature-config.json"));
        assert_eq!(
            String::from_utf8_lossy(&config.bytes),
            String::from_utf8_lossy(&real_config),
            "{case} config"
        );
        // The whole manifest through the brief's tuple API.
        let sig = annotations[SIGNATURE_ANNOTATION].clone();
        let mut extra = annotations.clone();
        extra.remove(SIGNATURE_ANNOTATION);
        let object = legacy_sig_manifest(&[(payload.clone(), sig, extra)]);
        let real_manifest = fixture(&format!("legacy-tag/{case}/synthesized/signature-manifest.json"));
        assert_eq!(
            String::from_utf8_lossy(&object.manifest.bytes),
            String::from_utf8_lossy(&real_manifest),
            "{case} manifest"
        );
        assert_eq!(object.config.bytes, config.bytes);
        assert_eq!(object.layers[0].blob.bytes, payload);
    }
}

#[test]
fn fixture_signature_verifies_through_our_layer_type() {
    // The real cosign signature, wrapped by `legacy_sig_manifest`, verifies
    // with the real cosign.pub: the layer carries what the verifier reads.
    let payload = fixture("legacy-tag/key-only/layer-payload.json");
    let sig = String::from_utf8(fixture("legacy-tag/key-only/signature.b64")).expect("utf8");
    let object = legacy_sig_manifest(&[(payload, sig.trim().to_owned(), BTreeMap::new())]);
    let key = PublicKey::from_pem(&fixture("legacy-tag/keys/cosign.pub"), SignatureHash::Sha256).expect("key");
    let auth = Authority {
        name: "cosign".into(),
        kind: AuthorityKind::Key {
            keys: vec![("cosign".into(), Arc::new(key))],
        },
        tlog: Tlog::Ignore,
        sct: Sct::Required,
        trust_root: None,
        blob_signatures: BlobSignatures::Refuse,
    };
    let image = Digest::of(
        Algorithm::Sha256,
        &fixture("legacy-tag/key-only/signed-image-manifest.json"),
    );
    let proof = verify_legacy(&object.layers[0].legacy(), &image, &auth).expect("verifies");
    assert_eq!(proof.signer, "cosign");
}

// ------------------------------------------------------------ keys

#[test]
fn public_pem_is_cosign_shaped_and_parses() {
    for (key, kind) in [
        (SigningKey::generate_p256(), KeyKind::EcdsaP256),
        (SigningKey::generate_p521(), KeyKind::EcdsaP521),
        (SigningKey::generate_ed25519(), KeyKind::Ed25519),
    ] {
        let pem = key.public_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert!(pem.ends_with("\n-----END PUBLIC KEY-----\n"), "{pem}");
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert_eq!(key.public_key().kind(), kind);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cosign.pub");
        key.write_public_pem(&path);
        let loaded = PublicKey::from_pem(&std::fs::read(&path).expect("read"), SignatureHash::Sha256).expect("parse");
        assert_eq!(loaded.spki_der(), key.spki_der());
        let sig = key.sign(b"message");
        assert_eq!(loaded.verify(b"message", &sig), Ok(()));
        if kind != KeyKind::Ed25519 {
            // ASN.1 DER ECDSA-Sig-Value: SEQUENCE { r, s }.
            assert_eq!(sig[0], 0x30, "{kind:?}");
        }
    }
    // The P-256 SPKI is the 91-byte form cosign.pub has.
    assert_eq!(SigningKey::generate_p256().spki_der().len(), 91);
}

// ------------------------------------------------------------ legacy .sig

#[test]
fn legacy_signature_verifies_with_each_key_type() {
    let image = image_digest(1);
    for key in [
        SigningKey::generate_p256(),
        SigningKey::generate_p521(),
        SigningKey::generate_ed25519(),
    ] {
        let layer = signature_layer(&key, REFERENCE, &image);
        assert_eq!(layer.blob.media_type, SIMPLE_SIGNING_MEDIA_TYPE);
        let proof = verify_legacy(&layer.legacy(), &image, &authority(&key)).expect("verifies");
        assert_eq!(proof.signer, "k");
        assert!(!proof.tlog_verified);
        assert!(proof.statement.is_none());
        assert!(proof.is_signature());
    }
}

#[test]
fn legacy_signature_negatives_fail_precisely() {
    let key = SigningKey::generate_p256();
    let other_key = SigningKey::generate_p256();
    let image = image_digest(2);
    let other = image_digest(3);
    let good = signature_layer(&key, REFERENCE, &image);

    // Wrong key.
    let err = verify_legacy(&good.legacy(), &image, &authority(&other_key)).expect_err("wrong key");
    assert_eq!(err, bad_signature());

    // Tampered payload, signature of the original.
    let tampered = tamper::tampered_signature(&key, REFERENCE, &image);
    assert_ne!(tampered.blob.bytes, good.blob.bytes);
    let err = verify_legacy(&tampered.legacy(), &image, &authority(&key)).expect_err("tampered");
    assert_eq!(err, bad_signature());

    // A valid signature of another image.
    let for_other = tamper::signature_for_other_image(&key, REFERENCE, &other);
    let err = verify_legacy(&for_other.legacy(), &image, &authority(&key)).expect_err("other digest");
    assert_eq!(
        err,
        SigError::NotForThisImage {
            named: other.to_string(),
            image: image.to_string()
        }
    );
    // ...which does verify for that other image.
    verify_legacy(&for_other.legacy(), &other, &authority(&key)).expect("verifies for its own image");

    // Key rotation: the second key of the authority verifies.
    let rotated = authority_with(&[("old", &other_key), ("new", &key)], Tlog::Ignore);
    assert_eq!(
        verify_legacy(&good.legacy(), &image, &rotated).expect("rotated").signer,
        "new"
    );

    // An authority that requires a log entry refuses a key-only signature.
    let strict = authority_with(&[("k", &key)], Tlog::Required);
    assert_eq!(
        verify_legacy(&good.legacy(), &image, &strict).expect_err("tlog"),
        SigError::MissingTlog
    );
}

#[test]
fn several_keys_append_layers_to_one_manifest() {
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_ed25519();
    let image = image_digest(4);
    let object = legacy_manifest(vec![
        signature_layer(&a, REFERENCE, &image),
        signature_layer(&b, REFERENCE, &image),
    ]);
    let manifest: Value = serde_json::from_slice(&object.manifest.bytes).expect("json");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(manifest["layers"].as_array().expect("layers").len(), 2);
    let config: Value = serde_json::from_slice(&object.config.bytes).expect("json");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([
            object.layers[0].blob.digest.to_string(),
            object.layers[1].blob.digest.to_string()
        ])
    );
    assert_eq!(config["history"].as_array().expect("history").len(), 2);
    for (layer, key) in object.layers.iter().zip([&a, &b]) {
        assert_eq!(manifest["layers"].as_array().expect("layers").len(), 2);
        verify_legacy(&layer.legacy(), &image, &authority(key)).expect("each layer verifies with its key");
    }
    // Each layer verifies only with its own key.
    assert_eq!(
        verify_legacy(&object.layers[0].legacy(), &image, &authority(&b)).expect_err("cross"),
        bad_signature()
    );
}

// ------------------------------------------------------------ legacy .att

#[test]
fn legacy_attestation_verifies_and_yields_the_statement() {
    let key = SigningKey::generate_p256();
    let image = image_digest(5);
    let layer = attestation_layer(&key, REFERENCE, &image, SLSA_PROVENANCE_V1, &slsa_predicate());
    assert_eq!(layer.blob.media_type, DSSE_MEDIA_TYPE);
    assert_eq!(layer.annotations[SIGNATURE_ANNOTATION], "");
    assert_eq!(layer.annotations[PREDICATE_TYPE_ANNOTATION], SLSA_PROVENANCE_V1);
    // Envelope shape, key order included.
    let text = String::from_utf8(layer.blob.bytes.to_vec()).expect("utf8");
    assert!(
        text.starts_with(r#"{"payloadType":"application/vnd.in-toto+json","payload":""#),
        "{text}"
    );
    assert!(text.contains(r#""signatures":[{"keyid":"","sig":""#), "{text}");

    let proof: Proof = verify_legacy(&layer.legacy(), &image, &authority(&key)).expect("verifies");
    assert!(!proof.is_signature());
    let (predicate_type, statement) = proof.statement.expect("statement");
    assert_eq!(predicate_type, SLSA_PROVENANCE_V1);
    assert_eq!(statement["_type"], STATEMENT_V01);
    assert_eq!(statement["subject"][0]["name"], REFERENCE);
    assert_eq!(statement["subject"][0]["digest"]["sha256"], image.hex());
    assert_eq!(statement["predicate"], slsa_predicate());

    // Ed25519 signs the PAE directly.
    let ed = SigningKey::generate_ed25519();
    let layer = attestation_layer(&ed, REFERENCE, &image, COSIGN_CUSTOM_PREDICATE, &json!({"Data": "x"}));
    verify_legacy(&layer.legacy(), &image, &authority(&ed)).expect("ed25519 attestation");
}

#[test]
fn legacy_attestation_negatives_fail_precisely() {
    let key = SigningKey::generate_p256();
    let image = image_digest(6);
    let other = image_digest(7);
    let good = attestation_layer(&key, REFERENCE, &image, SLSA_PROVENANCE_V1, &slsa_predicate());

    let err = verify_legacy(&good.legacy(), &image, &authority(&SigningKey::generate_p256())).expect_err("wrong key");
    assert_eq!(err, bad_signature());

    let tampered = tamper::tampered_attestation(&key, REFERENCE, &image, SLSA_PROVENANCE_V1, &slsa_predicate());
    let err = verify_legacy(&tampered.legacy(), &image, &authority(&key)).expect_err("tampered");
    assert_eq!(err, bad_signature());

    let for_other =
        tamper::attestation_for_other_subject(&key, REFERENCE, &other, SLSA_PROVENANCE_V1, &slsa_predicate());
    let err = verify_legacy(&for_other.legacy(), &image, &authority(&key)).expect_err("other subject");
    assert_eq!(
        err,
        SigError::Malformed(format!("statement subject does not name {image}"))
    );
    verify_legacy(&for_other.legacy(), &other, &authority(&key)).expect("verifies for its own subject");
}

// ------------------------------------------------------------ bundles

#[test]
fn signature_bundle_verifies_as_a_signature() {
    let image = image_digest(8);
    for key in [SigningKey::generate_p256(), SigningKey::generate_ed25519()] {
        let bundle = signature_bundle(&key, &image);
        let v: Value = serde_json::from_slice(&bundle).expect("json");
        assert_eq!(v["mediaType"], BUNDLE_V03_MEDIA_TYPE);
        assert_eq!(
            v["verificationMaterial"],
            json!({ "publicKey": { "hint": key.hint() } })
        );
        assert_eq!(v["dsseEnvelope"]["payloadType"], IN_TOTO_PAYLOAD_TYPE);
        let statement = String::from_utf8(cosign_sign_statement(&image)).expect("utf8");
        assert_eq!(
            statement,
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}},"annotations":{{}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#,
                image.hex()
            )
        );

        for tlog in [Tlog::Ignore, Tlog::Optional] {
            let proof = verify_bundle(&bundle, &image, &authority_with(&[("k", &key)], tlog)).expect("verifies");
            assert!(proof.is_signature(), "{proof:?}");
            assert!(!proof.tlog_verified);
            assert_eq!(proof.signer, "k");
            let (pt, st) = proof.statement.expect("statement");
            assert_eq!(pt, COSIGN_SIGN_PREDICATE);
            assert_eq!(st["predicate"], json!({}));
        }
    }
}

#[test]
fn bundle_with_an_explicit_empty_tlog_list_verifies_too() {
    let key = SigningKey::generate_p256();
    let image = image_digest(9);
    let statement = cosign_sign_statement(&image);
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &statement));
    let bundle = bundle_json_raw(&key.hint(), &statement, &sig, true);
    assert!(String::from_utf8_lossy(&bundle).contains(r#""tlogEntries":[]"#));
    verify_bundle(&bundle, &image, &authority(&key)).expect("verifies");
}

#[test]
fn attestation_bundle_verifies_as_an_attestation() {
    let key = SigningKey::generate_p256();
    let image = image_digest(10);
    let bundle = attestation_bundle(&key, REFERENCE, &image, SLSA_PROVENANCE_V1, &slsa_predicate());
    let proof = verify_bundle(&bundle, &image, &authority(&key)).expect("verifies");
    assert!(!proof.is_signature());
    let (pt, st) = proof.statement.expect("statement");
    assert_eq!(pt, SLSA_PROVENANCE_V1);
    assert_eq!(st["predicate"], slsa_predicate());
    assert_eq!(st["_type"], STATEMENT_V01);
}

#[test]
fn bundle_negatives_fail_precisely() {
    let key = SigningKey::generate_p256();
    let image = image_digest(11);
    let other = image_digest(12);
    let good = signature_bundle(&key, &image);

    let err = verify_bundle(&good, &image, &authority(&SigningKey::generate_p256())).expect_err("wrong key");
    assert_eq!(err, bad_signature());

    let err = verify_bundle(&tamper::tampered_bundle(&key, &image), &image, &authority(&key)).expect_err("tampered");
    assert_eq!(err, bad_signature());

    let for_other = tamper::bundle_for_other_subject(&key, &other);
    let err = verify_bundle(&for_other, &image, &authority(&key)).expect_err("other subject");
    assert_eq!(
        err,
        SigError::Malformed(format!("statement subject does not name {image}"))
    );
    verify_bundle(&for_other, &other, &authority(&key)).expect("verifies for its own subject");

    let strict = authority_with(&[("k", &key)], Tlog::Required);
    assert_eq!(
        verify_bundle(&good, &image, &strict).expect_err("tlog"),
        SigError::MissingTlog
    );
}

#[test]
fn bundle_referrer_manifest_is_cosign_shaped() {
    let key = SigningKey::generate_p256();
    let image = oci_image(&[64], 13);
    let referrer = bundle_referrer(
        &image.manifest,
        signature_bundle(&key, &image.manifest.digest),
        COSIGN_SIGN_PREDICATE,
        FIXED_CREATED,
    );
    assert_eq!(referrer.config.digest.to_string(), OCI_EMPTY_DIGEST);
    let text = String::from_utf8(referrer.manifest.bytes.to_vec()).expect("utf8");
    let expected = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
            r#""config":{{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"{empty}","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}},"#,
            r#""layers":[{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","size":{size},"digest":"{bundle}","annotations":{{"org.opencontainers.image.title":"{title}.sigstore.json"}}}}],"#,
            r#""annotations":{{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1","org.opencontainers.image.created":"{created}"}},"#,
            r#""subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":{subject_size},"digest":"{subject}"}},"#,
            r#""artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"}}"#
        ),
        empty = OCI_EMPTY_DIGEST,
        size = referrer.bundle.bytes.len(),
        bundle = referrer.bundle.digest,
        title = referrer.bundle.digest.tag_form(),
        created = FIXED_CREATED,
        subject_size = image.manifest.bytes.len(),
        subject = image.manifest.digest,
    );
    assert_eq!(text, expected);

    // The fallback index, as go-containerregistry writes it.
    let second = bundle_referrer(
        &image.manifest,
        attestation_bundle(
            &key,
            REFERENCE,
            &image.manifest.digest,
            SLSA_PROVENANCE_V1,
            &slsa_predicate(),
        ),
        SLSA_PROVENANCE_V1,
        FIXED_CREATED,
    );
    let index = referrers_fallback_index(&[IndexEntry::ggcr(&second.manifest), IndexEntry::ggcr(&referrer.manifest)]);
    let v: Value = serde_json::from_slice(&index.bytes).expect("json");
    assert_eq!(v["mediaType"], "application/vnd.oci.image.index.v1+json");
    let entries = v["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    let digests: Vec<&str> = entries.iter().map(|e| e["digest"].as_str().expect("digest")).collect();
    let mut sorted = digests.clone();
    sorted.sort();
    assert_eq!(digests, sorted, "sorted by digest");
    for e in entries {
        assert_eq!(e["artifactType"], OCI_EMPTY);
        assert_eq!(e["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert!(e.get("annotations").is_none());
    }
}

// ------------------------------------------------------------ registry

async fn get_manifest(registry: &Distribution, repo: &str, reference: &str) -> (String, Blob) {
    let url = registry.url_for(&format!("/v2/{repo}/manifests/{reference}"));
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let resp = support::client::request(http::Method::GET, &url, &[("accept", accept)]).await;
    assert_eq!(resp.status, http::StatusCode::OK, "GET {url}\n{}", registry.log());
    let media_type = resp.header("content-type").expect("content-type").to_owned();
    let digest = resp.header("docker-content-digest").expect("digest").to_owned();
    let blob = Blob::new(&media_type, resp.bytes());
    assert_eq!(blob.digest.to_string(), digest);
    (media_type, blob)
}

async fn get_blob(registry: &Distribution, repo: &str, digest: &Digest) -> bytes::Bytes {
    let url = registry.url_for(&format!("/v2/{repo}/blobs/{digest}"));
    let resp = support::client::get(&url).await;
    assert_eq!(resp.status, http::StatusCode::OK, "GET {url}");
    resp.bytes()
}

#[tokio::test]
async fn signed_image_round_trips_through_distribution() {
    let registry = Distribution::start().await;
    let repo = "signed/app";
    let image = oci_image(&[1024, 2048], 14);
    registry.push_image(repo, "v1", &image).await;
    let digest = &image.manifest.digest;
    let a = SigningKey::generate_p256();
    let b = SigningKey::generate_p256();

    let sig = push_legacy_signature(&registry, repo, &image.manifest, &[&a, &b]).await;
    let att = push_legacy_attestation(
        &registry,
        repo,
        &image.manifest,
        &[&a],
        SLSA_PROVENANCE_V1,
        &slsa_predicate(),
    )
    .await;
    let bundle_sig = push_bundle_signature(&registry, repo, &image.manifest, &a).await;
    let bundle_att = push_bundle_attestation(
        &registry,
        repo,
        &image.manifest,
        &b,
        SLSA_PROVENANCE_V1,
        &slsa_predicate(),
    )
    .await;

    // .sig: same bytes back by tag, both layers verify with their keys.
    let (mt, got) = get_manifest(&registry, repo, &sig_tag(digest)).await;
    assert_eq!(mt, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(got.digest, sig.manifest.digest);
    assert_eq!(got.bytes, sig.manifest.bytes);
    assert_eq!(get_blob(&registry, repo, &sig.config.digest).await, sig.config.bytes);
    let manifest: Value = serde_json::from_slice(&got.bytes).expect("json");
    for (i, key) in [&a, &b].into_iter().enumerate() {
        let d = &manifest["layers"][i];
        let blob_digest: Digest = d["digest"].as_str().expect("digest").parse().expect("digest");
        let blob = get_blob(&registry, repo, &blob_digest).await;
        assert_eq!(Digest::of(Algorithm::Sha256, &blob), blob_digest);
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(d["annotations"].clone()).expect("annotations");
        let layer = portcullis::verify::signature::check::LegacyLayer {
            media_type: d["mediaType"].as_str().expect("mediaType"),
            blob: &blob,
            annotations: &annotations,
        };
        verify_legacy(&layer, digest, &authority(key)).expect("pulled .sig layer verifies");
    }

    // .att.
    let (_, got) = get_manifest(&registry, repo, &att_tag(digest)).await;
    assert_eq!(got.digest, att.manifest.digest);
    let blob = get_blob(&registry, repo, &att.layers[0].blob.digest).await;
    let layer = portcullis::verify::signature::check::LegacyLayer {
        media_type: DSSE_MEDIA_TYPE,
        blob: &blob,
        annotations: &att.layers[0].annotations,
    };
    let proof = verify_legacy(&layer, digest, &authority(&a)).expect("pulled .att verifies");
    assert_eq!(proof.statement.expect("statement").0, SLSA_PROVENANCE_V1);

    // Referrers: the fallback index lists both bundle manifests.
    let (mt, index) = get_manifest(&registry, repo, &referrers_tag(digest)).await;
    assert_eq!(mt, "application/vnd.oci.image.index.v1+json");
    let mut expected = vec![
        bundle_sig.manifest.digest.to_string(),
        bundle_att.manifest.digest.to_string(),
    ];
    expected.sort();
    let v: Value = serde_json::from_slice(&index.bytes).expect("json");
    let listed: Vec<String> = v["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["digest"].as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(listed, expected);
    let mut entries = vec![
        IndexEntry::ggcr(&bundle_sig.manifest),
        IndexEntry::ggcr(&bundle_att.manifest),
    ];
    entries.sort_by_key(|e| e.digest.to_string());
    assert_eq!(read_fallback_index(&registry, repo, digest).await, entries);
    for (referrer, key, is_sig) in [(&bundle_sig, &a, true), (&bundle_att, &b, false)] {
        let (_, m) = get_manifest(&registry, repo, &referrer.manifest.digest.to_string()).await;
        assert_eq!(m.bytes, referrer.manifest.bytes);
        let v: Value = serde_json::from_slice(&m.bytes).expect("json");
        assert_eq!(v["subject"]["digest"], digest.to_string());
        assert_eq!(v["artifactType"], BUNDLE_V03_MEDIA_TYPE);
        let layer_digest: Digest = v["layers"][0]["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        let bundle = get_blob(&registry, repo, &layer_digest).await;
        let proof = verify_bundle(&bundle, digest, &authority(key)).expect("pulled bundle verifies");
        assert_eq!(proof.is_signature(), is_sig);
        assert_eq!(
            get_blob(&registry, repo, &OCI_EMPTY_DIGEST.parse().expect("digest")).await,
            &b"{}"[..]
        );
    }

    // Re-pushing the same referrer leaves the index unchanged.
    let again = push_referrer(&registry, repo, &bundle_sig).await;
    assert_eq!(again.digest, index.digest);
    // The image itself is untouched.
    let (_, img) = get_manifest(&registry, repo, "v1").await;
    assert_eq!(img.digest, *digest);
}
