//! Public keys for signature verification: PEM `PUBLIC KEY` (SPKI) for
//! ECDSA P-256/P-384/P-521, RSA (PKCS#1 v1.5) and Ed25519, with the hash
//! chosen by policy. cosign signs with SHA-256 whatever the curve, so a
//! P-384 key verifies ECDSA-P384 over SHA-256 unless configured otherwise.

use std::fmt;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use spki::der::asn1::BitString;
use spki::der::{Any, Decode, Encode};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::oci::{Algorithm, Digest};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The hash a signature was made over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The key's algorithm, from its SPKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa,
    Ed25519,
}

/// Why a key could not be loaded or a signature did not verify.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a PEM PUBLIC KEY: {0}")]
    Pem(String),
    #[error("malformed SubjectPublicKeyInfo: {0}")]
    Spki(String),
    #[error("unsupported key algorithm {0}")]
    Unsupported(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("a {0:?} key cannot verify a signature over a precomputed {1} digest")]
    NotPrehashable(KeyKind, &'static str),
}

/// A verification key with its signing hash.
#[derive(Clone)]
pub struct PublicKey {
    kind: KeyKind,
    hash: SignatureHash,
    /// The SPKI `subjectPublicKey` bits (EC point, PKCS#1 RSA key, Ed25519).
    raw: Vec<u8>,
    /// The SPKI DER in its one canonical encoding (named curve and
    /// uncompressed point for EC, NULL parameters for RSA), so that the same
    /// key always has the same [`PublicKey::fingerprint`].
    spki: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?}, {:?})", self.kind, self.hash)
    }
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY`.
    pub fn from_pem(pem: &[u8], hash: SignatureHash) -> Result<PublicKey, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| KeyError::Pem(e.to_string()))?;
        Self::from_spki_der(der.as_ref(), hash)
    }

    /// Parse DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8], hash: SignatureHash) -> Result<PublicKey, KeyError> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der).map_err(|e| KeyError::Spki(e.to_string()))?;
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| KeyError::Spki("public key BIT STRING has unused bits".into()))?
            .to_vec();
        let kind = match spki.algorithm.oid {
            ID_EC_PUBLIC_KEY => match spki.algorithm.parameters_oid() {
                Ok(SECP256R1) => KeyKind::EcdsaP256,
                Ok(SECP384R1) => KeyKind::EcdsaP384,
                Ok(SECP521R1) => KeyKind::EcdsaP521,
                _ => return Err(KeyError::Unsupported("EC curve".into())),
            },
            RSA_ENCRYPTION => KeyKind::Rsa,
            ID_ED25519 => KeyKind::Ed25519,
            oid => return Err(KeyError::Unsupported(oid.to_string())),
        };
        // A compressed point is the same key under another encoding: it would
        // get another fingerprint and count as another signer.
        if kind.curve().is_some() && raw.first() != Some(&0x04) {
            return Err(KeyError::Spki("EC public key is not an uncompressed point".into()));
        }
        let spki = canonical_spki(kind, &raw)?;
        Ok(PublicKey { kind, hash, raw, spki })
    }

    /// The key's identity as a signer: sha256 of its canonical DER
    /// SubjectPublicKeyInfo (what `openssl pkey -pubin -outform DER |
    /// sha256sum` prints for a key cosign generated).
    pub fn fingerprint(&self) -> Digest {
        Digest::of(Algorithm::Sha256, &self.spki)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    fn algorithm(&self) -> &'static dyn VerificationAlgorithm {
        use SignatureHash::*;
        match (self.kind, self.hash) {
            (KeyKind::EcdsaP256, Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::EcdsaP256, Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyKind::EcdsaP256, Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
            (KeyKind::EcdsaP384, Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyKind::EcdsaP384, Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyKind::EcdsaP384, Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
            (KeyKind::EcdsaP521, Sha256) => &signature::ECDSA_P521_SHA256_ASN1,
            (KeyKind::EcdsaP521, Sha384) => &signature::ECDSA_P521_SHA384_ASN1,
            (KeyKind::EcdsaP521, Sha512) => &signature::ECDSA_P521_SHA512_ASN1,
            (KeyKind::Rsa, Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, Sha512) => &signature::RSA_PKCS1_2048_8192_SHA512,
            // Ed25519 signs the message itself (no prehash).
            (KeyKind::Ed25519, _) => &signature::ED25519,
        }
    }

    /// Verify `sig` over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        UnparsedPublicKey::new(self.algorithm(), &self.raw)
            .verify(message, sig)
            .map_err(|_| KeyError::BadSignature)
    }

    /// Verify `sig` over a message of which only `digest` is known (a
    /// `cosign sign-blob` signature over manifest bytes, given the manifest
    /// digest). The digest's algorithm must be the key's signing hash;
    /// Ed25519 signs the message itself and cannot verify this way.
    pub fn verify_prehashed(&self, digest: &Digest, sig: &[u8]) -> Result<(), KeyError> {
        use aws_lc_rs::digest;
        let wanted: &'static digest::Algorithm = match (self.kind, self.hash) {
            (KeyKind::Ed25519, _) => return Err(KeyError::NotPrehashable(self.kind, digest.algorithm().as_str())),
            (_, SignatureHash::Sha256) => &digest::SHA256,
            (_, SignatureHash::Sha384) => &digest::SHA384,
            (_, SignatureHash::Sha512) => &digest::SHA512,
        };
        let prehashed = digest::Digest::import_less_safe(digest.as_bytes(), wanted)
            .map_err(|_| KeyError::NotPrehashable(self.kind, digest.algorithm().as_str()))?;
        UnparsedPublicKey::new(self.algorithm(), &self.raw)
            .verify_digest(&prehashed, sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

impl KeyKind {
    fn curve(self) -> Option<ObjectIdentifier> {
        match self {
            KeyKind::EcdsaP256 => Some(SECP256R1),
            KeyKind::EcdsaP384 => Some(SECP384R1),
            KeyKind::EcdsaP521 => Some(SECP521R1),
            KeyKind::Rsa | KeyKind::Ed25519 => None,
        }
    }
}

/// Re-encode the key as DER SPKI with the parameters each algorithm's RFC
/// prescribes (RFC 5480 named curve, RFC 3279 NULL for RSA, RFC 8410 none
/// for Ed25519), whatever the PEM carried.
fn canonical_spki(kind: KeyKind, raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    let der_err = |e: spki::der::Error| KeyError::Spki(e.to_string());
    let (oid, parameters) = match kind {
        KeyKind::Rsa => (RSA_ENCRYPTION, Some(Any::null())),
        KeyKind::Ed25519 => (ID_ED25519, None),
        ec => (ID_EC_PUBLIC_KEY, ec.curve().map(Any::from)),
    };
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned { oid, parameters },
        subject_public_key: BitString::from_bytes(raw).map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn spki_for_p256(point: &[u8]) -> Vec<u8> {
        // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
        let mut alg = vec![
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
            0x03, 0x01, 0x07,
        ];
        let mut bits = vec![0x03, (point.len() + 1) as u8, 0x00];
        bits.extend_from_slice(point);
        alg.extend(bits);
        let mut out = vec![0x30, alg.len() as u8];
        out.extend(alg);
        out
    }

    #[test]
    fn p256_sha256_round_trip_and_tamper() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("kp");
        let sig = kp.sign(&rng, b"payload").expect("sign");
        let key =
            PublicKey::from_spki_der(&spki_for_p256(kp.public_key().as_ref()), SignatureHash::Sha256).expect("key");
        assert_eq!(key.kind(), KeyKind::EcdsaP256);
        assert_eq!(key.verify(b"payload", sig.as_ref()), Ok(()));
        assert_eq!(key.verify(b"payloaD", sig.as_ref()), Err(KeyError::BadSignature));
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_spki_and_compressed_points_are_refused() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("kp");
        let point = kp.public_key().as_ref();
        let der = spki_for_p256(point);
        let key = PublicKey::from_spki_der(&der, SignatureHash::Sha256).expect("key");
        assert_eq!(
            key.spki_der(),
            der.as_slice(),
            "a cosign P-256 key is already canonical"
        );
        assert_eq!(key.fingerprint(), Digest::of(Algorithm::Sha256, &der));
        // The signing hash is policy, not identity.
        let sha384 = PublicKey::from_spki_der(&der, SignatureHash::Sha384).expect("key");
        assert_eq!(sha384.fingerprint(), key.fingerprint());
        // The same point compressed (0x02/0x03 + x) is refused rather than
        // becoming a second identity for the same key.
        let mut compressed = vec![0x02 | (point[64] & 1)];
        compressed.extend_from_slice(&point[1..33]);
        assert!(matches!(
            PublicKey::from_spki_der(&spki_for_p256(&compressed), SignatureHash::Sha256),
            Err(KeyError::Spki(m)) if m.contains("uncompressed")
        ));
    }

    #[test]
    fn prehashed_verification_over_a_manifest_digest() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("kp");
        let key =
            PublicKey::from_spki_der(&spki_for_p256(kp.public_key().as_ref()), SignatureHash::Sha256).expect("key");
        let manifest = br#"{"schemaVersion":2}"#;
        let sig = kp.sign(&rng, manifest).expect("sign");
        let digest = Digest::of(Algorithm::Sha256, manifest);
        assert_eq!(key.verify_prehashed(&digest, sig.as_ref()), Ok(()));
        let other = Digest::of(Algorithm::Sha256, b"another manifest");
        assert_eq!(key.verify_prehashed(&other, sig.as_ref()), Err(KeyError::BadSignature));
        let sha512 = Digest::of(Algorithm::Sha512, manifest);
        assert!(matches!(
            key.verify_prehashed(&sha512, sig.as_ref()),
            Err(KeyError::NotPrehashable(..))
        ));
    }

    #[test]
    fn ed25519() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("kp");
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(kp.public_key().as_ref());
        let key = PublicKey::from_spki_der(&der, SignatureHash::Sha256).expect("key");
        let sig = kp.sign(b"m");
        assert_eq!(key.verify(b"m", sig.as_ref()), Ok(()));
    }

    fn fixture(rel: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/sigstore/{rel}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    #[test]
    fn golden_cosign_key_only_signature() {
        use base64::Engine as _;
        let key = PublicKey::from_pem(&fixture("legacy-tag/keys/cosign.pub"), SignatureHash::Sha256).expect("key");
        let payload = fixture("legacy-tag/key-only/layer-payload.json");
        let sig_b64 = String::from_utf8(fixture("legacy-tag/key-only/signature.b64")).expect("utf8");
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig_b64.trim())
            .expect("base64");
        assert_eq!(key.verify(&payload, &sig), Ok(()));
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert_eq!(key.verify(&tampered, &sig), Err(KeyError::BadSignature));
        // The other fixture key must not verify it.
        let other = PublicKey::from_pem(&fixture("legacy-tag/keys/cosign2.pub"), SignatureHash::Sha256).expect("key");
        assert_eq!(other.verify(&payload, &sig), Err(KeyError::BadSignature));
        assert!(matches!(
            PublicKey::from_pem(b"nope", SignatureHash::Sha256),
            Err(KeyError::Pem(_))
        ));
    }
}
