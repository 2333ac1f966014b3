//! Registry operations: the pull API as seen from the proxy's side, with
//! authentication, bounded retries with backoff, and typed results.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::is_retryable_status;
use super::local;
use super::{Error, Registry, client};
use crate::oci::{Digest, Reference, RepoName};
use crate::telemetry::metrics::UpstreamOutcome;
use crate::verify::UnverifiedManifest;

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Largest tag list or referrers page accepted from an upstream.
const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

/// What a manifest HEAD said.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub content_type: Option<String>,
    pub length: Option<u64>,
}

/// A blob body arriving from upstream (or read from a local source).
#[derive(Debug)]
pub struct BlobResponse {
    host: String,
    /// Upstream `Content-Length`, if given.
    pub length: Option<u64>,
    body: BlobSource,
    idle_timeout: Duration,
    /// Bytes received from this upstream (`portcullis_upstream_fetched_bytes_total`).
    fetched: prometheus_client::metrics::counter::Counter,
}

impl BlobResponse {
    /// A blob body from another replica of this proxy (`cluster.peers`):
    /// the same idle timeout and errors as an upstream's, counted in
    /// `fetched` (the peer bytes counter, not the upstream one).
    pub fn from_peer(
        peer: String,
        length: Option<u64>,
        body: Incoming,
        idle_timeout: Duration,
        fetched: prometheus_client::metrics::counter::Counter,
    ) -> BlobResponse {
        BlobResponse {
            host: peer,
            length,
            body: BlobSource::Network(body),
            idle_timeout,
            fetched,
        }
    }

