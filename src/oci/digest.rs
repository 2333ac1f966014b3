//! Content digests (`algorithm:hex`), validated once at the edge.
//!
//! A [`Digest`] can only be built by parsing a canonical string or by
//! finishing a [`DigestHasher`], so every `Digest` in the program names a
//! supported algorithm and carries exactly that algorithm's number of bytes.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// Digest algorithms Portcullis verifies. `sha256` is canonical; the OCI
/// conformance data also uses `sha512`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The registered name, as written before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn byte_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest has no `algorithm:` prefix")]
    MissingAlgorithm,
    #[error("unsupported digest algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters")]
    BadEncoded { algorithm: &'static str, expected: usize },
}

/// A validated content digest: algorithm plus raw hash bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: Box<[u8]>,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Lowercase hex of the hash bytes; safe to use as a file name.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(self.bytes.len() * 2);
        for b in self.bytes.iter() {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
        out
    }

    /// Raw hash bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Hash `data` with `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = DigestHasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The tag under which the referrers fallback index and cosign artifacts
    /// live: `sha256-<hex>` (`:` replaced by `-`).
    pub fn tag_form(&self) -> String {
        format!("{}-{}", self.algorithm.as_str(), self.hex())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, encoded) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let bad = || DigestError::BadEncoded {
            algorithm: algorithm.as_str(),
            expected: algorithm.byte_len() * 2,
        };
        let raw = encoded.as_bytes();
        if raw.len() != algorithm.byte_len() * 2 {
            return Err(bad());
        }
        let bytes = raw
            .chunks_exact(2)
            .map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        Ok(Digest {
            algorithm,
            bytes: bytes.into_boxed_slice(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing that yields a [`Digest`] of the chosen algorithm.
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(data),
            DigestHasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, bytes): (Algorithm, Box<[u8]>) = match self {
            DigestHasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec().into()),
            DigestHasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec().into()),
        };
        Digest { algorithm, bytes }
    }
}

impl fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestHasher::Sha256(_) => f.write_str("DigestHasher(sha256)"),
            DigestHasher::Sha512(_) => f.write_str("DigestHasher(sha512)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_canonical_form() {
        let d: Digest = EMPTY_SHA256.parse().expect("valid digest");
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d, Digest::of(Algorithm::Sha256, b""));
        assert_eq!(d.tag_form(), EMPTY_SHA256.replace(':', "-"));
    }

    #[test]
    fn sha512_round_trips() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d.to_string().len(), "sha512:".len() + 128);
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn rejects_each_malformation() {
        assert_eq!("abc".parse::<Digest>(), Err(DigestError::MissingAlgorithm));
        assert!(matches!(
            "md5:abc".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:baddigeststring".parse::<Digest>(),
            Err(DigestError::BadEncoded { .. })
        ));
        // one hex digit short
        assert!(EMPTY_SHA256[..EMPTY_SHA256.len() - 1].parse::<Digest>().is_err());
        // uppercase hex is not canonical
        assert!(
            EMPTY_SHA256
                .to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn serde_goes_through_validation() {
        let ok: Result<Digest, _> = serde_json::from_str(&format!("\"{EMPTY_SHA256}\""));
        assert!(ok.is_ok());
        let bad: Result<Digest, _> = serde_json::from_str("\"sha256:zz\"");
        assert!(bad.is_err());
    }
}
