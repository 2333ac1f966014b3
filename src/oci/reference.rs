//! The `<reference>` of a manifest request: a tag or a digest.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};
use super::name::{NameError, Tag};

/// A manifest reference as it appears in `/v2/<name>/manifests/<reference>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// Why a `<reference>` is invalid: a malformed digest (`DIGEST_INVALID`) or
/// a malformed tag (`MANIFEST_INVALID`/`NAME_INVALID` at the edge).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Tag(#[from] NameError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// Anything containing `:` must be a digest (tags cannot contain `:`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_or_digest() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:baddigeststring".parse::<Reference>(),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(".bad".parse::<Reference>(), Err(ReferenceError::Tag(_))));
    }
}
