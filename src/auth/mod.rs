//! Client authentication and per-repository authorization (issue 11):
//! who a client is (htpasswd Basic credentials, tokens issued by `/token`,
//! static bearer tokens, verified client certificates, or `anonymous`) and
//! whether the rules let that identity pull a repository.
//!
//! Credentials files are re-read when their content changes or on SIGHUP
//! ([`Auth::reload`]); a file that does not parse is refused and the
//! previous credentials stay in force. No credential (password, token,
//! header, key) appears in any `Debug`, `Display` or log output.
//!
//! Imports: `oci`, `config`, `telemetry` (failures are counted). Knows
//! nothing of upstreams or HTTP routing.

mod cert;
pub mod failure;
mod htpasswd;
pub mod identity;
pub mod jwt;
pub mod rules;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;

pub use cert::identity as cert_identity;
pub use failure::{AuthFailure, record};
pub use htpasswd::{FileError, Groups, Htpasswd};
pub use identity::{Identity, Method, Principal};
pub use jwt::{Access, Claims, Issued, TokenKeys};
pub use tokens::StaticTokens;

use crate::config::AuthConfig;
use crate::oci::{Algorithm, Digest};

/// Why the authentication state could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: FileError },
    #[error("token key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("cannot make a token key: {0}")]
    RandomKey(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// The credentials read from the files, replaced whole on reload.
#[derive(Debug, Default)]
struct Credentials {
    htpasswd: Htpasswd,
    groups: Groups,
    tokens: StaticTokens,
    /// The files' content hashes when they were read.
    fingerprint: Vec<(PathBuf, Option<Digest>)>,
}

/// Authentication and authorization state, shared by every connection.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    credentials: RwLock<Arc<Credentials>>,
    keys: TokenKeys,
    /// Successful bcrypt checks, keyed by sha256(user, password, stored
    /// hash): a client sending Basic credentials on every request costs
    /// one bcrypt per minute, and a changed hash is a new key.
    verified: moka::sync::Cache<Digest, ()>,
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parsed<T>(path: &Path, parse: impl Fn(&str) -> Result<T, FileError>) -> Result<T, AuthError> {
    parse(&read(path)?).map_err(|source| AuthError::File {
        path: path.to_owned(),
        source,
    })
}

fn content_hash(path: &Path) -> Option<Digest> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Digest::of(Algorithm::Sha256, &bytes))
}

