//! Configuration: YAML (or the built-in default) plus command-line overrides
//! → a validated [`Config`]. Nothing past this module sees raw strings.
//!
//! Imports: `oci`.

mod auth;
pub mod cluster;
pub mod raw;
mod secret;
pub mod watch;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AuthConfig, AuthRule, DEFAULT_TOKEN_TTL, IdentityPattern};
pub use cluster::{ClusterConfig, PeerAddr};
pub use raw::{DEFAULT_CONFIG_YAML, UpstreamUrl};
pub use secret::Secret;
pub use watch::{EventFormat, RepoSelection, TagSelection, WatchConfig, WatchTarget, WebhookSink};

use crate::oci::{RegistryHost, RepoName};

/// Why a configuration was refused. Parse errors carry YAML line numbers;
/// validation errors name the YAML path of the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {source}")]
    Yaml { origin: String, source: yaml_serde::Error },
    #[error("{origin}: {at}: {message}")]
    Invalid {
        origin: String,
        at: String,
        message: String,
    },
}

/// Settings given on the command line; each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// An upstream URL that becomes the default (and is allow-listed).
    pub default_upstream: Option<UpstreamUrl>,
    /// The policy directory (overrides `policies:`).
    pub policies: Option<PathBuf>,
    /// Serve whatever matches its digests, with no signature policy.
    pub integrity_only: bool,
    /// Address of the admin listener (overrides `admin.listen`).
    pub admin_listen: Option<SocketAddr>,
    /// Every upstream is offline (`serve --offline`).
    pub offline: bool,
}

/// Credentials presented to one upstream.
#[derive(Clone, Debug)]
pub enum Credentials {
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// One allow-listed upstream registry.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The name clients use for it (`docker.io`).
    pub host: RegistryHost,
    /// Where the proxy connects (`https://registry-1.docker.io`).
    pub url: UpstreamUrl,
    /// Served from the store only (`offline: true` or `serve --offline`):
    /// the proxy never sends it a request.
    pub offline: bool,
    pub credentials: Option<Credentials>,
    pub ca_file: Option<PathBuf>,
    /// Extra token realm hosts that may receive the credentials (besides the
    /// upstream's own host and the built-in registries' token hosts).
    pub token_realms: Vec<RegistryHost>,
    /// Weakening switch: redirects and realms may point at private addresses.
    pub insecure_allow_private_addresses: bool,
}

impl Upstream {
    /// Docker Hub keeps official images under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        self.host.as_str() == "docker.io"
    }

    /// The repository name to use upstream for a client-visible `name`.
    pub fn upstream_repo(&self, name: &RepoName) -> RepoName {
        if self.is_docker_hub() {
            name.with_library_prefix()
        } else {
            name.clone()
        }
    }
}

/// Timeouts and retries for upstream requests.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamPolicy {
    pub connect_timeout: Duration,
    /// containerd waits at most 30 s for response headers, so ours is shorter.
    pub response_header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub token_timeout: Duration,
    pub retry_attempts: u32,
    pub retry_backoff: Duration,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            connect_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(20),
            body_idle_timeout: Duration::from_secs(60),
            token_timeout: Duration::from_secs(15),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// Limits of the client-facing server: what one anonymous client, or many,
/// can hold open. hyper's HTTP/1 header timeout only applies with a timer,
/// and the listener always sets one, so every value here is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// HTTP/1: time to receive a request's headers; also closes keep-alive
    /// connections idle for this long (hyper ≥ 1.6).
    pub header_read_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// HTTP/1 read buffer (request line + headers) and HTTP/2 header list.
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub tls_handshake_timeout: Duration,
    /// After SIGTERM: how long in-flight responses may take to finish.
    pub drain_timeout: Duration,
}

/// hyper refuses an HTTP/1 read buffer below this (it asserts).
pub const MIN_HEADER_BYTES: usize = 8192;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(30),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
            http2_max_concurrent_streams: 128,
            max_header_bytes: 64 * 1024,
            max_connections: 8192,
            max_connections_per_client: 512,
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Bounds on the work and memory anonymous requests can cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Tag observations kept in memory.
    pub tag_memory_entries: u64,
    /// Concurrent blob downloads from upstreams (leaders only).
    pub max_cold_downloads: usize,
    /// How long a request queues for a download slot before `429`.
    pub cold_download_wait: Duration,
    /// How old a tag's last confirmation by its upstream may be for the
    /// stale fallback (`Warning: 299`) while the upstream is unreachable;
    /// older, the tag is refused. `None`: no bound.
    pub max_staleness: Option<Duration>,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            tag_memory_entries: 100_000,
            max_cold_downloads: 64,
            cold_download_wait: Duration::from_secs(10),
            max_staleness: None,
        }
    }
}

