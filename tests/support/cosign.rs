//! Sign images with freshly generated keys in exactly the formats cosign
//! writes, and push them into a registry:
//!
//! - legacy signatures (`sha256-<hex>.sig`): one OCI image manifest, one
//!   simple-signing layer per signature, go-containerregistry "empty image"
//!   config (cosign `specs/SIGNATURE_SPEC.md`);
//! - legacy attestations (`sha256-<hex>.att`): the same shape with DSSE
//!   envelope layers over an in-toto Statement v0.1;
//! - Sigstore bundle v0.3 referrers (what `cosign sign|attest --key
//!   --tlog-upload=false` writes with the new bundle format), plus the
//!   referrers tag-schema fallback index go-containerregistry maintains
//!   when the registry has no referrers API (Distribution 2.8).
//!
//! JSON is produced from structs in Go's field order, compact, like Go's
//! `encoding/json` (maps with sorted keys). Go also escapes `<`, `>` and
//! `&` as `\u003c`…; none of the values written here contain them.
//!
//! Deliberately broken variants for negative tests are in [`tamper`].

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis::oci::{Algorithm, Digest};
use portcullis::verify::signature::check::LegacyLayer;
use portcullis::verify::signature::{PublicKey, SignatureHash};
use serde::Serialize;
use serde_json::{Value, json};

use super::distribution::Distribution;
use super::images::{Blob, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// sha256 of `{}`, the OCI empty descriptor's content.
pub const OCI_EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation of legacy attestations.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
pub const BUNDLE_CONTENT_ANNOTATION: &str = "dev.sigstore.bundle.content";
pub const BUNDLE_PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// `critical.type` of simple-signing payloads.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";
/// The predicate type of `cosign sign` (v3) statements.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// `cosign attest --type custom`.
pub const COSIGN_CUSTOM_PREDICATE: &str = "https://cosign.sigstore.dev/attestation/v1";
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// A fixed `org.opencontainers.image.created` so referrer manifests are
/// reproducible (cosign writes the signing time, RFC 3339 UTC, seconds).
pub const FIXED_CREATED: &str = "2026-04-09T07:23:29Z";

// ---------------------------------------------------------------- keys

/// The signature algorithm of a [`SigningKey`]. cosign hashes with SHA-256
/// whatever the curve; Ed25519 signs the message itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlg {
    /// ECDSA P-256 over SHA-256 (`cosign generate-key-pair`).
    P256,
    /// ECDSA P-521 over SHA-256 (cosign's default hash for every curve).
    P521,
    Ed25519,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A freshly generated private key.
pub struct SigningKey {
    alg: SigningAlg,
    pair: Pair,
    /// DER SubjectPublicKeyInfo.
    spki: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, hint {})", self.alg, self.hint())
    }
}

impl SigningKey {
    pub fn generate(alg: SigningAlg) -> SigningKey {
        let rng = SystemRandom::new();
        let ecdsa = |algorithm: &'static signature::EcdsaSigningAlgorithm| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, &rng).expect("ECDSA keygen");
            EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref()).expect("ECDSA key")
        };
        let (pair, spki) = match alg {
            SigningAlg::P256 | SigningAlg::P521 => {
                let kp = ecdsa(if alg == SigningAlg::P256 {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P521_SHA256_ASN1_SIGNING
                });
                let spki = kp.public_key().as_der().expect("SPKI").as_ref().to_vec();
                (Pair::Ecdsa(kp), spki)
            }
            SigningAlg::Ed25519 => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 keygen");
                let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
                let spki = kp.public_key().as_der().expect("SPKI").as_ref().to_vec();
                (Pair::Ed25519(kp), spki)
            }
        };
        SigningKey { alg, pair, spki }
    }

    /// ECDSA P-256, the key type `cosign generate-key-pair` makes.
    pub fn generate_p256() -> SigningKey {
        Self::generate(SigningAlg::P256)
    }

    pub fn generate_p521() -> SigningKey {
        Self::generate(SigningAlg::P521)
    }

    pub fn generate_ed25519() -> SigningKey {
        Self::generate(SigningAlg::Ed25519)
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// PEM `PUBLIC KEY` (PKIX), 64-column base64 like Go's `pem.Encode`, as
    /// `cosign generate-key-pair` writes `cosign.pub`.
    pub fn public_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.spki);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    pub fn write_public_pem(&self, path: &Path) {
        std::fs::write(path, self.public_pem()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The verifier's view of this key (hash SHA-256, as cosign signs).
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_pem(self.public_pem().as_bytes(), SignatureHash::Sha256).expect("own public key parses")
    }

    /// Sign `message` as cosign does: ASN.1 DER ECDSA over SHA-256(message),
    /// or Ed25519 over the message.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.pair {
            Pair::Ecdsa(kp) => kp
                .sign(&SystemRandom::new(), message)
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
            Pair::Ed25519(kp) => kp.sign(message).as_ref().to_vec(),
        }
    }

    /// Standard base64 (padded) of [`sign`](Self::sign).
    pub fn sign_b64(&self, message: &[u8]) -> String {
        STANDARD.encode(self.sign(message))
    }

    /// The bundle `publicKey.hint` sigstore-go writes: base64(sha256(SPKI DER)).
    pub fn hint(&self) -> String {
        STANDARD.encode(Digest::of(Algorithm::Sha256, &self.spki).as_bytes())
    }
}