impl Auth {
    /// Read every file `auth:` names and make the token key.
    pub fn new(config: &AuthConfig) -> Result<Auth, AuthError> {
        let credentials = Self::load(config)?;
        let keys = match &config.token_key {
            Some(path) => {
                let secret = std::fs::read(path).map_err(|source| AuthError::Read {
                    path: path.clone(),
                    source,
                })?;
                let trimmed = secret.trim_ascii_end();
                TokenKeys::new(trimmed, &config.service, config.token_ttl, true).map_err(|message| AuthError::Key {
                    path: path.clone(),
                    message,
                })?
            }
            None => TokenKeys::random(&config.service, config.token_ttl).map_err(AuthError::RandomKey)?,
        };
        Ok(Auth {
            config: config.clone(),
            credentials: RwLock::new(Arc::new(credentials)),
            keys,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// The credentials files (watched for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        Self::files_of(&self.config)
    }

    fn files_of(config: &AuthConfig) -> Vec<PathBuf> {
        [&config.htpasswd, &config.groups_file, &config.tokens]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Blocking: read and parse every credentials file.
    fn load(config: &AuthConfig) -> Result<Credentials, AuthError> {
        let fingerprint = Self::files_of(config)
            .into_iter()
            .map(|p| {
                let h = content_hash(&p);
                (p, h)
            })
            .collect();
        let htpasswd = config
            .htpasswd
            .as_deref()
            .map(|p| parsed(p, Htpasswd::parse))
            .transpose()?
            .unwrap_or_default();
        let mut groups = config
            .groups_file
            .as_deref()
            .map(|p| parsed(p, Groups::parse))
            .transpose()?
            .unwrap_or_default();
        groups.merge(&config.groups);
        let tokens = config
            .tokens
            .as_deref()
            .map(|p| parsed(p, StaticTokens::parse))
            .transpose()?
            .unwrap_or_default();
        Ok(Credentials {
            htpasswd,
            groups,
            tokens,
            fingerprint,
        })
    }

    fn current(&self) -> Arc<Credentials> {
        match self.credentials.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Blocking: re-read the files if their content changed (or `force`).
    /// `Ok(true)`: new credentials are in force; an error leaves the old.
    pub fn reload(&self, force: bool) -> Result<bool, AuthError> {
        let old = self.current();
        let now: Vec<_> = self
            .files()
            .into_iter()
            .map(|p| {
                let h = content_hash(&p);
                (p, h)
            })
            .collect();
        if !force && now == old.fingerprint {
            return Ok(false);
        }
        let fresh = Self::load(&self.config)?;
        let mut slot = match self.credentials.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(fresh);
        Ok(true)
    }

    /// (users, static tokens) now in force, for the startup line.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.current();
        (c.htpasswd.len(), c.tokens.len())
    }

    /// Who the client is. `authorization` is the request's header; `cert`
    /// the identity of a verified client certificate. No credentials:
    /// the certificate's identity, else `anonymous` where allowed, else
    /// [`AuthFailure::MissingCredentials`].
    pub async fn authenticate(
        self: &Arc<Self>,
        authorization: Option<&[u8]>,
        cert: Option<&Identity>,
    ) -> Result<Principal, AuthFailure> {
        let Some(header) = authorization else {
            return self.without_credentials(cert);
        };
        let header = std::str::from_utf8(header).map_err(|_| AuthFailure::MalformedCredentials)?;
        let (scheme, value) = header.trim().split_once(' ').ok_or(AuthFailure::MalformedCredentials)?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(value)?;
            self.check_basic(&user, &password).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.check_bearer(value)
        } else {
            Err(AuthFailure::UnsupportedScheme)
        }
    }

    /// The principal of a request without an `Authorization` header.
    pub fn without_credentials(&self, cert: Option<&Identity>) -> Result<Principal, AuthFailure> {
        match cert {
            Some(identity) => Ok(Principal {
                identity: identity.clone(),
                method: Method::Certificate,
                scope: None,
            }),
            None if self.config.anonymous => Ok(Principal::anonymous()),
            None => Err(AuthFailure::MissingCredentials),
        }
    }

    fn user(&self, credentials: &Credentials, name: &str, method: Method) -> Principal {
        Principal {
            identity: Identity::User {
                name: name.to_owned(),
                groups: credentials.groups.of(name),
            },
            method,
            scope: None,
        }
    }

    /// Basic credentials: an htpasswd user and password, or a static
    /// token's name and the token (`docker login -u robot -p TOKEN`).
    pub async fn check_basic(self: &Arc<Self>, user: &str, password: &str) -> Result<Principal, AuthFailure> {
        let credentials = self.current();
        if let Some(hash) = credentials.htpasswd.hash_of(user) {
            let key = Digest::of(
                Algorithm::Sha256,
                [user.as_bytes(), password.as_bytes(), hash.as_bytes()]
                    .join(&0u8)
                    .as_slice(),
            );
            if self.verified.contains_key(&key) {
                return Ok(self.user(&credentials, user, Method::Basic));
            }
            let (c, u, p) = (credentials.clone(), user.to_owned(), password.to_owned());
            tokio::task::spawn_blocking(move || c.htpasswd.verify(&u, &p))
                .await
                .map_err(|_| AuthFailure::BadPassword)??;
            self.verified.insert(key, ());
            return Ok(self.user(&credentials, user, Method::Basic));
        }
        if credentials.tokens.lookup(password) == Some(user) {
            return Ok(self.user(&credentials, user, Method::StaticToken));
        }
        // Unknown: spend a bcrypt's time all the same.
        let (c, u, p) = (credentials.clone(), user.to_owned(), password.to_owned());
        let _ = tokio::task::spawn_blocking(move || c.htpasswd.verify(&u, &p)).await;
        Err(AuthFailure::UnknownUser)
    }

    /// A bearer token: one issued by `/token` (a JWT), or a static token.
    fn check_bearer(&self, token: &str) -> Result<Principal, AuthFailure> {
        if token.split('.').count() == 3 {
            return self.keys.verify(token);
        }
        let credentials = self.current();
        match credentials.tokens.lookup(token) {
            Some(name) => Ok(self.user(&credentials, name, Method::StaticToken)),
            None => Err(AuthFailure::BadToken),
        }
    }

    /// May `principal` pull `repository` of `registry` (upstream names),
    /// asked for as `client_name`? `Ok(rule index)`, or
    /// [`AuthFailure::NotAllowed`] (no rule) or
    /// [`AuthFailure::TokenOutOfScope`] (a rule allows it, but the issued
    /// token presented was not issued for this name).
    pub fn authorize(
        &self,
        principal: &Principal,
        registry: &str,
        repository: &str,
        client_name: &str,
    ) -> Result<usize, AuthFailure> {
        let rule = rules::first_match(&self.config.rules, &principal.identity, registry, repository)
            .ok_or(AuthFailure::NotAllowed)?;
        match &principal.scope {
            Some(names) if !names.iter().any(|n| n == client_name) => Err(AuthFailure::TokenOutOfScope),
            _ => Ok(rule),
        }
    }

    /// Sign a token for `principal` with the (already authorized) `access`.
    pub fn issue(&self, principal: &Principal, access: Vec<Access>) -> Result<Issued, AuthError> {
        let claims = self.keys.claims(&principal.identity, access);
        self.keys.sign(&claims).map_err(AuthError::Sign)
    }

    /// One phrase for the startup line: the methods, whether anonymous
    /// pulls are allowed, and the number of rules.
    pub fn describe(&self) -> String {
        let (users, tokens) = self.counts();
        let mut methods = Vec::new();
        if self.config.htpasswd.is_some() {
            methods.push(format!("htpasswd ({users} users)"));
        }
        if self.config.tokens.is_some() {
            methods.push(format!("static tokens ({tokens})"));
        }
        if self.config.client_ca.is_some() {
            methods.push("mTLS client certificates".to_owned());
        }
        methods.push(format!(
            "issued tokens ({}s, {} key)",
            self.config.token_ttl.as_secs(),
            if self.keys.shared { "shared" } else { "per-process" }
        ));
        format!(
            "{}; anonymous {}; {} rules",
            methods.join(", "),
            if self.config.anonymous {
                "allowed (as `anonymous`)"
            } else {
                "refused"
            },
            self.config.rules.len()
        )
    }
}

/// `base64(user:password)`.
fn decode_basic(value: &str) -> Result<(String, String), AuthFailure> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| AuthFailure::MalformedCredentials)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthFailure::MalformedCredentials)?;
    let (user, password) = text.split_once(':').ok_or(AuthFailure::MalformedCredentials)?;
    if user.is_empty() {
        return Err(AuthFailure::MalformedCredentials);
    }
    Ok((user.to_owned(), password.to_owned()))
}