/// How pulls are admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every manifest digest must satisfy the policies in this directory.
    Policies(PathBuf),
    /// No signature policy: content is served when it matches its digests.
    /// Refused unless asked for explicitly (`--integrity-only`).
    IntegrityOnly,
}

/// `storage:` validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Storage {
    /// Cap on blob bytes; `None`: unbounded.
    pub max_bytes: Option<u64>,
    /// `storage.s3`: the bucket instead of the data directory.
    pub s3: Option<S3Storage>,
}

/// `storage.s3` validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Storage {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Empty, or ending in `/`.
    pub prefix: String,
    pub allow_http: bool,
    /// `evictionGrace`: a blob served by any replica within this is not
    /// evicted; `None`: the store's default.
    pub eviction_grace: Option<Duration>,
}

/// `storage.s3`: a bucket name S3 accepts, an `http(s)://` endpoint (plain
/// HTTP only with `allowHttp`), a prefix of plain key components.
fn s3_storage(raw: &raw::RawS3) -> Result<S3Storage, (String, String)> {
    let err = |at: &str, m: String| Err((format!("storage.s3.{at}"), m));
    let bucket_ok = (3..=63).contains(&raw.bucket.len())
        && raw
            .bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return err("bucket", format!("{:?} is not an S3 bucket name", raw.bucket));
    }
    if let Some(endpoint) = &raw.endpoint {
        let plain_allowed = endpoint.starts_with("http://") && raw.allow_http;
        if !(endpoint.starts_with("https://") || plain_allowed) {
            return err(
                "endpoint",
                format!("{endpoint:?} must be an https:// URL (http:// only with allowHttp: true)"),
            );
        }
    }
    let prefix = raw.prefix.as_deref().unwrap_or("").trim_matches('/');
    if prefix.split('/').any(|c| c == "." || c == "..") || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
    {
        return err("prefix", format!("{prefix:?} is not a plain key prefix"));
    }
    Ok(S3Storage {
        bucket: raw.bucket.clone(),
        endpoint: raw.endpoint.clone(),
        region: raw.region.clone(),
        prefix: if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
        allow_http: raw.allow_http,
        eviction_grace: raw.eviction_grace.map(|d| d.0),
    })
}

/// Where the admin listener binds unless configured: loopback only, as
/// metrics name upstreams and rules.
pub const DEFAULT_ADMIN_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 5001);

/// The policy directory used when neither the file nor the flags name one.
pub const DEFAULT_POLICY_DIR: &str = "./policies";