// ---------------------------------------------------------------- tags

/// `sha256-<hex>.sig`.
pub fn sig_tag(image: &Digest) -> String {
    format!("{}.sig", image.tag_form())
}

/// `sha256-<hex>.att`.
pub fn att_tag(image: &Digest) -> String {
    format!("{}.att", image.tag_form())
}

/// `sha256-<hex>`: the referrers tag-schema fallback index.
pub fn referrers_tag(image: &Digest) -> String {
    image.tag_form()
}

/// `<host>/<repo>`: what cosign writes as `docker-reference` and as the
/// statement subject name (`ref.Context().Name()`).
pub fn docker_reference(registry: &Distribution, repo: &str) -> String {
    format!("{}/{repo}", registry.host())
}

// ---------------------------------------------------------------- payloads

#[derive(Serialize)]
struct SimpleSigning<'a> {
    critical: Critical<'a>,
    optional: Option<&'a BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct Critical<'a> {
    identity: CriticalIdentity<'a>,
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Serialize)]
struct CriticalIdentity<'a> {
    #[serde(rename = "docker-reference")]
    docker_reference: &'a str,
}

#[derive(Serialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The simple-signing payload, byte for byte as cosign (Go) marshals it:
/// `{"critical":{"identity":{"docker-reference":…},"image":{"docker-manifest-digest":…},"type":"cosign container image signature"},"optional":null}`.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &Digest) -> Vec<u8> {
    simple_signing_payload_with(docker_reference, manifest_digest, None)
}

/// With `optional` = the `-a key=value` annotations of `cosign sign`.
pub fn simple_signing_payload_with(
    docker_reference: &str,
    manifest_digest: &Digest,
    optional: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let payload = SimpleSigning {
        critical: Critical {
            identity: CriticalIdentity { docker_reference },
            image: CriticalImage {
                docker_manifest_digest: manifest_digest.to_string(),
            },
            kind: COSIGN_SIGNATURE_TYPE,
        },
        optional,
    };
    serde_json::to_vec(&payload).expect("json")
}

#[derive(Serialize)]
struct StatementV01<'a> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    subject: [SubjectV01<'a>; 1],
    predicate: &'a Value,
}

#[derive(Serialize)]
struct SubjectV01<'a> {
    name: &'a str,
    digest: BTreeMap<&'a str, String>,
}

/// An in-toto Statement v0.1 as cosign's `attest` generates it (legacy
/// `.att` and `attest --new-bundle-format`): `_type`, `predicateType`,
/// `subject: [{name, digest}]`, `predicate`.
pub fn statement_v01(subject_name: &str, image: &Digest, predicate_type: &str, predicate: &Value) -> Vec<u8> {
    let st = StatementV01 {
        statement_type: STATEMENT_V01,
        predicate_type,
        subject: [SubjectV01 {
            name: subject_name,
            digest: BTreeMap::from([(image.algorithm().as_str(), image.hex())]),
        }],
        predicate,
    };
    serde_json::to_vec(&st).expect("json")
}

/// The in-toto Statement v1 `cosign sign` (v3) signs: `{"_type":…/v1,
/// "subject":[{"digest":{"sha256":…},"annotations":{}}],"predicateType":
/// "https://sigstore.dev/cosign/sign/v1","predicate":{}}`.
pub fn cosign_sign_statement(image: &Digest) -> Vec<u8> {
    statement_v1(image, COSIGN_SIGN_PREDICATE, &json!({}))
}

