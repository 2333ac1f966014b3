//! Upstream failures, each knowing whether a retry may help and which
//! [`FailureClass`] a client may be told about.
//!
//! The `Display` of [`Error`] is for operators (the log): it carries the
//! connection error text, addresses and redirect hosts. Clients only ever see
//! the [`FailureClass`], so the proxy cannot be used to probe the network
//! behind it (a refused port and a closed one look the same to them).

use std::fmt;

use http::{HeaderValue, StatusCode};

/// Why an upstream request failed. `host` is always the configured upstream
/// name; `message` is detail for the log, never for clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the client for {host}: {message}")]
    Setup { host: String, message: String },
    #[error("cannot reach {host}: {message}")]
    Connect { host: String, message: String },
    #[error("{host}: TLS failure: {message}")]
    Tls { host: String, message: String },
    /// A redirect or token realm the proxy will not follow: a private,
    /// link-local or metadata address, an unusable scheme, or a realm that
    /// may not receive this upstream's credentials.
    #[error("{host}: refused destination: {message}")]
    RefusedDestination { host: String, message: String },
    #[error("{host} did not answer within {seconds}s ({phase})")]
    Timeout {
        host: String,
        phase: &'static str,
        seconds: u64,
    },
    #[error("{host} answered {status}")]
    Status { host: String, status: StatusCode },
    #[error("{host} has no such {what}")]
    NotFound { host: String, what: &'static str },
    #[error("{host} is rate-limiting requests (429)")]
    TooManyRequests {
        host: String,
        retry_after: Option<HeaderValue>,
    },
    #[error("{host} refused the proxy's credentials: {message}")]
    Unauthorized { host: String, message: String },
    #[error("{host} denied access (403)")]
    Forbidden { host: String },
    #[error("{host}: {message}")]
    Protocol { host: String, message: String },
    #[error("{host}: body read failed: {message}")]
    Body { host: String, message: String },
    #[error("{host}: response larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    /// The upstream is served from local content only (`offline: true`, an
    /// import): a request that would need the network is refused before
    /// anything is sent.
    #[error("{host} is offline: {what} needs the network")]
    Offline { host: String, what: &'static str },
    /// A local source (the store, an OCI layout) could not be read.
    #[error("{host}: local source: {message}")]
    Local { host: String, message: String },
}

impl Error {
    /// Transient failures worth another attempt for idempotent requests.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::Body { .. } => true,
            Error::Status { status, .. } => is_retryable_status(*status),
            _ => false,
        }
    }

    /// A definitive "does not exist" (as opposed to "could not find out").
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// What a client may be told about this failure.
    pub fn class(&self) -> FailureClass {
        match self {
            Error::Setup { .. } => FailureClass::Misconfigured,
            Error::Connect { .. } => FailureClass::Unreachable,
            Error::Tls { .. } => FailureClass::Tls,
            Error::RefusedDestination { .. } => FailureClass::RefusedDestination,
            Error::Timeout { .. } => FailureClass::TimedOut,
            Error::Status { status, .. } => FailureClass::Answered(*status),
            Error::NotFound { what, .. } => FailureClass::NoSuch(what),
            Error::TooManyRequests { .. } => FailureClass::RateLimited,
            Error::Unauthorized { .. } => FailureClass::CredentialsRefused,
            Error::Forbidden { .. } => FailureClass::AccessDenied,
            Error::Protocol { .. } => FailureClass::BadResponse,
            Error::Body { .. } => FailureClass::BrokenBody,
            Error::TooLarge { .. } => FailureClass::TooLarge,
            Error::Offline { .. } => FailureClass::Offline,
            Error::Local { .. } => FailureClass::LocalSource,
        }
    }
}

/// The kind of an upstream failure, as clients see it: no address, port,
/// redirect target or operating-system error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Misconfigured,
    Unreachable,
    Tls,
    RefusedDestination,
    TimedOut,
    Answered(StatusCode),
    NoSuch(&'static str),
    RateLimited,
    CredentialsRefused,
    AccessDenied,
    BadResponse,
    BrokenBody,
    TooLarge,
    Offline,
    LocalSource,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Misconfigured => f.write_str("the proxy's client for this upstream is misconfigured"),
            FailureClass::Unreachable => f.write_str("upstream unreachable"),
            FailureClass::Tls => f.write_str("upstream TLS failure"),
            FailureClass::RefusedDestination => f.write_str("upstream sent the proxy to a refused destination"),
            FailureClass::TimedOut => f.write_str("upstream timed out"),
            FailureClass::Answered(status) => write!(f, "upstream answered {status}"),
            FailureClass::NoSuch(what) => write!(f, "upstream has no such {what}"),
            FailureClass::RateLimited => f.write_str("upstream is rate-limiting requests (429)"),
            FailureClass::CredentialsRefused => f.write_str("upstream refused the credentials"),
            FailureClass::AccessDenied => f.write_str("upstream denied access (403)"),
            FailureClass::BadResponse => f.write_str("upstream sent an invalid response"),
            FailureClass::BrokenBody => f.write_str("upstream connection broke during the body"),
            FailureClass::TooLarge => f.write_str("upstream response too large"),
            FailureClass::Offline => f.write_str("upstream is offline (served from local content only)"),
            FailureClass::LocalSource => f.write_str("local content could not be read"),
        }
    }
}

pub(super) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}