/// TLS for the listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`. Separate from
    /// the registry port so that probes and scrapes never compete with
    /// pulls and metrics are not exposed to registry clients.
    pub admin_listen: SocketAddr,
    /// `storage:`: the cap on cached content.
    pub storage: Storage,
    pub data_dir: PathBuf,
    /// How pulls are admitted: by a signature policy, or integrity only.
    pub admission: Admission,
    /// Audit events go here (JSON lines); `None` means standard output.
    pub audit_log: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    /// Client authentication and authorization; `None`: anonymous pulls of
    /// everything.
    pub auth: Option<AuthConfig>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub default_upstream: Option<Arc<Upstream>>,
    aliases: HashMap<String, Arc<Upstream>>,
    pub manifest_memory_bytes: u64,
    pub upstream_policy: UpstreamPolicy,
    pub server_limits: ServerLimits,
    pub proxy_limits: ProxyLimits,
    /// Where this configuration came from (a path or "built-in default").
    pub origin: String,
    /// The registry watch (`None`: no `watch:` section).
    pub watch: Option<WatchConfig>,
    /// `airgap.exportKey`: imports must be signed by this export station
    /// (its PEM public key; relative to the configuration file).
    pub export_key: Option<PathBuf>,
    /// `cluster:`: the replicas sharing the bucket, which stream blobs and
    /// tag resolutions to one another.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Load `path`, or the built-in default when `None`, then apply overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (origin, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => ("built-in default".to_owned(), DEFAULT_CONFIG_YAML.to_owned()),
        };
        Self::from_yaml(&text, &origin, overrides)
    }

    /// Parse and validate YAML `text`; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = raw::parse(text).map_err(|source| ConfigError::Yaml {
            origin: origin.to_owned(),
            source,
        })?;
        Self::from_raw(raw, origin, overrides)
    }

    fn from_raw(raw: raw::RawConfig, origin: &str, ov: &Overrides) -> Result<Config, ConfigError> {
        let invalid = |at: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            at: at.to_owned(),
            message,
        };
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        let mut aliases: HashMap<String, Arc<Upstream>> = HashMap::new();
        for (i, u) in raw.upstreams.into_iter().enumerate() {
            let at = format!("upstreams[{i}]");
            let offline = u.offline || ov.offline;
            let url = match u.url {
                Some(url) => url,
                // Offline: the URL is never used; it names the host only.
                None if offline => UpstreamUrl {
                    https: true,
                    authority: u.host.clone(),
                },
                None => {
                    return Err(invalid(
                        &format!("{at}.url"),
                        "missing (required unless `offline: true`)".into(),
                    ));
                }
            };
            if !url.https && !u.insecure_plain_http && !offline {
                return Err(invalid(
                    &format!("{at}.url"),
                    format!("`{url}` is plain HTTP; set `insecurePlainHttp: true` to allow it"),
                ));
            }
            if upstreams.iter().any(|o| o.host == u.host) {
                return Err(invalid(
                    &format!("{at}.host"),
                    format!("duplicate upstream `{}`", u.host),
                ));
            }
            let credentials = u
                .credentials
                .map(|c| secret::load_credentials(c, origin_dir(origin)))
                .transpose()
                .map_err(|m| invalid(&format!("{at}.credentials"), m))?;
            let upstream = Arc::new(Upstream {
                host: u.host,
                url,
                offline,
                credentials,
                ca_file: u.ca_file.map(|p| resolve_path(origin, p)),
                token_realms: u.token_realms,
                insecure_allow_private_addresses: u.insecure_allow_private_addresses,
            });
            for (j, alias) in u.aliases.into_iter().enumerate() {
                let alias_at = format!("{at}.aliases[{j}]");
                if alias.parse::<RepoName>().map(|n| n.depth()) != Ok(1) || RegistryHost::looks_like_host(&alias) {
                    return Err(invalid(
                        &alias_at,
                        format!("alias `{alias}` must be one lowercase path segment without dots"),
                    ));
                }
                if aliases.insert(alias.clone(), upstream.clone()).is_some() {
                    return Err(invalid(&alias_at, format!("alias `{alias}` is used twice")));
                }
            }
            upstreams.push(upstream);
        }

        let mut default_upstream = match raw.default_upstream {
            None => None,
            Some(name) => Some(
                upstreams
                    .iter()
                    .find(|u| u.host.as_str() == name)
                    .or_else(|| aliases.get(&name))
                    .cloned()
                    .ok_or_else(|| {
                        invalid(
                            "defaultUpstream",
                            format!("`{name}` is not a configured upstream host or alias"),
                        )
                    })?,
            ),
        };
        if let Some(url) = &ov.default_upstream {
            let upstream = match upstreams.iter().position(|u| u.host == url.authority) {
                Some(i) => {
                    // Same host as a configured upstream: the flag's URL wins,
                    // credentials and CA stay.
                    let mut u = (*upstreams[i]).clone();
                    u.url = url.clone();
                    let u = Arc::new(u);
                    upstreams[i] = u.clone();
                    for v in aliases.values_mut() {
                        if v.host == u.host {
                            *v = u.clone();
                        }
                    }
                    u
                }
                None => {
                    let u = Arc::new(Upstream {
                        host: url.authority.clone(),
                        url: url.clone(),
                        offline: ov.offline,
                        credentials: None,
                        ca_file: None,
                        token_realms: Vec::new(),
                        insecure_allow_private_addresses: false,
                    });
                    upstreams.push(u.clone());
                    u
                }
            };
            default_upstream = Some(upstream);
        }

        let d = UpstreamPolicy::default();
        let p = raw.upstream_defaults;
        let upstream_policy = UpstreamPolicy {
            connect_timeout: p.connect_timeout.map_or(d.connect_timeout, |x| x.0),
            response_header_timeout: p.response_header_timeout.map_or(d.response_header_timeout, |x| x.0),
            body_idle_timeout: p.body_idle_timeout.map_or(d.body_idle_timeout, |x| x.0),
            token_timeout: p.token_timeout.map_or(d.token_timeout, |x| x.0),
            retry_attempts: p.retry_attempts.unwrap_or(d.retry_attempts).clamp(1, 10),
            retry_backoff: p.retry_backoff.map_or(d.retry_backoff, |x| x.0),
        };

        let auth = raw
            .auth
            .map(|a| auth::auth_config(a, |p| resolve_path(origin, p)))
            .transpose()
            .map_err(|(at, m)| invalid(&at, m))?;
        if auth.as_ref().is_some_and(|a| a.client_ca.is_some()) && raw.tls.is_none() {
            return Err(invalid("auth.clientCA", "client certificates need `tls:`".to_owned()));
        }
        let watch = match raw.watch {
            None => None,
            Some(w) => {
                let find = |name: &str| {
                    upstreams
                        .iter()
                        .find(|u| u.host.as_str() == name)
                        .or_else(|| aliases.get(name))
                        .cloned()
                };
                Some(watch::validate(w, find, origin_dir(origin)).map_err(|(at, m)| invalid(&at, m))?)
            }
        };
        let cluster = match raw.cluster {
            None => None,
            // Peers coordinate over the shared bucket (leases, grants): on
            // separate data directories there is nothing to share.
            Some(_) if raw.storage.s3.is_none() => {
                return Err(invalid(
                    "cluster.peers",
                    "replicas share content through `storage.s3`: configure the bucket first".to_owned(),
                ));
            }
            Some(c) => Some(cluster::validate(c, origin_dir(origin)).map_err(|(at, m)| invalid(&at, m))?),
        };
        let server_limits = server_limits(&raw.server).map_err(|(at, m)| invalid(&format!("server.{at}"), m))?;
        let proxy_limits = proxy_limits(&raw.cache).map_err(|(at, m)| invalid(&format!("cache.{at}"), m))?;

        Ok(Config {
            listen: ov
                .listen
                .or(raw.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000))),
            storage: Storage {
                max_bytes: raw.storage.max_bytes.map(|b| b.as_u64()),
                s3: match &raw.storage.s3 {
                    Some(s3) => Some(s3_storage(s3).map_err(|(at, m)| invalid(&at, m))?),
                    None => None,
                },
            },
            admin_listen: ov
                .admin_listen
                .or(raw.admin.listen)
                .unwrap_or_else(|| SocketAddr::from(DEFAULT_ADMIN_LISTEN)),
            data_dir: ov
                .data_dir
                .clone()
                .or(raw.data_dir)
                .unwrap_or_else(|| PathBuf::from("./portcullis-data")),
            admission: if ov.integrity_only {
                Admission::IntegrityOnly
            } else {
                Admission::Policies(
                    ov.policies
                        .clone()
                        .or_else(|| raw.policies.map(|p| resolve_path(origin, p)))
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR)),
                )
            },
            audit_log: raw.audit_log.map(|p| resolve_path(origin, p)),
            tls: raw.tls.map(|t| TlsFiles {
                cert: resolve_path(origin, t.cert),
                key: resolve_path(origin, t.key),
            }),
            auth,
            upstreams,
            default_upstream,
            aliases,
            manifest_memory_bytes: raw.cache.manifest_memory_bytes.unwrap_or(64 * 1024 * 1024),
            upstream_policy,
            server_limits,
            proxy_limits,
            origin: origin.to_owned(),
            watch,
            export_key: raw.airgap.export_key.map(|p| resolve_path(origin, p)),
            cluster,
        })
    }

    /// The upstream a client-visible host names, if allow-listed.
    pub fn upstream_by_host(&self, host: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.host.as_str() == host)
    }

    /// The upstream an alias names.
    pub fn upstream_by_alias(&self, alias: &str) -> Option<&Arc<Upstream>> {
        self.aliases.get(alias)
    }

    /// A human summary of what this configuration does, secrets elided.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "configuration: {}", self.origin);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let _ = writeln!(out, "listen: {scheme}://{}", self.listen);
        let _ = writeln!(out, "admin (metrics, /healthz, /readyz): http://{}", self.admin_listen);
        let _ = writeln!(out, "data directory: {}", self.data_dir.display());
        if let Some(key) = &self.export_key {
            let _ = writeln!(out, "imports: an export record signed by {} is required", key.display());
        }
        let _ = match self.storage.max_bytes {
            Some(cap) => writeln!(
                out,
                "storage cap: {} (least recently served blobs are evicted past it)",
                bytesize::ByteSize(cap).display().iec()
            ),
            None => writeln!(out, "storage cap: none (the cache grows without bound)"),
        };
        if let Some(s3) = &self.storage.s3 {
            let _ = writeln!(
                out,
                "storage: s3://{}/{} at {} (credentials from the AWS environment)",
                s3.bucket,
                s3.prefix,
                s3.endpoint.as_deref().unwrap_or("AWS")
            );
        }
        match &self.admission {
            Admission::Policies(dir) => {
                let _ = writeln!(out, "admission: signature policies in {}", dir.display());
            }
            Admission::IntegrityOnly => {
                let _ = writeln!(
                    out,
                    "admission: INTEGRITY ONLY (no signature policy; digests are still verified)"
                );
            }
        }
        let _ = writeln!(
            out,
            "audit events: {}",
            self.audit_log
                .as_ref()
                .map_or("standard output".to_owned(), |p| p.display().to_string())
        );
        let _ = writeln!(out, "clients: {}", describe_auth(self.auth.as_ref()));
        if let Some(w) = &self.watch {
            let _ = writeln!(out, "{}", w.describe());
        }
        let _ = writeln!(out, "upstreams (allow-list; any other registry host is refused):");
        for u in &self.upstreams {
            let mut aliases: Vec<&str> = self
                .aliases
                .iter()
                .filter(|(_, v)| v.host == u.host)
                .map(|(k, _)| k.as_str())
                .collect();
            aliases.sort_unstable();
            let _ = write!(out, "  {} -> {}", u.host, u.url);
            if u.offline {
                let _ = write!(out, " (OFFLINE: served from the store only)");
            } else if !u.url.https {
                let _ = write!(out, " (PLAIN HTTP)");
            }
            if !aliases.is_empty() {
                let _ = write!(out, ", aliases: {}", aliases.join(", "));
            }
            match &u.credentials {
                Some(Credentials::Basic { username, .. }) => {
                    let _ = write!(out, ", credentials: basic as `{username}`");
                }
                Some(Credentials::Bearer(_)) => {
                    let _ = write!(out, ", credentials: static bearer token");
                }
                None => {
                    let _ = write!(out, ", anonymous");
                }
            }
            if !u.token_realms.is_empty() {
                let realms: Vec<&str> = u.token_realms.iter().map(RegistryHost::as_str).collect();
                let _ = write!(out, ", also token realms: {}", realms.join(", "));
            }
            if u.insecure_allow_private_addresses {
                let _ = write!(out, " (INSECURE: redirects and realms may point at private addresses)");
            }
            let _ = writeln!(out);
            let example = if u.is_docker_hub() { "library/alpine" } else { "org/app" };
            let _ = writeln!(
                out,
                "      routes: /v2/{}/{example}/...  and  /v2/{example}/...?ns={}",
                u.host, u.host
            );
        }
        match &self.default_upstream {
            Some(u) => {
                let _ = writeln!(out, "default upstream (paths naming no registry): {}", u.host);
            }
            None => {
                let _ = writeln!(out, "default upstream: none (paths must name a registry)");
            }
        }
        let p = &self.upstream_policy;
        let _ = writeln!(
            out,
            "upstream timeouts: connect {:?}, response headers {:?}, body idle {:?}; {} attempts, backoff from {:?}",
            p.connect_timeout, p.response_header_timeout, p.body_idle_timeout, p.retry_attempts, p.retry_backoff
        );
        let _ = writeln!(out, "manifest memory cache: {} bytes", self.manifest_memory_bytes);
        let (s, l) = (&self.server_limits, &self.proxy_limits);
        let _ = writeln!(
            out,
            "client connections: at most {} ({} per client address); headers within {:?}, at most {} bytes; HTTP/2 {} streams, pings every {:?}",
            s.max_connections,
            s.max_connections_per_client,
            s.header_read_timeout,
            s.max_header_bytes,
            s.http2_max_concurrent_streams,
            s.http2_keep_alive_interval
        );
        let _ = writeln!(
            out,
            "cold blob downloads: at most {} at once (a request waits up to {:?}, then 429); {} tags in memory",
            l.max_cold_downloads, l.cold_download_wait, l.tag_memory_entries
        );
        match l.max_staleness {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "stale tags (upstream unreachable): served for at most {d:?} after the last confirmation"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "stale tags (upstream unreachable): served with a warning, no age bound"
                );
            }
        }
        out
    }
}

