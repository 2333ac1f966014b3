//! The real CNCF Distribution registry (`docker-registry serve`, Debian's
//! 2.8) on a free loopback port with a temporary storage directory, killed
//! (and reaped) on drop; plus seeding helpers that push through the OCI
//! distribution push API exactly as a client would.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::images::{Blob, Image, OCI_INDEX};

/// How long the registry gets to answer `GET /v2/` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `docker-registry` process.
pub struct Distribution {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Distribution {
    /// A proxy configuration for this registry: under the portless name
    /// `registry.test` (with the alias `local`, and as the default upstream;
    /// docker references cannot carry `host:port` as a path segment) and
    /// under its own `127.0.0.1:port` (what containerd sends as `ns`).
    pub fn routing_config(registry: &Distribution) -> String {
        let port = registry.port;
        format!(
            "defaultUpstream: registry.test
upstreams:
  - host: registry.test
    url: http://127.0.0.1:{port}
    insecurePlainHttp: true
    aliases: [local]
  - host: 127.0.0.1:{port}
    url: http://127.0.0.1:{port}
    insecurePlainHttp: true
"
        )
    }

    /// A plain registry with filesystem storage and deletes enabled.
    pub async fn start() -> Distribution {
        Self::start_with("").await
    }

    /// Distribution's own pull-through cache mode in front of `remote_url`
    /// (the reference peer for comparisons and benchmarks).
    pub async fn start_proxy(remote_url: &str) -> Distribution {
        Self::start_with(&format!("proxy:\n  remoteurl: {remote_url}\n")).await
    }

    /// A registry that requires bearer tokens (Distribution's `auth.token`):
    /// issued by `realm` for `service` and `issuer`, signed by a key whose
    /// certificate chains to `root_pem` (a PEM file).
    pub async fn start_with_token_auth(realm: &str, service: &str, issuer: &str, root_pem: &Path) -> Distribution {
        Self::start_with(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            root_pem.display()
        ))
        .await
    }

    async fn start_with(extra_yaml: &str) -> Distribution {
        let binary = super::require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let log_path = dir.path().join("registry.log");
        // The port is free when probed but could be taken before the registry
        // binds it; a registry that exits at once is retried on a new port.
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n{extra_yaml}",
                    storage.display()
                ),
            )
            .expect("write config");
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            match wait_ready(&mut child, &http, port).await {
                Ok(()) => {
                    return Distribution { port, child, dir, http };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n--- registry log ---\n{log}"));
                }
            }
        }
        panic!("docker-registry did not start:\n{}", failures.join("\n"));
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:port`: the registry host as clients name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry URL + `path`.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    /// The storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(120), self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {url}: no answer within 120 s"))
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, headers, body)
    }

    /// Whether the registry has blob `blob` in `repo`.
    pub async fn has_blob(&self, repo: &str, blob: &Blob) -> bool {
        let url = self.url_for(&format!("/v2/{repo}/blobs/{}", blob.digest));
        self.send(Method::HEAD, &url, &[], Bytes::new()).await.0 == StatusCode::OK
    }

    /// Monolithic upload: `POST /v2/<repo>/blobs/uploads/`, then
    /// `PUT <location>?digest=<d>` with the bytes (one `Bytes`, not copied).
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        if self.has_blob(repo, blob).await {
            return;
        }
        let start = self.url_for(&format!("/v2/{repo}/blobs/uploads/"));
        let (status, headers, body) = self.send(Method::POST, &start, &[], Bytes::new()).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "POST {start}: {}",
            String::from_utf8_lossy(&body)
        );
        let location = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("upload Location")
            .to_owned();
        let location = if location.starts_with('/') {
            self.url_for(&location)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", blob.digest.to_string().replace(':', "%3A"));
        let (status, _, body) = self
            .send(
                Method::PUT,
                &put,
                &[("content-type", "application/octet-stream")],
                blob.bytes.clone(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT blob {} ({} bytes) to {repo}: {}",
            blob.digest,
            blob.bytes.len(),
            String::from_utf8_lossy(&body)
        );
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type` = the
    /// manifest's media type. `reference` is a tag or the digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) {
        let url = self.url_for(&format!("/v2/{repo}/manifests/{reference}"));
        let (status, headers, body) = self
            .send(
                Method::PUT,
                &url,
                &[("content-type", &manifest.media_type)],
                manifest.bytes.clone(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT {url}: {}",
            String::from_utf8_lossy(&body)
        );
        let digest = headers.get("docker-content-digest").and_then(|v| v.to_str().ok());
        assert_eq!(
            digest,
            Some(manifest.digest.to_string().as_str()),
            "registry stored different bytes for {url}"
        );
    }

    /// Config, layers, then the manifest by digest and (if given) by tag.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) {
        for blob in image.blobs() {
            self.push_blob(repo, blob).await;
        }
        self.push_manifest(repo, &image.manifest.digest.to_string(), &image.manifest)
            .await;
        if !tag.is_empty() {
            self.push_manifest(repo, tag, &image.manifest).await;
        }
    }

    /// Every child image (by digest), then the index or manifest list
    /// `index` under `tag` (built with `oci_index`/`docker_list`).
    pub async fn push_index(&self, repo: &str, tag: &str, index: &Blob, children: &[&Image]) {
        for child in children {
            self.push_image(repo, "", child).await;
        }
        self.push_manifest(repo, &index.digest.to_string(), index).await;
        self.push_manifest(repo, tag, index).await;
    }

    /// Alias of [`push_index`] for Docker manifest lists.
    pub async fn push_list(&self, repo: &str, tag: &str, list: &Blob, children: &[&Image]) {
        self.push_index(repo, tag, list, children).await;
    }

    /// Push an artifact manifest (from `images::referrer`) with its empty
    /// config and payload, by digest only.
    pub async fn push_artifact(&self, repo: &str, manifest: &Blob, empty_config: &Blob, payload: &Blob) {
        self.push_blob(repo, empty_config).await;
        self.push_blob(repo, payload).await;
        self.push_manifest(repo, &manifest.digest.to_string(), manifest).await;
    }

    /// The referrers tag schema (distribution 2.8 has no referrers API): an
    /// OCI index tagged `<alg>-<hex of subject>` listing each artifact
    /// manifest's descriptor with its `artifactType`. Returns the index.
    pub async fn push_referrers_index(&self, repo: &str, subject: &Blob, artifacts: &[(&Blob, &str)]) -> Blob {
        let index = referrers_index(artifacts);
        self.push_manifest(repo, &subject.digest.tag_form(), &index).await;
        index
    }
}

