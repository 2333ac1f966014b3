//! Streaming blob verification: hash bytes as they pass and prove, at the
//! end, that they are exactly the named blob.

use crate::oci::{Digest, DigestHasher, ManifestError};

/// An integrity failure: bytes that are not what their name says.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntegrityError {
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upstream Docker-Content-Digest {claimed} does not match the bytes ({actual})")]
    ClaimedDigestMismatch { claimed: Digest, actual: Digest },
    #[error("body is longer than the expected {expected} bytes")]
    TooLong { expected: u64 },
    #[error("body ended after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    #[error("content is larger than the {limit}-byte limit for verification material")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Proof that a byte stream hashed to the expected digest with the expected
/// length. Only [`BlobVerifier::finish`] creates one; the blob store commits
/// a file only in exchange for it.
#[derive(Debug)]
pub struct DigestMatched {
    digest: Digest,
    length: u64,
}

impl DigestMatched {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn length(&self) -> u64 {
        self.length
    }
}

/// Hashes a blob chunk by chunk and checks its length as it goes, so an
/// over-long body is refused at the first extra byte.
#[derive(Debug)]
pub struct BlobVerifier {
    expected: Digest,
    expected_len: Option<u64>,
    hasher: DigestHasher,
    seen: u64,
}

impl BlobVerifier {
    pub fn new(expected: Digest, expected_len: Option<u64>) -> Self {
        BlobVerifier {
            hasher: DigestHasher::new(expected.algorithm()),
            expected,
            expected_len,
            seen: 0,
        }
    }

    /// Feed the next chunk.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), IntegrityError> {
        self.seen += chunk.len() as u64;
        if let Some(expected) = self.expected_len
            && self.seen > expected
        {
            return Err(IntegrityError::TooLong { expected });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// End of stream: the length must be complete and the digest must match.
    pub fn finish(self) -> Result<DigestMatched, IntegrityError> {
        if let Some(expected) = self.expected_len
            && self.seen != expected
        {
            return Err(IntegrityError::Truncated {
                received: self.seen,
                expected,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(IntegrityError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(DigestMatched {
            digest: actual,
            length: self.seen,
        })
    }
}

/// The proof for `bytes`, made by running them through the verifier: for
/// the tests of the proof's consumers (store, spool).
#[cfg(test)]
pub(crate) fn proof_for(bytes: &[u8]) -> DigestMatched {
    let mut v = BlobVerifier::new(
        Digest::of(crate::oci::Algorithm::Sha256, bytes),
        Some(bytes.len() as u64),
    );
    v.update(bytes).expect("expected length");
    v.finish().expect("matching digest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn matching_stream_in_pieces() {
        let data = b"hello world";
        let d = Digest::of(Algorithm::Sha256, data);
        let mut v = BlobVerifier::new(d.clone(), Some(11));
        v.update(b"hello ").expect("fits");
        v.update(b"world").expect("fits");
        let proof = v.finish().expect("matches");
        assert_eq!(proof.digest(), &d);
        assert_eq!(proof.length(), 11);
    }

    #[test]
    fn each_failure() {
        let d = Digest::of(Algorithm::Sha256, b"abc");
        let mut v = BlobVerifier::new(d.clone(), Some(3));
        assert_eq!(v.update(b"abcd"), Err(IntegrityError::TooLong { expected: 3 }));

        let mut v = BlobVerifier::new(d.clone(), Some(3));
        v.update(b"ab").expect("fits");
        assert!(matches!(
            v.finish(),
            Err(IntegrityError::Truncated {
                received: 2,
                expected: 3
            })
        ));

        let mut v = BlobVerifier::new(d.clone(), Some(3));
        v.update(b"abd").expect("fits");
        assert!(matches!(v.finish(), Err(IntegrityError::DigestMismatch { .. })));

        let mut v = BlobVerifier::new(d, None);
        v.update(b"abc").expect("fits");
        assert!(v.finish().is_ok());
    }
}