/// Who may pull, for `config check` (file names only, never contents).
fn describe_auth(auth: Option<&AuthConfig>) -> String {
    let Some(a) = auth else {
        return "anonymous (no client authentication configured)".to_owned();
    };
    let mut methods = Vec::new();
    if let Some(p) = &a.htpasswd {
        methods.push(format!("htpasswd {}", p.display()));
    }
    if let Some(p) = &a.tokens {
        methods.push(format!("static tokens {}", p.display()));
    }
    if let Some(p) = &a.client_ca {
        methods.push(format!("client certificates from {}", p.display()));
    }
    let key = match &a.token_key {
        Some(p) => format!("key {}", p.display()),
        None => "a per-process key".to_owned(),
    };
    methods.push(format!("issued tokens ({}s, {key})", a.token_ttl.as_secs()));
    format!(
        "{}; anonymous {}; {} authorization rules",
        methods.join(", "),
        if a.anonymous { "allowed" } else { "refused" },
        a.rules.len()
    )
}

/// `server:` with defaults; a zero count (which would refuse everything)
/// or a buffer hyper cannot work with is an error naming the key.
fn server_limits(raw: &raw::RawServerLimits) -> Result<ServerLimits, (&'static str, String)> {
    let d = ServerLimits::default();
    let limits = ServerLimits {
        header_read_timeout: raw.header_read_timeout.map_or(d.header_read_timeout, |x| x.0),
        http2_keep_alive_interval: raw
            .http2_keep_alive_interval
            .map_or(d.http2_keep_alive_interval, |x| x.0),
        http2_keep_alive_timeout: raw.http2_keep_alive_timeout.map_or(d.http2_keep_alive_timeout, |x| x.0),
        http2_max_concurrent_streams: raw
            .http2_max_concurrent_streams
            .unwrap_or(d.http2_max_concurrent_streams),
        max_header_bytes: raw.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_connections: raw.max_connections.unwrap_or(d.max_connections),
        max_connections_per_client: raw.max_connections_per_client.unwrap_or(d.max_connections_per_client),
        tls_handshake_timeout: raw.tls_handshake_timeout.map_or(d.tls_handshake_timeout, |x| x.0),
        drain_timeout: raw.drain_timeout.map_or(d.drain_timeout, |x| x.0),
    };
    if limits.max_header_bytes < MIN_HEADER_BYTES {
        return Err(("maxHeaderBytes", format!("must be at least {MIN_HEADER_BYTES}")));
    }
    let positive = [
        (
            "http2MaxConcurrentStreams",
            limits.http2_max_concurrent_streams as usize,
        ),
        ("maxConnections", limits.max_connections),
        ("maxConnectionsPerClient", limits.max_connections_per_client),
    ];
    let durations = [
        ("headerReadTimeout", limits.header_read_timeout),
        ("http2KeepAliveInterval", limits.http2_keep_alive_interval),
        ("http2KeepAliveTimeout", limits.http2_keep_alive_timeout),
        ("tlsHandshakeTimeout", limits.tls_handshake_timeout),
    ];
    if let Some((at, _)) = positive.iter().find(|(_, n)| *n == 0) {
        return Err((at, "must be at least 1".to_owned()));
    }
    if let Some((at, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
        return Err((at, "must be longer than zero".to_owned()));
    }
    Ok(limits)
}

/// The `cache:` bounds on tag memory and concurrent downloads.
fn proxy_limits(raw: &raw::RawCache) -> Result<ProxyLimits, (&'static str, String)> {
    let d = ProxyLimits::default();
    let limits = ProxyLimits {
        tag_memory_entries: raw.tag_memory_entries.unwrap_or(d.tag_memory_entries),
        max_cold_downloads: raw.max_cold_downloads.unwrap_or(d.max_cold_downloads),
        cold_download_wait: raw.cold_download_wait.map_or(d.cold_download_wait, |x| x.0),
        max_staleness: raw.max_staleness.map(|x| x.0),
    };
    if limits.max_cold_downloads == 0 {
        return Err(("maxColdDownloads", "must be at least 1".to_owned()));
    }
    if limits.max_staleness.is_some_and(|d| d.is_zero()) {
        return Err((
            "maxStaleness",
            "must be longer than zero (leave it out for no bound)".to_owned(),
        ));
    }
    Ok(limits)
}

fn origin_dir(origin: &str) -> Option<&Path> {
    Path::new(origin).parent().filter(|_| origin != "built-in default")
}

/// Relative paths in a config file are relative to the file.
fn resolve_path(origin: &str, p: PathBuf) -> PathBuf {
    match origin_dir(origin) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_default() {
        let c = Config::load(None, &Overrides::default()).expect("default config");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.default_upstream.as_ref().map(|u| u.host.as_str()), Some("docker.io"));
        assert_eq!(
            c.upstream_by_alias("hub").map(|u| u.url.to_string()),
            Some("https://registry-1.docker.io".to_owned())
        );
        assert!(c.upstream_by_host("quay.io").is_some());
        assert!(c.upstream_by_host("evil.example").is_none());
    }

    #[test]
    fn offline_upstreams_and_the_staleness_bound() {
        let yaml = "upstreams:\n  - host: site.test\n    offline: true\n  - host: a.io\n    url: https://a.io\ncache:\n  maxStaleness: 1h\n";
        let c = Config::from_yaml(yaml, "t", &Overrides::default()).expect("valid");
        let site = c.upstream_by_host("site.test").expect("site");
        assert!(site.offline);
        assert_eq!(site.url.to_string(), "https://site.test");
        assert!(!c.upstream_by_host("a.io").expect("a").offline);
        assert_eq!(c.proxy_limits.max_staleness, Some(Duration::from_secs(3600)));
        // `serve --offline`: every upstream.
        let ov = Overrides {
            offline: true,
            ..Default::default()
        };
        let c = Config::from_yaml(yaml, "t", &ov).expect("valid");
        assert!(c.upstreams.iter().all(|u| u.offline));
        for (bad, at) in [
            ("upstreams:\n  - host: a.io\n", "upstreams[0].url"),
            ("cache:\n  maxStaleness: 0s\n", "maxStaleness"),
            ("upstreams:\n  - host: a.io\n    offline: yes-please\n", ""),
            ("upstreams:\n  - host: a.io\n    ofline: true\n", ""),
        ] {
            let e = Config::from_yaml(bad, "t", &Overrides::default()).expect_err(bad);
            assert!(e.to_string().contains(at), "{bad}: {e}");
        }
    }

    #[test]
    fn default_upstream_flag_allow_lists_its_host() {
        let ov = Overrides {
            default_upstream: Some("http://127.0.0.1:5001".parse().expect("url")),
            ..Default::default()
        };
        let c = Config::load(None, &ov).expect("config");
        let d = c.default_upstream.as_ref().expect("default");
        assert_eq!(d.host.as_str(), "127.0.0.1:5001");
        assert!(!d.url.https);
        assert!(c.upstream_by_host("127.0.0.1:5001").is_some());
    }

    #[test]
    fn plain_http_needs_opt_in() {
        let err = Config::from_yaml(
            "upstreams:\n  - host: local.test\n    url: http://127.0.0.1:1\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect_err("must refuse");
        assert!(err.to_string().contains("insecurePlainHttp"), "{err}");
    }

    /// `cluster:` needs the shared bucket and a key of its own (from a file
    /// or the environment, never inline), and names this replica among the
    /// peers if `self` is given.
    #[test]
    fn cluster_is_validated() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
        let s3 = "storage:\n  s3:\n    bucket: portcullis\n";
        let cluster = format!(
            "cluster:\n  peers: [10.0.0.2:5000, 10.0.0.1:5000]\n  keyFile: {}\n",
            key.display()
        );
        let ok = |yaml: &str| Config::from_yaml(yaml, "t.yaml", &Overrides::default());
        let c = ok(&format!("{s3}{cluster}")).expect("valid").cluster.expect("cluster");
        let peers: Vec<String> = c.peers.iter().map(ToString::to_string).collect();
        assert_eq!(
            peers,
            ["10.0.0.1:5000", "10.0.0.2:5000"],
            "sorted: every replica hashes one list"
        );
        std::fs::write(&key, "short\n").expect("key");
        for (yaml, expect) in [
            (cluster.clone(), "storage.s3"),
            (format!("{s3}{cluster}"), "at least 32 bytes"),
            (format!("{s3}cluster:\n  peers: [a:1]\n"), "keyFile"),
            (
                format!("{s3}cluster:\n  peers: [a:1]\n  key: inline\n"),
                "unknown field",
            ),
            (
                format!("{s3}cluster:\n  peers: [a:1, a:1]\n  keyEnv: K\n"),
                "listed twice",
            ),
            (
                format!("{s3}cluster:\n  peers: [a:1]\n  self: b:1\n  keyEnv: K\n"),
                "not one of",
            ),
        ] {
            let err = ok(&yaml).expect_err(expect);
            assert!(err.to_string().contains(expect), "{expect}: {err}");
        }
    }

    /// `storage.s3` as the issue shows it; unknown keys, credentials in the
    /// YAML, plain HTTP without `allowHttp` and odd names are refused.
    #[test]
    fn storage_s3_is_validated() {
        let yaml = "storage:\n  maxBytes: 50GiB\n  s3:\n    bucket: portcullis\n    endpoint: http://127.0.0.1:9000\n    region: us-east-1\n    prefix: cache/\n    allowHttp: true\n";
        let c = Config::from_yaml(yaml, "t.yaml", &Overrides::default()).expect("valid");
        let s3 = c.storage.s3.expect("s3");
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str(), s3.endpoint.as_deref()),
            ("portcullis", "cache/", Some("http://127.0.0.1:9000"))
        );
        assert_eq!(c.storage.max_bytes, Some(50 << 30));
        for (bad, expect) in [
            (
                yaml.replace("allowHttp: true", "allowHttp: false"),
                "storage.s3.endpoint",
            ),
            (yaml.replace("region:", "accessKeyId: AKIA\n    region:"), "accessKeyId"),
            (
                yaml.replace("bucket: portcullis", "bucket: Bad_Bucket"),
                "storage.s3.bucket",
            ),
            (yaml.replace("prefix: cache/", "prefix: a/../b"), "storage.s3.prefix"),
        ] {
            let err = Config::from_yaml(&bad, "t.yaml", &Overrides::default()).expect_err(expect);
            assert!(err.to_string().contains(expect), "{expect}: {err}");
        }
    }

    #[test]
    fn cross_field_errors_name_the_path() {
        let err = Config::from_yaml(
            "defaultUpstream: nope\nupstreams:\n  - host: a.io\n    url: https://a.io\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect_err("unknown default");
        assert!(err.to_string().contains("defaultUpstream"), "{err}");
        let err = Config::from_yaml(
            "upstreams:\n  - host: a.io\n    url: https://a.io\n    aliases: [x.y]\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect_err("dotted alias");
        assert!(err.to_string().contains("upstreams[0].aliases[0]"), "{err}");
    }

    #[test]
    fn limits_default_and_are_validated() {
        let c = Config::load(None, &Overrides::default()).expect("default config");
        assert_eq!(c.server_limits, ServerLimits::default());
        assert_eq!(c.proxy_limits, ProxyLimits::default());
        let c = Config::from_yaml(
            "server:\n  headerReadTimeout: 2s\n  maxConnections: 10\ncache:\n  maxColdDownloads: 3\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect("limits");
        assert_eq!(c.server_limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.server_limits.max_connections, 10);
        assert_eq!(c.proxy_limits.max_cold_downloads, 3);
        for (yaml, at) in [
            ("server:\n  maxHeaderBytes: 100\n", "server.maxHeaderBytes"),
            (
                "server:\n  maxConnectionsPerClient: 0\n",
                "server.maxConnectionsPerClient",
            ),
            ("server:\n  headerReadTimeout: 0s\n", "server.headerReadTimeout"),
            ("cache:\n  maxColdDownloads: 0\n", "cache.maxColdDownloads"),
        ] {
            let err = Config::from_yaml(yaml, "t.yaml", &Overrides::default()).expect_err(yaml);
            assert!(err.to_string().contains(at), "{yaml}: {err}");
        }
    }

    #[test]
    fn describe_never_prints_secrets() {
        // SAFETY of the test: the variable name is unique to this test.
        let c = Config::from_yaml(
            "upstreams:\n  - host: a.io\n    url: https://a.io\n    credentials: { username: bob, password: hunter2 }\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect("config");
        let text = c.describe();
        assert!(text.contains("bob") && !text.contains("hunter2"), "{text}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn token_realms_and_the_private_address_switch() {
        let c = Config::from_yaml(
            "upstreams:\n  - host: registry.gitlab.com\n    url: https://registry.gitlab.com\n    tokenRealms: [gitlab.com]\n    insecureAllowPrivateAddresses: true\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect("config");
        let u = &c.upstreams[0];
        assert_eq!(
            u.token_realms.iter().map(RegistryHost::as_str).collect::<Vec<_>>(),
            ["gitlab.com"]
        );
        assert!(u.insecure_allow_private_addresses);
        let text = c.describe();
        assert!(
            text.contains("token realms: gitlab.com") && text.contains("INSECURE"),
            "{text}"
        );
        let err = Config::from_yaml(
            "upstreams:\n  - host: a.io\n    url: https://a.io\n    tokenRealms: [\"https://a b\"]\n",
            "t.yaml",
            &Overrides::default(),
        )
        .expect_err("a realm entry is host[:port]");
        let msg = err.to_string();
        assert!(msg.contains("tokenRealms") && msg.contains("line 4"), "{msg}");
    }
}
