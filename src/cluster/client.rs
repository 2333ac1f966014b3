//! The HTTP client one replica uses to reach another: a blob streamed from
//! the replica leading its download, a tag resolved by the replica leading
//! it. Peers are the operator's own machines on private addresses, so this
//! client does not go through the upstream connector's address guard; it
//! reaches only the configured peer list, with the cluster key.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::config::{PeerAddr, Secret};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};
use crate::upstream::{BlobResponse, ManifestHead};

type PeerHttp = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where the internal endpoints live on the registry listener (outside
/// `/v2/`, which is the public API).
pub const BLOB_PATH: &str = "/_portcullis/cluster/v1/blob";
pub const TAG_PATH: &str = "/_portcullis/cluster/v1/tag";

/// How long a leader may take to answer (it may wait for a download slot
/// and the upstream's response headers first).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A tag answer is a few hundred bytes.
const MAX_TAG_ANSWER: usize = 16 * 1024;
/// How long an unreachable peer is left alone.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Why a peer could not answer. The caller then does the work itself (a
/// lease on the bucket, its own HEAD): a peer never makes a pull fail that
/// would have worked without it, once nothing was streamed from it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("replica {peer}: {message}")]
    Unreachable { peer: PeerAddr, message: String },
    #[error("replica {peer} does not lead this request (its peer list differs from ours)")]
    NotLeader { peer: PeerAddr },
    #[error("replica {peer} answered {status}")]
    Status { peer: PeerAddr, status: StatusCode },
    #[error("replica {peer} sent an unreadable answer: {message}")]
    Protocol { peer: PeerAddr, message: String },
}

impl PeerError {
    fn unreachable(peer: &PeerAddr, message: String) -> PeerError {
        PeerError::Unreachable {
            peer: peer.clone(),
            message,
        }
    }
}

/// What the tag endpoint answers: the upstream's HEAD as the leader saw it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagAnswer {
    pub digest: Option<Digest>,
    pub content_type: Option<String>,
    pub length: Option<u64>,
}

impl From<TagAnswer> for ManifestHead {
    fn from(a: TagAnswer) -> ManifestHead {
        ManifestHead {
            digest: a.digest,
            content_type: a.content_type,
            length: a.length,
        }
    }
}

impl From<&ManifestHead> for TagAnswer {
    fn from(h: &ManifestHead) -> TagAnswer {
        TagAnswer {
            digest: h.digest.clone(),
            content_type: h.content_type.clone(),
            length: h.length,
        }
    }
}