#[derive(Serialize)]
struct StatementV1<'a> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    subject: [SubjectV1<'a>; 1],
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    predicate: &'a Value,
}

#[derive(Serialize)]
struct SubjectV1<'a> {
    digest: BTreeMap<&'a str, String>,
    annotations: BTreeMap<String, String>,
}

/// An in-toto Statement v1 in protojson field order (as the kubewarden
/// fixture has it).
pub fn statement_v1(image: &Digest, predicate_type: &str, predicate: &Value) -> Vec<u8> {
    let st = StatementV1 {
        statement_type: STATEMENT_V1,
        subject: [SubjectV1 {
            digest: BTreeMap::from([(image.algorithm().as_str(), image.hex())]),
            annotations: BTreeMap::new(),
        }],
        predicate_type,
        predicate,
    };
    serde_json::to_vec(&st).expect("json")
}

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "payloadType")]
    payload_type: &'a str,
    payload: String,
    signatures: [EnvelopeSignature; 1],
}

#[derive(Serialize)]
struct EnvelopeSignature {
    keyid: String,
    sig: String,
}

/// The DSSE envelope of a legacy `.att` layer, as sigstore's
/// `dsse.WrapSigner` writes it: `{"payloadType","payload","signatures":
/// [{"keyid":"","sig"}]}`, signed over the PAE.
pub fn dsse_envelope(key: &SigningKey, statement: &[u8]) -> Vec<u8> {
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
    dsse_envelope_raw(statement, &sig)
}

/// An envelope over `statement` carrying `signature` as is.
pub fn dsse_envelope_raw(statement: &[u8], signature: &[u8]) -> Vec<u8> {
    let env = Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE,
        payload: STANDARD.encode(statement),
        signatures: [EnvelopeSignature {
            keyid: String::new(),
            sig: STANDARD.encode(signature),
        }],
    };
    serde_json::to_vec(&env).expect("json")
}

// ---------------------------------------------------------------- legacy objects

/// One layer of a `.sig`/`.att` manifest: the blob and its descriptor
/// annotations.
#[derive(Clone, Debug)]
pub struct SignedLayer {
    pub blob: Blob,
    pub annotations: BTreeMap<String, String>,
}

impl SignedLayer {
    /// The verifier's input for this layer.
    pub fn legacy(&self) -> LegacyLayer<'_> {
        LegacyLayer {
            media_type: &self.blob.media_type,
            blob: &self.blob.bytes,
            annotations: &self.annotations,
        }
    }
}

/// A simple-signing layer: `payload` with `dev.cosignproject.cosign/signature`
/// = base64(`signature`), plus `extra` annotations (certificate, bundle…).
pub fn signature_layer_raw(payload: Vec<u8>, signature: &[u8], extra: &BTreeMap<String, String>) -> SignedLayer {
    let mut annotations = extra.clone();
    annotations.insert(SIGNATURE_ANNOTATION.to_owned(), STANDARD.encode(signature));
    SignedLayer {
        blob: Blob::new(SIMPLE_SIGNING_MEDIA_TYPE, payload),
        annotations,
    }
}

/// `cosign sign --key` (legacy): the simple-signing payload for `image`
/// signed by `key`.
pub fn signature_layer(key: &SigningKey, docker_reference: &str, image: &Digest) -> SignedLayer {
    let payload = simple_signing_payload(docker_reference, image);
    let sig = key.sign(&payload);
    signature_layer_raw(payload, &sig, &BTreeMap::new())
}

/// A DSSE layer with cosign's attestation annotations: `predicateType` and an
/// empty `dev.cosignproject.cosign/signature`.
pub fn attestation_layer_raw(envelope: Vec<u8>, predicate_type: &str) -> SignedLayer {
    SignedLayer {
        blob: Blob::new(DSSE_MEDIA_TYPE, envelope),
        annotations: BTreeMap::from([
            (SIGNATURE_ANNOTATION.to_owned(), String::new()),
            (PREDICATE_TYPE_ANNOTATION.to_owned(), predicate_type.to_owned()),
        ]),
    }
}

/// `cosign attest --key` (legacy): a Statement v0.1 naming `image`, in a
/// DSSE envelope signed by `key`.
pub fn attestation_layer(
    key: &SigningKey,
    subject_name: &str,
    image: &Digest,
    predicate_type: &str,
    predicate: &Value,
) -> SignedLayer {
    let statement = statement_v01(subject_name, image, predicate_type, predicate);
    attestation_layer_raw(dsse_envelope(key, &statement), predicate_type)
}

