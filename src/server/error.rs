//! Errors rendered once, as OCI error JSON: `{"errors":[{code,message,detail}]}`.
//! Every failure below the HTTP edge arrives here typed and is mapped by one
//! exhaustive `match`, so the compiler finds unmapped variants.

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};

use crate::auth::AuthFailure;
use crate::oci::{DigestError, NameError, ReferenceError, RegistryHost};
use crate::proxy;
use crate::upstream;

/// An error response in the making.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<HeaderValue>,
    /// `WWW-Authenticate` of a `401` (boxed: rare, and `ApiError` travels
    /// in every `Result` of the request path).
    challenge: Option<Box<HeaderValue>>,
    warn: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            challenge: None,
            warn: false,
        }
    }

    /// A refused authentication or authorization. `401 UNAUTHORIZED` with
    /// the challenge, so clients (re)authenticate; `403 DENIED` when an
    /// authenticated identity is not allowed the repository (an anonymous
    /// client is asked to log in instead). The message names the reason
    /// class, never a credential.
    pub fn from_auth(failure: AuthFailure, identity: Option<&str>, challenge: HeaderValue) -> ApiError {
        use AuthFailure as F;
        let message = match failure {
            F::NotAllowed => match identity {
                Some(id) if id != "anonymous" => {
                    return ApiError::new(
                        StatusCode::FORBIDDEN,
                        "DENIED",
                        format!("`{id}` is not allowed to pull this repository"),
                    );
                }
                _ => "authentication required: anonymous clients may not pull this repository",
            },
            F::MissingCredentials => "authentication required",
            F::MalformedCredentials | F::UnsupportedScheme => "unreadable credentials",
            F::UnknownUser | F::BadPassword => "invalid user name or password",
            F::BadToken => "invalid token",
            F::ExpiredToken => "token expired",
            F::TokenOutOfScope => "the token does not cover this repository",
        };
        let mut a = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
        a.challenge = Some(Box::new(challenge));
        a
    }

    /// A peer request without the cluster key (`401`, no challenge: no
    /// client is meant to log in here).
    pub fn peer_unauthorized() -> ApiError {
        let mut a = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "replica-to-replica endpoint: the cluster key is required",
        );
        a.warn = true;
        a
    }

    /// A `/token` request that cannot be served (`400`).
    pub fn bad_token_request(message: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", message)
    }

    pub fn challenge(&self) -> Option<&HeaderValue> {
        self.challenge.as_deref()
    }

    pub fn challenge_header(&self) -> Option<(http::header::HeaderName, HeaderValue)> {
        self.challenge.as_deref().map(|v| (WWW_AUTHENTICATE, v.clone()))
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OCI error code (`MANIFEST_UNKNOWN`, `DENIED`, …).
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn retry_after(&self) -> Option<&HeaderValue> {
        self.retry_after.as_ref()
    }

    /// Whether this failure deserves a warning in the log (upstream faults,
    /// integrity failures) rather than being a normal client error.
    pub fn is_warning(&self) -> bool {
        self.warn || self.status.is_server_error()
    }

    pub fn not_found_route(path: &str) -> ApiError {
        let shown: String = path.chars().take(200).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no such endpoint: {shown}"),
        )
    }

    pub fn unsupported(message: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", message)
    }

    pub fn push_refused() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "Portcullis is a pull-only proxy: push and delete are not supported",
        )
    }

    pub fn method_not_allowed(method: &Method) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("method {method} is not supported here"),
        )
    }

    pub fn bad_reference(e: ReferenceError) -> ApiError {
        match e {
            ReferenceError::Digest(d) => ApiError::bad_digest(d),
            ReferenceError::Tag(t) => ApiError::bad_name(t),
        }
    }

    pub fn bad_digest(e: DigestError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    }

    pub fn bad_name(e: NameError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
    }

    pub fn not_allow_listed(host: &RegistryHost) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!("registry `{host}` is not an allow-listed upstream of this proxy"),
        )
    }

    pub fn name_unknown(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message)
    }

    pub fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }

    /// `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    pub fn content_type() -> (http::header::HeaderName, HeaderValue) {
        (CONTENT_TYPE, HeaderValue::from_static("application/json"))
    }

    pub fn retry_after_header(&self) -> Option<(http::header::HeaderName, HeaderValue)> {
        self.retry_after.clone().map(|v| (RETRY_AFTER, v))
    }
}