/// The client, with the key it presents.
pub struct PeerClient {
    http: PeerHttp,
    /// Peers that could not be reached, until when they are not asked
    /// again: a dead replica's address would otherwise cost every request
    /// a connect timeout before its fallback.
    down: std::sync::Mutex<std::collections::HashMap<PeerAddr, std::time::Instant>>,
    scheme: &'static str,
    key: Secret,
    body_idle_timeout: Duration,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// `tls`: the peers' listeners speak TLS (the same `tls:` as ours),
    /// verified against the system roots plus `ca_file`.
    pub fn new(
        key: Secret,
        tls: bool,
        ca_file: Option<&std::path::Path>,
        body_idle_timeout: Duration,
    ) -> Result<PeerClient, String> {
        let tls_config = crate::upstream::tls_client_config(ca_file)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(PeerClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https),
            down: std::sync::Mutex::new(std::collections::HashMap::new()),
            scheme: if tls { "https" } else { "http" },
            key,
            body_idle_timeout,
        })
    }

    /// Stream `digest` of `repo` on `upstream` from `peer`, which fetches it
    /// (once for every replica) or serves it from the store. The bytes are
    /// hashed here again like an upstream's: a peer is trusted to
    /// coordinate, never for content.
    pub async fn blob(
        &self,
        peer: &PeerAddr,
        upstream: &RegistryHost,
        repo: &RepoName,
        digest: &Digest,
        fetched: prometheus_client::metrics::counter::Counter,
    ) -> Result<BlobResponse, PeerError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("upstream", upstream.as_str())
            .append_pair("repo", repo.as_str())
            .append_pair("digest", &digest.to_string())
            .finish();
        let resp = self.get(peer, BLOB_PATH, &query, None).await?;
        let length = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(BlobResponse::from_peer(
            peer.to_string(),
            length,
            resp.into_body(),
            self.body_idle_timeout,
            fetched,
        ))
    }

    /// Resolve `tag` through `peer`: the leader's (coalesced) upstream HEAD.
    pub async fn tag(
        &self,
        peer: &PeerAddr,
        upstream: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        accept: &HeaderValue,
    ) -> Result<ManifestHead, PeerError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("upstream", upstream.as_str())
            .append_pair("repo", repo.as_str())
            .append_pair("tag", tag.as_str())
            .finish();
        let resp = self.get(peer, TAG_PATH, &query, Some(accept)).await?;
        let protocol = |message: String| PeerError::Protocol {
            peer: peer.clone(),
            message,
        };
        let body = Limited::new(resp.into_body(), MAX_TAG_ANSWER)
            .collect()
            .await
            .map_err(|e| protocol(e.to_string()))?
            .to_bytes();
        let answer: TagAnswer = serde_json::from_slice(&body).map_err(|e| protocol(e.to_string()))?;
        Ok(answer.into())
    }

    async fn get(
        &self,
        peer: &PeerAddr,
        path: &str,
        query: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<http::Response<hyper::body::Incoming>, PeerError> {
        if let Some(until) = self.down_until(peer) {
            return Err(PeerError::unreachable(
                peer,
                format!(
                    "unreachable a moment ago; asked again in {:?}",
                    until.saturating_duration_since(std::time::Instant::now())
                ),
            ));
        }
        let sent = self.send(peer, path, query, accept).await;
        if let Err(PeerError::Unreachable { .. }) = &sent {
            self.lock_down()
                .insert(peer.clone(), std::time::Instant::now() + DOWN_FOR);
        }
        sent
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PeerAddr, std::time::Instant>> {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When `peer` may be asked again, if it was unreachable recently.
    fn down_until(&self, peer: &PeerAddr) -> Option<std::time::Instant> {
        let mut down = self.lock_down();
        let until = *down.get(peer)?;
        if until <= std::time::Instant::now() {
            down.remove(peer);
            return None;
        }
        Some(until)
    }

    async fn send(
        &self,
        peer: &PeerAddr,
        path: &str,
        query: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<http::Response<hyper::body::Incoming>, PeerError> {
        let unreachable = |message: String| PeerError::unreachable(peer, message);
        let uri: Uri = format!("{}://{peer}{path}?{query}", self.scheme)
            .parse()
            .map_err(|e: http::uri::InvalidUri| unreachable(e.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.key.expose_secret()))
            .map_err(|_| unreachable("the cluster key is not a valid header value".into()))?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(AUTHORIZATION, bearer);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {RESPONSE_TIMEOUT:?}")))?
            .map_err(|e| unreachable(crate::upstream::error_chain(&e)))?;
        match resp.status() {
            StatusCode::OK => Ok(resp),
            StatusCode::MISDIRECTED_REQUEST => Err(PeerError::NotLeader { peer: peer.clone() }),
            status => Err(PeerError::Status {
                peer: peer.clone(),
                status,
            }),
        }
    }
}

/// The header a peer request carries, checked by the endpoint.
pub fn authorized(key: &Secret, header: Option<&HeaderValue>) -> bool {
    use sha2::Digest as _;
    let Some(given) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare hashes: how long the comparison takes then says nothing
    // about the key.
    sha2::Sha256::digest(given.as_bytes()) == sha2::Sha256::digest(key.expose_secret().as_bytes())
}