#[derive(Serialize)]
struct GoDescriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    size: usize,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
}

impl<'a> GoDescriptor<'a> {
    fn of(blob: &'a Blob) -> GoDescriptor<'a> {
        GoDescriptor {
            media_type: &blob.media_type,
            size: blob.bytes.len(),
            digest: blob.digest.to_string(),
            annotations: None,
            artifact_type: None,
        }
    }
}

#[derive(Serialize)]
struct GoManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: GoDescriptor<'a>,
    layers: Vec<GoDescriptor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<GoDescriptor<'a>>,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
}

#[derive(Serialize)]
struct EmptyImageConfig {
    architecture: &'static str,
    created: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    history: Vec<History>,
    os: &'static str,
    rootfs: RootFs,
    config: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Option<Vec<String>>,
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// go-containerregistry's `empty.Image` config after appending `layers`
/// (each with an empty history entry), media type
/// `application/vnd.oci.image.config.v1+json`: the config of every cosign
/// `.sig`/`.att` manifest.
pub fn empty_image_config(layers: &[Digest]) -> Blob {
    let config = EmptyImageConfig {
        architecture: "",
        created: GO_ZERO_TIME,
        history: layers.iter().map(|_| History { created: GO_ZERO_TIME }).collect(),
        os: "",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: (!layers.is_empty()).then(|| layers.iter().map(Digest::to_string).collect()),
        },
        config: BTreeMap::new(),
    };
    Blob::new(OCI_CONFIG, serde_json::to_vec(&config).expect("json"))
}

/// A `.sig` or `.att` object: manifest, config and layers.
#[derive(Clone, Debug)]
pub struct LegacyObject {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<SignedLayer>,
}

/// The OCI image manifest cosign pushes under `.sig`/`.att`: the empty-image
/// config and one layer per signature, descriptors in go-containerregistry's
/// field order (`mediaType`, `size`, `digest`, `annotations`).
pub fn legacy_manifest(layers: Vec<SignedLayer>) -> LegacyObject {
    let config = empty_image_config(&layers.iter().map(|l| l.blob.digest.clone()).collect::<Vec<_>>());
    let manifest = GoManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: GoDescriptor::of(&config),
        layers: layers
            .iter()
            .map(|l| GoDescriptor {
                annotations: Some(&l.annotations),
                ..GoDescriptor::of(&l.blob)
            })
            .collect(),
        annotations: None,
        subject: None,
        artifact_type: None,
    };
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).expect("json"));
    LegacyObject {
        manifest,
        config,
        layers,
    }
}

/// The brief's shape: `(payload, base64 signature, extra annotations)` per
/// signature layer.
pub fn legacy_sig_manifest(signatures: &[(Vec<u8>, String, BTreeMap<String, String>)]) -> LegacyObject {
    legacy_manifest(
        signatures
            .iter()
            .map(|(payload, sig_b64, extra)| {
                let mut annotations = extra.clone();
                annotations.insert(SIGNATURE_ANNOTATION.to_owned(), sig_b64.clone());
                SignedLayer {
                    blob: Blob::new(SIMPLE_SIGNING_MEDIA_TYPE, payload.clone()),
                    annotations,
                }
            })
            .collect(),
    )
}

// ---------------------------------------------------------------- bundles

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleJson<'a> {
    media_type: &'a str,
    verification_material: VerificationMaterial<'a>,
    dsse_envelope: BundleEnvelope<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial<'a> {
    public_key: PublicKeyHint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tlog_entries: Option<[(); 0]>,
}

#[derive(Serialize)]
struct PublicKeyHint<'a> {
    hint: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleEnvelope<'a> {
    payload: String,
    payload_type: &'a str,
    signatures: [BundleSignature; 1],
}

#[derive(Serialize)]
struct BundleSignature {
    sig: String,
}

