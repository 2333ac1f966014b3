//! Static bearer tokens (CI robots): `NAME TOKEN` lines. A token may be
//! written as `sha256:<hex>` of its value so the file need not hold it.
//! Only the sha256 of each token is kept in memory.

use std::collections::HashMap;
use std::fmt;

use super::htpasswd::FileError;
use crate::oci::{Algorithm, Digest};

/// Tokens by their sha256 → the identity (user) name they stand for.
#[derive(Clone, Default)]
pub struct StaticTokens {
    by_hash: HashMap<Digest, String>,
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("count", &self.by_hash.len())
            .finish()
    }
}

/// Tokens shorter than this are refused: they would be guessable.
const MIN_TOKEN_LEN: usize = 16;

impl StaticTokens {
    pub fn parse(text: &str) -> Result<StaticTokens, FileError> {
        let mut by_hash = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let invalid = |message: &str| FileError::Invalid {
                line,
                message: message.to_owned(),
            };
            let mut fields = t.split_whitespace();
            let (Some(name), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(invalid("expected `NAME TOKEN`"));
            };
            let name = name.strip_prefix("user:").unwrap_or(name);
            if name.is_empty() || name.contains(':') {
                return Err(invalid("the name must be a user name (`robot` or `user:robot`)"));
            }
            let hash = match token.strip_prefix("sha256:") {
                Some(_) => token
                    .parse::<Digest>()
                    .map_err(|_| invalid("`sha256:` must be followed by 64 hex digits"))?,
                None if token.len() < MIN_TOKEN_LEN => {
                    return Err(invalid("tokens must be at least 16 characters"));
                }
                None => hash(token),
            };
            if by_hash.insert(hash, name.to_owned()).is_some() {
                return Err(invalid("this token appears twice"));
            }
        }
        Ok(StaticTokens { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The name a presented token stands for.
    pub fn lookup(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash(token)).map(String::as_str)
    }

    /// Whether `name` has a token (a Basic login with a token as password).
    pub fn has_name(&self, name: &str) -> bool {
        self.by_hash.values().any(|n| n == name)
    }
}

fn hash(token: &str) -> Digest {
    Digest::of(Algorithm::Sha256, token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_tokens() {
        let hashed = hash("another-long-token-value");
        let text = format!("# robots\nci-robot  0123456789abcdef-token\nuser:deployer {hashed}\n");
        let t = StaticTokens::parse(&text).expect("valid");
        assert_eq!(t.lookup("0123456789abcdef-token"), Some("ci-robot"));
        assert_eq!(t.lookup("another-long-token-value"), Some("deployer"));
        assert_eq!(t.lookup("0123456789abcdef-tokeN"), None);
        assert!(t.has_name("deployer"));
        assert!(!format!("{t:?}").contains("0123"));
        for bad in [
            "robot\n",
            "robot short\n",
            "robot sha256:zz\n",
            "a b c\n",
            "group:x 0123456789abcdef-token\n",
        ] {
            assert!(StaticTokens::parse(bad).is_err(), "{bad}");
        }
    }
}
