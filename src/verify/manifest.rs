//! Manifest verification: `UnverifiedManifest` → `VerifiedManifest`.

use bytes::Bytes;

use super::blob::IntegrityError;
use crate::oci::{Digest, ManifestInfo, ManifestMediaType};

/// Manifest bytes as received from an upstream or read from disk: nothing
/// about them is trusted yet.
#[derive(Clone, Debug)]
pub struct UnverifiedManifest {
    pub bytes: Bytes,
    /// The `Content-Type` it was served with, if any.
    pub content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, if it sent one.
    pub claimed_digest: Option<Digest>,
}

/// Manifest bytes whose digest, size and structure have been checked. Only
/// [`check`] builds one, so holding a `VerifiedManifest` proves the bytes
/// hash to `digest`.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    digest: Digest,
    bytes: Bytes,
    info: ManifestInfo,
}

impl VerifiedManifest {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The exact bytes that hash to [`Self::digest`]; serve these verbatim.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn media_type(&self) -> ManifestMediaType {
        self.info.media_type
    }

    pub fn info(&self) -> &ManifestInfo {
        &self.info
    }
}

/// Verify that `m` is the manifest named by `expected`: its bytes hash to
/// `expected` (with `expected`'s algorithm), the upstream's claimed digest (if
/// any) agrees, it is at most 4 MiB, and it parses as a supported manifest
/// whose `mediaType` agrees with its `Content-Type`.
pub fn check(m: UnverifiedManifest, expected: &Digest) -> Result<VerifiedManifest, IntegrityError> {
    let actual = Digest::of(expected.algorithm(), &m.bytes);
    if &actual != expected {
        return Err(IntegrityError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    if let Some(claimed) = &m.claimed_digest {
        let actual_in_claimed_alg = if claimed.algorithm() == expected.algorithm() {
            actual.clone()
        } else {
            Digest::of(claimed.algorithm(), &m.bytes)
        };
        if claimed != &actual_in_claimed_alg {
            return Err(IntegrityError::ClaimedDigestMismatch {
                claimed: claimed.clone(),
                actual: actual_in_claimed_alg,
            });
        }
    }
    let info = ManifestInfo::parse(&m.bytes, m.content_type.as_deref())?;
    Ok(VerifiedManifest {
        digest: actual,
        bytes: m.bytes,
        info,
    })
}

/// Verify manifest bytes fetched by tag with no trustworthy digest: the
/// digest is computed from the bytes (sha256) and must agree with any digest
/// the upstream claimed. Used when an upstream omits `Docker-Content-Digest`.
pub fn check_computed(m: UnverifiedManifest) -> Result<VerifiedManifest, IntegrityError> {
    let algorithm = m
        .claimed_digest
        .as_ref()
        .map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
    let digest = Digest::of(algorithm, &m.bytes);
    check(m, &digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::{MAX_MANIFEST_BYTES, OCI_MANIFEST};
    use crate::oci::{Algorithm, ManifestError};

    fn manifest() -> Bytes {
        let d = Digest::of(Algorithm::Sha256, b"");
        Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":0}},"layers":[]}}"#
        ))
    }

    fn unverified(bytes: Bytes) -> UnverifiedManifest {
        UnverifiedManifest {
            bytes,
            content_type: Some(OCI_MANIFEST.into()),
            claimed_digest: None,
        }
    }

    #[test]
    fn accepts_matching_bytes() {
        let b = manifest();
        let d = Digest::of(Algorithm::Sha256, &b);
        let v = check(unverified(b.clone()), &d).expect("verifies");
        assert_eq!(v.digest(), &d);
        assert_eq!(v.bytes(), &b);
    }

    #[test]
    fn sha512_digest_is_checked_with_sha512() {
        let b = manifest();
        let d = Digest::of(Algorithm::Sha512, &b);
        assert!(check(unverified(b), &d).is_ok());
    }

    #[test]
    fn rejects_flipped_byte() {
        let b = manifest();
        let d = Digest::of(Algorithm::Sha256, &b);
        let mut v = b.to_vec();
        v[10] ^= 1;
        assert!(matches!(
            check(unverified(v.into()), &d),
            Err(IntegrityError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn rejects_lying_docker_content_digest() {
        let b = manifest();
        let d = Digest::of(Algorithm::Sha256, &b);
        let mut m = unverified(b);
        m.claimed_digest = Some(Digest::of(Algorithm::Sha256, b"other"));
        assert!(matches!(
            check(m, &d),
            Err(IntegrityError::ClaimedDigestMismatch { .. })
        ));
    }

    #[test]
    fn rejects_oversize_even_when_digest_matches() {
        let b = Bytes::from(vec![b' '; MAX_MANIFEST_BYTES + 1]);
        let d = Digest::of(Algorithm::Sha256, &b);
        assert!(matches!(
            check(unverified(b), &d),
            Err(IntegrityError::Manifest(ManifestError::TooLarge))
        ));
    }
}