    /// The next chunk, `None` at the end. Fails if no byte arrives within the
    /// idle timeout or the connection breaks.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let body = match &mut self.body {
            BlobSource::Network(body) => body,
            BlobSource::Local { blob, pos, len } => return next_local_chunk(&self.host, blob, pos, *len).await,
        };
        loop {
            let frame = tokio::time::timeout(self.idle_timeout, body.frame())
                .await
                .map_err(|_| Error::Timeout {
                    host: self.host.clone(),
                    phase: "blob body",
                    seconds: self.idle_timeout.as_secs(),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    let e = Error::Body {
                        host: self.host.clone(),
                        message: client::error_chain(&e),
                    };
                    log_failure(&e, "blob body");
                    return Err(e);
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.fetched.inc_by(data.len() as u64);
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Where a blob's bytes come from.
#[derive(Debug)]
enum BlobSource {
    Network(Incoming),
    Local {
        blob: super::local::LocalBlob,
        /// The next byte to read.
        pos: u64,
        len: u64,
    },
}

/// Chunks read from a local blob file at a time.
const LOCAL_CHUNK: usize = 256 * 1024;

async fn next_local_chunk(
    host: &str,
    blob: &super::local::LocalBlob,
    pos: &mut u64,
    len: u64,
) -> Result<Option<Bytes>, Error> {
    let want = len.saturating_sub(*pos).min(LOCAL_CHUNK as u64);
    if want == 0 {
        return Ok(None);
    }
    let (blob, at) = (blob.clone(), *pos);
    let failed = |message: String| Error::Local {
        host: host.to_owned(),
        message: format!("reading a blob: {message}"),
    };
    // `want` ≤ LOCAL_CHUNK, so it fits a usize.
    let buf = BytesMut::zeroed(usize::try_from(want).unwrap_or(LOCAL_CHUNK));
    let chunk = tokio::task::spawn_blocking(move || blob.read_at(at, buf))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    *pos += chunk.len() as u64;
    Ok(Some(chunk))
}

/// One page of a tag list.
#[derive(Debug, Clone)]
pub struct TagsPage {
    pub body: Bytes,
    /// The upstream's `Link` to the next page, if any.
    pub link: Option<String>,
}

impl Registry {
    pub(super) fn uri(&self, path_and_query: &str) -> Result<Uri, Error> {
        format!("{}{}", self.upstream.url, path_and_query)
            .parse()
            .map_err(|_| Error::Protocol {
                host: self.host().to_string(),
                message: format!("cannot build a URL for `{path_and_query}`"),
            })
    }

    /// One logical idempotent request: authentication and bounded retries
    /// with exponential backoff on transient failures.
    pub(super) async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        scope: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let mut attempt = 1;
        loop {
            // Boxed: the authentication and token flow make this future
            // several KiB, and every caller up to the server handler would
            // otherwise carry it inline (debug builds ran out of stack).
            let result = Box::pin(self.request_once(&method, path_and_query, scope, &headers, &Bytes::new())).await;
            let retry = match &result {
                Ok(resp) => is_retryable_status(resp.status()),
                Err(e) => e.is_retryable(),
            };
            if !retry || attempt >= self.policy.retry_attempts {
                if let Err(e) = &result {
                    log_failure(e, path_and_query);
                }
                return result;
            }
            let backoff = self.policy.retry_backoff * 2u32.saturating_pow(attempt - 1);
            let jitter = backoff.mul_f64(fastrand::f64() * 0.25);
            tracing::debug!(
                upstream = %self.host(), path = path_and_query, attempt,
                outcome = %match &result { Ok(r) => r.status().to_string(), Err(e) => e.to_string() },
                "retrying upstream request"
            );
            tokio::time::sleep(backoff + jitter).await;
            attempt += 1;
        }
    }

    /// One attempt: authenticate (preemptively with a known challenge, else
    /// by answering the 401) and send `body` (re-sent after a challenge).
    pub(super) async fn request_once(
        &self,
        method: &Method,
        path_and_query: &str,
        scope: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let host = self.host().to_string();
        let Some(http) = &self.http else {
            return Err(Error::Offline {
                host,
                what: "this request",
            });
        };
        let uri = self.uri(path_and_query)?;
        let auth = self.auth.preemptive(self, scope).await?;
        let resp = client::send(
            http,
            &host,
            &self.policy,
            method,
            uri.clone(),
            headers,
            auth.as_ref(),
            body,
        )
        .await;
        let resp = self.counted(resp)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(challenge) = resp.headers().get(WWW_AUTHENTICATE).cloned() else {
            return Err(Error::Unauthorized {
                host,
                message: "401 without a WWW-Authenticate challenge".into(),
            });
        };
        let auth = self.auth.answer(self, &challenge, scope).await?;
        let resp = client::send(http, &host, &self.policy, method, uri, headers, Some(&auth), body).await;
        let resp = self.counted(resp)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized {
                host,
                message: "the upstream refused the token it issued".into(),
            });
        }
        Ok(resp)
    }

    /// Count one upstream exchange by its outcome.
    fn counted(&self, resp: Result<Response<Incoming>, Error>) -> Result<Response<Incoming>, Error> {
        let outcome = match &resp {
            Ok(r) => UpstreamOutcome::of(r.status()),
            Err(_) => UpstreamOutcome::Failed,
        };
        self.metrics.upstream_request(self.host().as_str(), outcome);
        resp
    }

    /// Map a non-success status to its error.
    pub(super) fn expect_success(
        &self,
        resp: Response<Incoming>,
        what: &'static str,
    ) -> Result<Response<Incoming>, Error> {
        let host = self.host().to_string();
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(Error::NotFound { host, what }),
            StatusCode::TOO_MANY_REQUESTS => Err(Error::TooManyRequests {
                host,
                retry_after: resp.headers().get(RETRY_AFTER).cloned(),
            }),
            StatusCode::UNAUTHORIZED => Err(Error::Unauthorized {
                host,
                message: "401".into(),
            }),
            StatusCode::FORBIDDEN => Err(Error::Forbidden { host }),
            status => Err(Error::Status { host, status }),
        }
    }

    pub(super) fn claimed_digest(&self, headers: &HeaderMap) -> Result<Option<Digest>, Error> {
        match headers.get(DOCKER_CONTENT_DIGEST) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Some)
                .ok_or_else(|| Error::Protocol {
                    host: self.host().to_string(),
                    message: "malformed Docker-Content-Digest header".into(),
                }),
        }
    }

    /// `HEAD /v2/<repo>/manifests/<reference>`: resolves a tag without
    /// counting against Docker Hub's pull limit.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &HeaderValue,
    ) -> Result<ManifestHead, Error> {
        if let Some(source) = &self.local {
            return self.local_head_manifest(source, repo, reference).await;
        }
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .request(Method::HEAD, &path, &pull_scope(repo), accept_headers(accept))
            .await?;
        let resp = self.expect_success(resp, "manifest")?;
        Ok(ManifestHead {
            digest: self.claimed_digest(resp.headers())?,
            content_type: header_string(resp.headers(), CONTENT_TYPE),
            length: header_u64(resp.headers(), CONTENT_LENGTH),
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>`, capped at `limit` bytes.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &HeaderValue,
        limit: usize,
    ) -> Result<UnverifiedManifest, Error> {
        if let Some(source) = &self.local {
            return self.local_manifest(source, repo, reference).await;
        }
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .request(Method::GET, &path, &pull_scope(repo), accept_headers(accept))
            .await?;
        let resp = self.expect_success(resp, "manifest")?;
        let claimed_digest = self.claimed_digest(resp.headers())?;
        let content_type = header_string(resp.headers(), CONTENT_TYPE);
        let bytes = read_body(
            self.host().as_str(),
            resp.into_body(),
            limit,
            self.policy.body_idle_timeout,
        )
        .await?;
        self.metrics.bytes_fetched(self.host().as_str(), bytes.len() as u64);
        Ok(UnverifiedManifest {
            bytes,
            content_type,
            claimed_digest,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, following redirects to CDNs.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobResponse, Error> {
        if let Some(source) = &self.local {
            let (blob, length) = self.local_blob(source, repo, digest).await?;
            return Ok(BlobResponse {
                host: self.host().to_string(),
                length: Some(length),
                body: BlobSource::Local {
                    blob,
                    pos: 0,
                    len: length,
                },
                idle_timeout: self.policy.body_idle_timeout,
                fetched: self.metrics.fetched_counter(self.host().as_str()),
            });
        }
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .request(Method::GET, &path, &pull_scope(repo), HeaderMap::new())
            .await?;
        let resp = self.expect_success(resp, "blob")?;
        if resp.status() != StatusCode::OK {
            return Err(Error::Protocol {
                host: self.host().to_string(),
                message: format!("blob GET answered {} instead of 200", resp.status()),
            });
        }
        Ok(BlobResponse {
            host: self.host().to_string(),
            length: header_u64(resp.headers(), CONTENT_LENGTH),
            body: BlobSource::Network(resp.into_body()),
            idle_timeout: self.policy.body_idle_timeout,
            fetched: self.metrics.fetched_counter(self.host().as_str()),
        })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: the blob's length, if the upstream says.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, Error> {
        if let Some(source) = &self.local {
            return self.local_blob(source, repo, digest).await.map(|(_, len)| Some(len));
        }
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .request(Method::HEAD, &path, &pull_scope(repo), HeaderMap::new())
            .await?;
        let resp = self.expect_success(resp, "blob")?;
        Ok(header_u64(resp.headers(), CONTENT_LENGTH))
    }

    /// `GET /v2/<repo>/tags/list[?n=&last=]`.
    pub async fn tags(&self, repo: &RepoName, n: Option<usize>, last: Option<&str>) -> Result<TagsPage, Error> {
        if let Some(source) = &self.local {
            return self.local_tags(source, repo, n, last).await;
        }
        let path = paged(&format!("/v2/{repo}/tags/list"), n, last);
        let resp = self
            .request(Method::GET, &path, &pull_scope(repo), json_headers())
            .await?;
        let resp = self.expect_success(resp, "repository")?;
        self.read_page(resp).await
    }

    /// `GET /v2/_catalog[?n=&last=]` (registry scope `catalog:*`): one page
    /// of repository names, for the watch's repository globs.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<TagsPage, Error> {
        let path = paged("/v2/_catalog", n, last);
        let resp = self
            .request(Method::GET, &path, "registry:catalog:*", json_headers())
            .await?;
        let resp = self.expect_success(resp, "catalog")?;
        self.read_page(resp).await
    }

    /// `GET /v2/<repo>/referrers/<digest>`. `Ok(None)` when the upstream
    /// does not implement the API (404), so the caller uses the tag schema.
    pub async fn referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Option<TagsPage>, Error> {
        if let Some(source) = &self.local {
            let (r, d) = (repo.clone(), digest.clone());
            let listing = local::call(self.host().as_str(), source, move |s| s.referrers(&r, &d)).await?;
            return Ok(listing.map(|body| TagsPage { body, link: None }));
        }
        let path = format!("/v2/{repo}/referrers/{digest}");
        let resp = self
            .request(Method::GET, &path, &pull_scope(repo), json_headers())
            .await?;
        match self.expect_success(resp, "referrers API") {
            Ok(resp) => self.read_page(resp).await.map(Some),
            Err(Error::NotFound { .. }) => Ok(None),
            // Some registries answer 400/405 for unknown API paths.
            Err(Error::Status { status, .. })
                if status == StatusCode::BAD_REQUEST || status == StatusCode::METHOD_NOT_ALLOWED =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Fetch a further page named by a `Link` path (`/v2/...`).
    pub async fn get_link(&self, repo: &RepoName, link_path: &str) -> Result<TagsPage, Error> {
        if !link_path.starts_with("/v2/") {
            return Err(Error::Protocol {
                host: self.host().to_string(),
                message: format!("unusable Link `{link_path}`"),
            });
        }
        let resp = self
            .request(Method::GET, link_path, &pull_scope(repo), json_headers())
            .await?;
        let resp = self.expect_success(resp, "page")?;
        self.read_page(resp).await
    }

    /// A JSON listing page (tags, referrers) with its `Link` header.
    async fn read_page(&self, resp: Response<Incoming>) -> Result<TagsPage, Error> {
        let link = header_string(resp.headers(), LINK);
        let body = read_body(
            self.host().as_str(),
            resp.into_body(),
            MAX_LIST_BYTES,
            self.policy.body_idle_timeout,
        )
        .await?;
        self.metrics.bytes_fetched(self.host().as_str(), body.len() as u64);
        Ok(TagsPage { body, link })
    }
}

/// The one log line with an upstream failure's detail (addresses, OS error
/// text, redirect hosts): clients only see its class. "Not found" is an
/// answer, not a failure.
pub(super) fn log_failure(e: &Error, during: &str) {
    if !e.is_not_found() {
        tracing::warn!(during, class = %e.class(), error = %e, "upstream request failed");
    }
}

/// `path` with the pagination parameters of tag lists and the catalog.
fn paged(path: &str, n: Option<usize>, last: Option<&str>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        q.append_pair("n", &n.to_string());
    }
    if let Some(last) = last {
        q.append_pair("last", last);
    }
    let query = q.finish();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

pub(super) fn pull_scope(repo: &RepoName) -> String {
    format!("repository:{repo}:pull")
}

fn accept_headers(accept: &HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, accept.clone());
    h
}

fn json_headers() -> HeaderMap {
    accept_headers(&HeaderValue::from_static("application/json"))
}

pub(super) fn header_string(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

pub(super) fn header_u64(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Read a whole body of at most `limit` bytes, with an idle timeout between
/// frames. Longer bodies fail at the first byte past the limit.
pub(crate) async fn read_body(host: &str, mut body: Incoming, limit: usize, idle: Duration) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| Error::Timeout {
                host: host.to_owned(),
                phase: "response body",
                seconds: idle.as_secs(),
            })?;
        match frame {
            None => return Ok(buf.freeze()),
            Some(Err(e)) => {
                let e = Error::Body {
                    host: host.to_owned(),
                    message: client::error_chain(&e),
                };
                log_failure(&e, "response body");
                return Err(e);
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(Error::TooLarge {
                            host: host.to_owned(),
                            limit,
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}
