//! Who a client is, once authenticated.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An authenticated (or, where allowed, anonymous) client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Identity {
    /// No credentials, and `auth.anonymous: true` (or no `auth:` at all).
    Anonymous,
    /// An htpasswd user or a static token's name, with its groups.
    User { name: String, groups: Vec<String> },
    /// A verified client certificate: its subject DN first, then its SANs.
    Cert { names: Vec<String> },
}

impl Identity {
    /// The name rules and logs use for a certificate: the subject DN, or
    /// the first SAN when the subject is empty.
    fn cert_name(names: &[String]) -> &str {
        names.first().map_or("-", String::as_str)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User { name, .. } => write!(f, "user:{name}"),
            Identity::Cert { names } => write!(f, "cert:{}", Identity::cert_name(names)),
        }
    }
}

/// How the client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    None,
    Basic,
    StaticToken,
    IssuedToken,
    Certificate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Basic => "basic",
            Method::StaticToken => "static-token",
            Method::IssuedToken => "issued-token",
            Method::Certificate => "certificate",
        }
    }
}

/// An identity with what its credential limits it to.
#[derive(Clone, Debug)]
pub struct Principal {
    pub identity: Identity,
    pub method: Method,
    /// Set for issued tokens: the repository names (as the client sees
    /// them) the token may pull; everything else needs a new token.
    pub scope: Option<Vec<String>>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            identity: Identity::Anonymous,
            method: Method::None,
            scope: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.identity == Identity::Anonymous
    }
}
