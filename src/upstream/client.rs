//! The HTTP client for one upstream: rustls with webpki and native roots
//! (plus an optional per-upstream CA), header timeouts, and redirects that
//! the proxy follows itself, dropping `Authorization` on cross-host hops.
//! Every connection goes through the upstream's
//! [`GuardedConnector`](super::destination::GuardedConnector), so redirects
//! and token realms cannot reach private or metadata addresses.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::Error;
use super::destination::{DestinationGuard, DestinationRefused, GuardedConnector};
use crate::config::{Upstream, UpstreamPolicy};

/// Request bodies are whole (`Full`): pulls send none (an empty `Full` is
/// sent without a `Content-Length`), pushes send a manifest, a monolithic
/// blob or one chunk of an upload.
pub(super) type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// HTTP/1 read buffer for upstream responses.
const READ_BUFFER: usize = 256 * 1024;

/// Registries redirect blob GETs to CDNs once; a handful of hops is plenty.
const MAX_REDIRECTS: usize = 5;

/// webpki roots plus the machine's native roots, loaded once per process.
fn base_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(native_roots = added, "loaded TLS roots");
        roots
    })
}

/// The TLS client configuration of every outgoing connection (upstreams,
/// peer replicas): webpki and native roots plus the PEM certificates of
/// `ca_file`, aws-lc-rs, no client certificate.
pub fn tls_client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = base_roots().clone();
    if let Some(ca) = ca_file {
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub(super) fn build(upstream: &Upstream, policy: &UpstreamPolicy) -> Result<HttpClient, Error> {
    let setup = |message: String| Error::Setup {
        host: upstream.host.to_string(),
        message,
    };
    let tls = tls_client_config(upstream.ca_file.as_deref()).map_err(setup)?;
    let http = GuardedConnector::new(DestinationGuard::for_upstream(upstream), |http| {
        http.enforce_http(false);
        http.set_connect_timeout(Some(policy.connect_timeout));
        http.set_nodelay(true);
    });
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // Large blob bodies arrive in frames as big as the read buffer:
        // bigger frames mean fewer hand-offs per byte on the hashing path.
        .http1_read_buf_exact_size(READ_BUFFER)
        .build(https))
}

/// Send one request and follow redirects. `authorization` goes only to the
/// original authority; a redirect to another host (a blob CDN with a signed
/// URL) never sees it. Redirects to schemes other than http(s) and HTTPS →
/// HTTP downgrades are refused; the connector refuses private addresses.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send(
    http: &HttpClient,
    host: &str,
    policy: &UpstreamPolicy,
    method: &Method,
    url: Uri,
    headers: &HeaderMap,
    authorization: Option<&HeaderValue>,
    body: &Bytes,
) -> Result<Response<Incoming>, Error> {
    let origin = url.authority().cloned();
    let mut url = url;
    for _hop in 0..=MAX_REDIRECTS {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url.clone())
            .body(Full::new(body.clone()))
            .map_err(|e| protocol(host, format!("bad request: {e}")))?;
        *req.headers_mut() = headers.clone();
        if let Some(auth) = authorization
            && url.authority() == origin.as_ref()
        {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let resp = tokio::time::timeout(policy.response_header_timeout, http.request(req))
            .await
            .map_err(|_| Error::Timeout {
                host: host.to_owned(),
                phase: "response headers",
                seconds: policy.response_header_timeout.as_secs(),
            })?
            .map_err(|e| classify(host, policy, &e))?;
        if !resp.status().is_redirection() || resp.status() == http::StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| protocol(host, format!("{} without a Location", resp.status())))?;
        if let Some(scheme) = foreign_scheme(location) {
            return Err(refused(host, format!("redirect to a `{scheme}:` URL")));
        }
        let next = resolve_location(&url, location)
            .ok_or_else(|| protocol(host, format!("unusable redirect Location `{location}`")))?;
        if url.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
            return Err(refused(host, "a redirect from HTTPS to plain HTTP".into()));
        }
        tracing::debug!(upstream = host, to = %redact_query(&next), "following upstream redirect");
        url = next;
    }
    Err(protocol(host, format!("more than {MAX_REDIRECTS} redirects")))
}

fn protocol(host: &str, message: String) -> Error {
    Error::Protocol {
        host: host.to_owned(),
        message,
    }
}

fn refused(host: &str, message: String) -> Error {
    Error::RefusedDestination {
        host: host.to_owned(),
        message,
    }
}

/// The scheme of an absolute `Location` when it is neither http nor https
/// (`ftp:`, `file:`, `gopher:`, ...).
fn foreign_scheme(location: &str) -> Option<&str> {
    let (scheme, _) = location.split_once(':')?;
    let is_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    (is_scheme && !web).then_some(scheme)
}

/// A failed request as its [`Error`] class: a refused destination, a TLS
/// failure, a connect timeout, or unreachable. The whole chain stays in the
/// message for the log.
fn classify(host: &str, policy: &UpstreamPolicy, e: &hyper_util::client::legacy::Error) -> Error {
    let host = host.to_owned();
    let message = error_chain(e);
    if find_cause::<DestinationRefused>(e).is_some() {
        Error::RefusedDestination { host, message }
    } else if find_cause::<rustls::Error>(e).is_some() {
        Error::Tls { host, message }
    } else if find_cause::<std::io::Error>(e).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
        Error::Timeout {
            host,
            phase: "connect",
            seconds: policy.connect_timeout.as_secs(),
        }
    } else {
        Error::Connect { host, message }
    }
}

/// The first error of type `T` in `e`'s source chain, looking inside
/// `io::Error`s too (their `source()` skips the error they wrap; hyper-rustls
/// reports TLS failures as an `io::Error` wrapping a `rustls::Error`).
fn find_cause<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_cause::<T>(inner))
        {
            return Some(inner);
        }
        current = err.source();
    }
    None
}

/// Resolve a `Location` value against the URL that returned it.
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    let loc: Uri = location.parse().ok()?;
    if loc.scheme().is_some() && loc.authority().is_some() {
        return Some(loc);
    }
    if !location.starts_with('/') {
        return None; // relative-path references are not used by registries
    }
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(loc.path_and_query()?.clone())
        .build()
        .ok()
}

/// Signed CDN URLs carry credentials in the query: never log it.
fn redact_query(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    )
}

/// The error and its sources, for messages (hyper's top-level text is terse).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let base: Uri = "https://reg.example/v2/a/blobs/x".parse().expect("uri");
        assert_eq!(
            resolve_location(&base, "/other?x=1").map(|u| u.to_string()),
            Some("https://reg.example/other?x=1".into())
        );
        assert_eq!(
            resolve_location(&base, "https://cdn.example/blob?sig=1").map(|u| u.to_string()),
            Some("https://cdn.example/blob?sig=1".into())
        );
        assert_eq!(resolve_location(&base, "relative"), None);
        assert_eq!(foreign_scheme("ftp://10.0.0.5/x"), Some("ftp"));
        assert_eq!(foreign_scheme("file:///etc/passwd"), Some("file"));
        assert_eq!(foreign_scheme("HTTPS://cdn.example/x"), None);
        assert_eq!(foreign_scheme("/v2/a/blobs/x?a=b:c"), None);
        let cdn: Uri = "https://cdn.example/b?sig=secret".parse().expect("uri");
        assert_eq!(redact_query(&cdn), "https://cdn.example/b");
    }
}