/// A key-based v0.3 bundle (no log entry, no timestamp; protojson omits the
/// empty `tlogEntries`) over `statement` with `signature` as given.
pub fn bundle_json_raw(hint: &str, statement: &[u8], signature: &[u8], explicit_empty_tlog: bool) -> Vec<u8> {
    let bundle = BundleJson {
        media_type: BUNDLE_V03_MEDIA_TYPE,
        verification_material: VerificationMaterial {
            public_key: PublicKeyHint { hint },
            tlog_entries: explicit_empty_tlog.then_some([]),
        },
        dsse_envelope: BundleEnvelope {
            payload: STANDARD.encode(statement),
            payload_type: IN_TOTO_PAYLOAD_TYPE,
            signatures: [BundleSignature {
                sig: STANDARD.encode(signature),
            }],
        },
    };
    serde_json::to_vec(&bundle).expect("json")
}

/// `cosign sign|attest --key --tlog-upload=false` (new bundle format): the
/// bundle JSON over `statement`, DSSE-signed by `key`.
pub fn bundle_json(key: &SigningKey, statement: &[u8]) -> Vec<u8> {
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
    bundle_json_raw(&key.hint(), statement, &sig, false)
}

/// The bundle `cosign sign --key` (v3) writes for `image`.
pub fn signature_bundle(key: &SigningKey, image: &Digest) -> Vec<u8> {
    bundle_json(key, &cosign_sign_statement(image))
}

/// The bundle `cosign attest --key --new-bundle-format` writes (Statement
/// v0.1, like the cosign fixture `oci-attestation.sigstore.json`).
pub fn attestation_bundle(
    key: &SigningKey,
    subject_name: &str,
    image: &Digest,
    predicate_type: &str,
    predicate: &Value,
) -> Vec<u8> {
    bundle_json(key, &statement_v01(subject_name, image, predicate_type, predicate))
}

/// A bundle referrer: manifest, the empty config blob (`{}`), the bundle layer.
#[derive(Clone, Debug)]
pub struct Referrer {
    pub manifest: Blob,
    pub config: Blob,
    pub bundle: Blob,
    pub predicate_type: String,
}

/// The referrer manifest cosign's `WriteReferrer` builds for a bundle
/// (`WriteAttestationNewBundleFormat`): artifactType = bundle media type,
/// config = OCI empty descriptor (with `artifactType`, as
/// go-containerregistry serialises it), one layer titled
/// `sha256-<hex>.sigstore.json`, `subject` = the signed manifest,
/// annotations `dev.sigstore.bundle.content`, `…predicateType`, `created`.
pub fn bundle_referrer(subject: &Blob, bundle_json: Vec<u8>, predicate_type: &str, created: &str) -> Referrer {
    // cosign uploads `{}` with the OCI config media type; the descriptor
    // says `application/vnd.oci.empty.v1+json`. Same bytes, same digest.
    let config = Blob::new(OCI_EMPTY, &b"{}"[..]);
    let bundle = Blob::new(BUNDLE_V03_MEDIA_TYPE, bundle_json);
    let layer_annotations = BTreeMap::from([(
        TITLE_ANNOTATION.to_owned(),
        format!("{}.sigstore.json", bundle.digest.tag_form()),
    )]);
    let annotations = BTreeMap::from([
        (BUNDLE_CONTENT_ANNOTATION.to_owned(), "dsse-envelope".to_owned()),
        (BUNDLE_PREDICATE_TYPE_ANNOTATION.to_owned(), predicate_type.to_owned()),
        (CREATED_ANNOTATION.to_owned(), created.to_owned()),
    ]);
    let manifest = GoManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: GoDescriptor {
            artifact_type: Some(BUNDLE_V03_MEDIA_TYPE),
            ..GoDescriptor::of(&config)
        },
        layers: vec![GoDescriptor {
            annotations: Some(&layer_annotations),
            ..GoDescriptor::of(&bundle)
        }],
        annotations: Some(&annotations),
        subject: Some(GoDescriptor::of(subject)),
        artifact_type: Some(BUNDLE_V03_MEDIA_TYPE),
    };
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).expect("json"));
    Referrer {
        manifest,
        config,
        bundle,
        predicate_type: predicate_type.to_owned(),
    }
}

#[derive(Serialize)]
struct GoIndex<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<GoDescriptor<'a>>,
}

/// One entry of a referrers fallback index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub media_type: String,
    pub size: usize,
    pub digest: Digest,
    pub artifact_type: Option<String>,
}

impl IndexEntry {
    /// The entry go-containerregistry adds for a pushed referrer manifest:
    /// `artifactType` = the manifest's **config media type** (for bundle
    /// referrers `application/vnd.oci.empty.v1+json`, cosign#4641), not its
    /// `artifactType`.
    pub fn ggcr(manifest: &Blob) -> IndexEntry {
        let m: Value = serde_json::from_slice(&manifest.bytes).expect("manifest JSON");
        IndexEntry {
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len(),
            digest: manifest.digest.clone(),
            artifact_type: m["config"]["mediaType"].as_str().map(str::to_owned),
        }
    }
}

