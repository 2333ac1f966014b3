//! Repository names, tags and registry hosts, validated by the
//! distribution-spec grammars.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Clients limit `host[:port]/name` to 255 characters.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a repository name, tag or host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name `{0}` does not match the OCI name grammar")]
    BadName(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("tag `{0}` does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
    #[error("`{0}` is not a registry host[:port]")]
    BadHost(String),
}

/// A repository name: `/`-separated path components, each
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, of any depth.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Arc<str>);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The number of path components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// `library/<name>`, as Docker Hub expects for single-segment names.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.depth() == 1 {
            RepoName(format!("library/{}", self.0).into())
        } else {
            self.clone()
        }
    }
}

fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`, followed by alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        if s.split('/').all(is_component) {
            Ok(RepoName(s.into()))
        } else {
            Err(NameError::BadName(s.to_owned()))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<str>);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .skip(1)
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(s.into()))
        } else {
            Err(NameError::BadTag(s.to_owned()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// A registry host as clients write it: `host[:port]`, lowercased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(Arc<str>);

impl RegistryHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same test Docker and containerd use when parsing references: a
    /// first path segment is a registry host if it contains `.` or `:` or is
    /// `localhost`. Docker Hub namespaces cannot contain dots, so this is
    /// unambiguous for docker.io.
    pub fn looks_like_host(segment: &str) -> bool {
        segment.contains('.') || segment.contains(':') || segment == "localhost"
    }
}

impl FromStr for RegistryHost {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::BadHost(s.to_owned());
        let (host, port) = match s.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (s, None), // bare IPv6: refused below
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if let Some(port) = port
            && (port.is_empty() || port.len() > 5 || !port.bytes().all(|c| c.is_ascii_digit()))
        {
            return Err(bad());
        }
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                })
        };
        if host_ok {
            Ok(RegistryHost(s.to_ascii_lowercase().into()))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryHost({})", self.0)
    }
}

/// Names serialise as their text and deserialise through validation, like
/// [`super::Digest`]: a persisted record cannot smuggle in an invalid name.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_via_str!(RepoName, Tag, RegistryHost);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_any_depth_and_separators() {
        for ok in [
            "a",
            "library/nginx",
            "a/b/c/d/e/f/g/h/i",
            "foo.bar/baz_qux/a__b/c-d/e---f",
            "0/9",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a_", "-a", "a___b", "a..b", "a._b", "a:b", "a/B",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert_eq!("a".repeat(256).parse::<RepoName>(), Err(NameError::NameTooLong));
    }

    #[test]
    fn library_prefix_only_for_single_segment() {
        let one: RepoName = "nginx".parse().expect("valid");
        let two: RepoName = "bitnami/nginx".parse().expect("valid");
        assert_eq!(one.with_library_prefix().as_str(), "library/nginx");
        assert_eq!(two.with_library_prefix().as_str(), "bitnami/nginx");
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in ["docker.io", "127.0.0.1:5000", "localhost", "[::1]:5000", "Ghcr.IO"] {
            assert!(ok.parse::<RegistryHost>().is_ok(), "{ok}");
        }
        assert_eq!(
            "Ghcr.IO".parse::<RegistryHost>().map(|h| h.to_string()),
            Ok("ghcr.io".into())
        );
        for bad in ["", "a:", "a:port", "a b", "::1", "-a.com", "a..b"] {
            assert!(bad.parse::<RegistryHost>().is_err(), "{bad}");
        }
        assert!(RegistryHost::looks_like_host("ghcr.io"));
        assert!(RegistryHost::looks_like_host("localhost"));
        assert!(!RegistryHost::looks_like_host("library"));
    }
}