/// A refused `tags/list` query is `400`. The distribution spec's error
/// table has no code for a bad query parameter (Distribution's own
/// `PAGINATION_NUMBER_INVALID` is not in it): a bad `n` is `UNSUPPORTED`,
/// a `last` that is not a tag is `NAME_INVALID`, as a bad tag is elsewhere.
impl From<super::tags::TagsQueryError> for ApiError {
    fn from(e: super::tags::TagsQueryError) -> ApiError {
        use super::tags::TagsQueryError as Q;
        let code = match e {
            Q::PageSize(_) => "UNSUPPORTED",
            Q::Last(_) => "NAME_INVALID",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<proxy::Error> for ApiError {
    fn from(e: proxy::Error) -> ApiError {
        let message = e.to_string();
        match e {
            proxy::Error::Upstream(u) => from_upstream(u),
            proxy::Error::Integrity { .. } => {
                let mut a = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "UNKNOWN",
                    format!("refused: {message}; nothing was served or stored"),
                );
                a.warn = true;
                a
            }
            proxy::Error::Denied { .. } => ApiError::new(StatusCode::FORBIDDEN, "DENIED", message),
            proxy::Error::NotAcceptable { .. } => ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message),
            proxy::Error::RangeNotSatisfiable { .. } => {
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "UNSUPPORTED", message)
            }
            proxy::Error::BadListing { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", message),
            proxy::Error::Overloaded { .. } => {
                let mut a = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                a.retry_after = Some(HeaderValue::from_static("5"));
                a.warn = true;
                a
            }
            // 429, not 503: containerd retries 408/429 on the same host but
            // moves on to the next one (possibly the origin, bypassing the
            // proxy's verification) after a 5xx; `TOOMANYREQUESTS` is the
            // spec's code for 429 and clients honour `Retry-After`.
            proxy::Error::Busy(busy) => {
                let mut a = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                let seconds = busy.waited.as_secs().max(1);
                a.retry_after = Some(HeaderValue::from(seconds));
                a.warn = true;
                a
            }
            proxy::Error::NotLeader { .. } => {
                let mut a = ApiError::new(StatusCode::MISDIRECTED_REQUEST, "UNSUPPORTED", message);
                a.warn = true;
                a
            }
            proxy::Error::Store(_) | proxy::Error::Uncacheable(_) | proxy::Error::Internal(_) => {
                ApiError::internal(message)
            }
        }
    }
}

/// An upstream failure as the client sees it: the status and OCI code of its
/// kind and the message of its [`upstream::FailureClass`], never the
/// connection error, address or redirect target (no port-scan oracle). The
/// detail was logged where the failure happened, in `upstream`.
fn from_upstream(e: upstream::Error) -> ApiError {
    use upstream::Error as U;
    let message = e.class().to_string();
    match e {
        U::NotFound { what, .. } => {
            let code = match what {
                "manifest" => "MANIFEST_UNKNOWN",
                "blob" => "BLOB_UNKNOWN",
                _ => "NAME_UNKNOWN",
            };
            ApiError::new(StatusCode::NOT_FOUND, code, message)
        }
        U::TooManyRequests { retry_after, .. } => {
            let mut a = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
            a.retry_after = retry_after;
            a.warn = true;
            a
        }
        U::Unauthorized { .. } | U::Forbidden { .. } => {
            let mut a = ApiError::new(StatusCode::FORBIDDEN, "DENIED", message);
            a.warn = true;
            a
        }
        U::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", message),
        U::Connect { .. }
        | U::Tls { .. }
        | U::RefusedDestination { .. }
        | U::Status { .. }
        | U::Protocol { .. }
        | U::Body { .. }
        | U::TooLarge { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message),
        U::Offline { .. } => ApiError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message),
        U::Setup { .. } | U::Local { .. } => ApiError::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every upstream failure reaches clients as its class only: never the
    /// host, address, port or the connection error text.
    #[test]
    fn upstream_failures_render_without_detail() {
        let host = "10.0.0.5:22".to_owned();
        let message = "tcp connect error: Connection refused (os error 111)".to_owned();
        let failures = [
            upstream::Error::Setup {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::Connect {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::Tls {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::RefusedDestination {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::Timeout {
                host: host.clone(),
                phase: "connect",
                seconds: 10,
            },
            upstream::Error::Status {
                host: host.clone(),
                status: StatusCode::BAD_GATEWAY,
            },
            upstream::Error::NotFound {
                host: host.clone(),
                what: "manifest",
            },
            upstream::Error::TooManyRequests {
                host: host.clone(),
                retry_after: None,
            },
            upstream::Error::Unauthorized {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::Forbidden { host: host.clone() },
            upstream::Error::Protocol {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::Body {
                host: host.clone(),
                message: message.clone(),
            },
            upstream::Error::TooLarge {
                host: host.clone(),
                limit: 4096,
            },
        ];
        for failure in failures {
            let class = failure.class().to_string();
            let api = ApiError::from(proxy::Error::from(failure));
            assert_eq!(api.message(), class);
            let body = String::from_utf8(api.body()).expect("utf-8");
            for leak in ["10.0.0.5", ":22", "os error", "refused (", "tcp"] {
                assert!(!body.contains(leak), "`{leak}` in {body}");
            }
        }
    }

    #[test]
    fn statuses_and_codes_are_kept() {
        let render = |e: upstream::Error| {
            let a = ApiError::from(proxy::Error::from(e));
            (a.status(), a.code(), a.message().to_owned())
        };
        let host = String::from("h");
        assert_eq!(
            render(upstream::Error::Connect {
                host: host.clone(),
                message: String::new()
            }),
            (
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "upstream unreachable".to_owned()
            )
        );
        assert_eq!(
            render(upstream::Error::Timeout {
                host: host.clone(),
                phase: "response headers",
                seconds: 20
            }),
            (
                StatusCode::GATEWAY_TIMEOUT,
                "UNAVAILABLE",
                "upstream timed out".to_owned()
            )
        );
        assert_eq!(
            render(upstream::Error::Unauthorized {
                host: host.clone(),
                message: String::new()
            }),
            (
                StatusCode::FORBIDDEN,
                "DENIED",
                "upstream refused the credentials".to_owned()
            )
        );
        assert_eq!(
            render(upstream::Error::Status {
                host: host.clone(),
                status: StatusCode::SERVICE_UNAVAILABLE
            }),
            (
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "upstream answered 503 Service Unavailable".to_owned()
            )
        );
        assert_eq!(
            render(upstream::Error::NotFound { host, what: "blob" }),
            (
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "upstream has no such blob".to_owned()
            )
        );
    }
}