impl Distribution {
    /// Hold `manifest` in `repo` by digest although Distribution refuses it
    /// at push (it refuses `urls` on descriptors of most types): the bytes
    /// are uploaded as a blob and linked as a manifest revision in its
    /// storage, as a registry with that validation off holds them. Reads
    /// serve it like any pushed manifest.
    pub async fn plant_manifest(&self, repo: &str, manifest: &Blob) {
        self.push_blob(repo, manifest).await;
        let dir = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/revisions")
            .join(manifest.digest.algorithm().as_str())
            .join(manifest.digest.hex());
        std::fs::create_dir_all(&dir).expect("revision dir");
        std::fs::write(dir.join("link"), manifest.digest.to_string()).expect("write link");
    }
}

impl Distribution {
    /// Make manifest `manifest` (already pushed to `repo`) also answer to
    /// `alias`, a digest of another algorithm (`sha512:`). Distribution 2.8
    /// refuses manifest pushes by non-canonical digests but resolves
    /// cross-algorithm links on reads, exactly as it does for blobs pushed
    /// with `?digest=sha512:...`; so the link is written into its storage.
    pub fn link_manifest_digest(&self, repo: &str, manifest: &Blob, alias: &portcullis::oci::Digest) {
        let dir = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/revisions")
            .join(alias.algorithm().as_str())
            .join(alias.hex());
        std::fs::create_dir_all(&dir).expect("revision dir");
        std::fs::write(dir.join("link"), manifest.digest.to_string()).expect("write link");
    }
}

/// The index the referrers tag schema keeps for `artifacts`.
pub fn referrers_index(artifacts: &[(&Blob, &str)]) -> Blob {
    let manifests: Vec<serde_json::Value> = artifacts
        .iter()
        .map(|(m, artifact_type)| {
            let mut d = m.descriptor();
            d["artifactType"] = json!(artifact_type);
            d
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    Blob::new(OCI_INDEX, serde_json::to_vec(&index).expect("json"))
}

/// Poll `GET /v2/` until it answers 200, the process exits, or time runs out.
async fn wait_ready(child: &mut Child, http: &Client<HttpConnector, Full<Bytes>>, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("docker-registry exited early with {status}"));
        }
        let req = Request::get(format!("http://127.0.0.1:{port}/v2/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        // Distribution's own answer (its `charset` suffix), from a process
        // still alive: not some other server that took the probed port.
        // 401: a registry configured with token authentication.
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), http.request(req)).await
            && (resp.status() == StatusCode::OK || resp.status() == StatusCode::UNAUTHORIZED)
            && resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/json; charset=utf-8")
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on GET /v2/ within {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
