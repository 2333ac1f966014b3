//! Why authentication or authorization failed, and the one place every
//! failure passes ([`record`]) so it can be logged and counted once.

use crate::telemetry::Metrics;

/// A failed authentication (or an authorization refusal), by reason.
/// `as_str` values are stable: they are log fields and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No credentials where they are required.
    MissingCredentials,
    /// An `Authorization` header that cannot be read.
    MalformedCredentials,
    /// A scheme other than Basic and Bearer.
    UnsupportedScheme,
    /// A Basic user name not in the htpasswd file (nor a token name).
    UnknownUser,
    /// A known user with the wrong password.
    BadPassword,
    /// A bearer token that is neither a valid issued token nor a static one
    /// (bad signature, wrong audience, unknown).
    BadToken,
    /// An issued token past its expiry.
    ExpiredToken,
    /// An issued token that does not cover the repository asked for.
    TokenOutOfScope,
    /// Authenticated, but no rule allows this identity the repository.
    NotAllowed,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::MalformedCredentials => "malformed_credentials",
            AuthFailure::UnsupportedScheme => "unsupported_scheme",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::BadToken => "bad_token",
            AuthFailure::ExpiredToken => "expired_token",
            AuthFailure::TokenOutOfScope => "token_out_of_scope",
            AuthFailure::NotAllowed => "not_allowed",
        }
    }

    /// Whether the client proved an identity (the refusal is `403`, not `401`).
    pub fn is_authorization(self) -> bool {
        self == AuthFailure::NotAllowed
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every authentication and authorization failure passes here: one log
/// line (never a credential: only the reason, the client address and the
/// claimed identity, if any) and one count in
/// `portcullis_auth_failures_total{reason}`. Missing credentials are
/// routine (the first request of every login), so they are logged at debug
/// level (and alerts leave that reason out).
pub fn record(metrics: &Metrics, failure: AuthFailure, client: &str, identity: Option<&str>) {
    metrics.auth_failure(failure.as_str());
    let identity = identity.unwrap_or("-");
    if failure == AuthFailure::MissingCredentials {
        tracing::debug!(target: "portcullis::auth", reason = failure.as_str(), client, identity, "authentication required");
    } else {
        tracing::info!(target: "portcullis::auth", reason = failure.as_str(), client, identity, "access refused");
    }
}
