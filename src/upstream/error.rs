//! Upstream failures, each knowing whether a retry may help.

use http::{HeaderValue, StatusCode};

/// Why an upstream request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the client for {host}: {message}")]
    Setup { host: String, message: String },
    #[error("cannot reach {host}: {message}")]
    Connect { host: String, message: String },
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