/// The fallback index go-containerregistry writes: entries sorted by
/// digest, no annotations.
pub fn referrers_fallback_index(entries: &[IndexEntry]) -> Blob {
    let mut entries = entries.to_vec();
    entries.sort_by_key(|e| e.digest.to_string());
    entries.dedup_by(|a, b| a.digest == b.digest);
    let index = GoIndex {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: entries
            .iter()
            .map(|e| GoDescriptor {
                media_type: &e.media_type,
                size: e.size,
                digest: e.digest.to_string(),
                annotations: None,
                artifact_type: e.artifact_type.as_deref(),
            })
            .collect(),
    };
    Blob::new(OCI_INDEX, serde_json::to_vec(&index).expect("json"))
}

// ---------------------------------------------------------------- pushing

/// Push a `.sig`/`.att` object: layers, config, then the manifest under `tag`
/// only (cosign writes the tag, not the digest).
pub async fn push_legacy_object(registry: &Distribution, repo: &str, tag: &str, object: &LegacyObject) {
    for layer in &object.layers {
        registry.push_blob(repo, &layer.blob).await;
    }
    registry.push_blob(repo, &object.config).await;
    registry.push_manifest(repo, tag, &object.manifest).await;
}

/// Sign `image` with each of `keys` (one layer each, in order, as cosign
/// appends) and push the `.sig` manifest into `repo`. Replaces whatever the
/// tag held.
pub async fn push_legacy_signature(
    registry: &Distribution,
    repo: &str,
    image: &Blob,
    keys: &[&SigningKey],
) -> LegacyObject {
    let reference = docker_reference(registry, repo);
    let layers = keys
        .iter()
        .map(|k| signature_layer(k, &reference, &image.digest))
        .collect();
    let object = legacy_manifest(layers);
    push_legacy_object(registry, repo, &sig_tag(&image.digest), &object).await;
    object
}

/// Attest `image` with `predicate` under each of `keys` and push the `.att`
/// manifest into `repo`.
pub async fn push_legacy_attestation(
    registry: &Distribution,
    repo: &str,
    image: &Blob,
    keys: &[&SigningKey],
    predicate_type: &str,
    predicate: &Value,
) -> LegacyObject {
    let reference = docker_reference(registry, repo);
    let layers = keys
        .iter()
        .map(|k| attestation_layer(k, &reference, &image.digest, predicate_type, predicate))
        .collect();
    let object = legacy_manifest(layers);
    push_legacy_object(registry, repo, &att_tag(&image.digest), &object).await;
    object
}

/// The fallback index currently under `sha256-<hex>` (empty when absent).
pub async fn read_fallback_index(registry: &Distribution, repo: &str, subject: &Digest) -> Vec<IndexEntry> {
    let url = registry.url_for(&format!("/v2/{repo}/manifests/{}", referrers_tag(subject)));
    let resp = super::client::request(http::Method::GET, &url, &[("accept", OCI_INDEX)]).await;
    if resp.status == http::StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert_eq!(resp.status, http::StatusCode::OK, "GET {url}");
    let index = resp.json();
    index["manifests"]
        .as_array()
        .expect("index manifests")
        .iter()
        .map(|d| IndexEntry {
            media_type: d["mediaType"].as_str().expect("mediaType").to_owned(),
            size: d["size"].as_u64().expect("size") as usize,
            digest: d["digest"].as_str().expect("digest").parse().expect("digest"),
            artifact_type: d["artifactType"].as_str().map(str::to_owned),
        })
        .collect()
}

/// Push a referrer (config, bundle, manifest by digest), then add it to the
/// `sha256-<hex>` fallback index (read-modify-write, as go-containerregistry
/// does against a registry without the referrers API). Returns the index.
pub async fn push_referrer(registry: &Distribution, repo: &str, referrer: &Referrer) -> Blob {
    let subject: Value = serde_json::from_slice(&referrer.manifest.bytes).expect("manifest JSON");
    let subject: Digest = subject["subject"]["digest"]
        .as_str()
        .expect("referrer has a subject")
        .parse()
        .expect("subject digest");
    registry.push_blob(repo, &referrer.config).await;
    registry.push_blob(repo, &referrer.bundle).await;
    registry
        .push_manifest(repo, &referrer.manifest.digest.to_string(), &referrer.manifest)
        .await;
    let mut entries = read_fallback_index(registry, repo, &subject).await;
    entries.push(IndexEntry::ggcr(&referrer.manifest));
    let index = referrers_fallback_index(&entries);
    registry.push_manifest(repo, &referrers_tag(&subject), &index).await;
    index
}

/// Push `bundle_json` as a referrer of `image` (see [`bundle_referrer`]).
pub async fn push_bundle_referrer(
    registry: &Distribution,
    repo: &str,
    image: &Blob,
    bundle_json: Vec<u8>,
    predicate_type: &str,
) -> Referrer {
    let referrer = bundle_referrer(image, bundle_json, predicate_type, FIXED_CREATED);
    push_referrer(registry, repo, &referrer).await;
    referrer
}

/// `cosign sign --key --tlog-upload=false` (v3): a signature bundle referrer.
pub async fn push_bundle_signature(registry: &Distribution, repo: &str, image: &Blob, key: &SigningKey) -> Referrer {
    let bundle = signature_bundle(key, &image.digest);
    push_bundle_referrer(registry, repo, image, bundle, COSIGN_SIGN_PREDICATE).await
}

/// `cosign attest --key --tlog-upload=false` (v3): an attestation bundle referrer.
pub async fn push_bundle_attestation(
    registry: &Distribution,
    repo: &str,
    image: &Blob,
    key: &SigningKey,
    predicate_type: &str,
    predicate: &Value,
) -> Referrer {
    let bundle = attestation_bundle(
        key,
        &docker_reference(registry, repo),
        &image.digest,
        predicate_type,
        predicate,
    );
    push_bundle_referrer(registry, repo, image, bundle, predicate_type).await
}

// ---------------------------------------------------------------- negatives

/// Deliberately broken variants. Each is well-formed and fails for exactly
/// one reason. (A wrong key needs no helper: sign with another key.)
pub mod tamper {
    use super::*;

    /// A valid signature whose payload names `other`, not the image.
    pub fn signature_for_other_image(key: &SigningKey, docker_reference: &str, other: &Digest) -> SignedLayer {
        signature_layer(key, docker_reference, other)
    }

    /// The payload for `image` with its `docker-reference` changed after
    /// signing: still names the image, carries the original's signature.
    pub fn tampered_signature(key: &SigningKey, docker_reference: &str, image: &Digest) -> SignedLayer {
        let original = simple_signing_payload(docker_reference, image);
        let sig = key.sign(&original);
        let forged = simple_signing_payload(&format!("{docker_reference}-forged"), image);
        signature_layer_raw(forged, &sig, &BTreeMap::new())
    }

    /// A valid attestation whose statement subject is `other`.
    pub fn attestation_for_other_subject(
        key: &SigningKey,
        subject_name: &str,
        other: &Digest,
        predicate_type: &str,
        predicate: &Value,
    ) -> SignedLayer {
        attestation_layer(key, subject_name, other, predicate_type, predicate)
    }

    /// An attestation whose predicate was changed after signing (the
    /// envelope keeps the original signature).
    pub fn tampered_attestation(
        key: &SigningKey,
        subject_name: &str,
        image: &Digest,
        predicate_type: &str,
        predicate: &Value,
    ) -> SignedLayer {
        let original = statement_v01(subject_name, image, predicate_type, predicate);
        let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &original));
        let forged = statement_v01(subject_name, image, predicate_type, &json!({ "forged": true }));
        attestation_layer_raw(dsse_envelope_raw(&forged, &sig), predicate_type)
    }

    /// A valid signature bundle whose statement names `other`.
    pub fn bundle_for_other_subject(key: &SigningKey, other: &Digest) -> Vec<u8> {
        signature_bundle(key, other)
    }

    /// A signature bundle for `image` whose statement was re-encoded after
    /// signing (predicate changed), signature untouched.
    pub fn tampered_bundle(key: &SigningKey, image: &Digest) -> Vec<u8> {
        let original = cosign_sign_statement(image);
        let sig = key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &original));
        let forged = statement_v1(image, COSIGN_SIGN_PREDICATE, &json!({ "forged": true }));
        bundle_json_raw(&key.hint(), &forged, &sig, false)
    }
}
