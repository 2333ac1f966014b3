//! The YAML configuration file as written, one serde struct per mapping.
//!
//! Every mapping rejects unknown keys, and every scalar with a grammar
//! (hosts, URLs, durations, addresses) is parsed during deserialisation, so a
//! bad value is reported by the YAML parser with its line and column.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::oci::RegistryHost;

/// The built-in default configuration: the proxy runs on it when no
/// `--config` is given.
pub const DEFAULT_CONFIG_YAML: &str = r#"# Portcullis built-in default configuration.
listen: 127.0.0.1:5000
dataDir: ./portcullis-data
defaultUpstream: docker.io
upstreams:
  - host: docker.io
    url: https://registry-1.docker.io
    aliases: [hub]
  - host: ghcr.io
    url: https://ghcr.io
    aliases: [ghcr]
  - host: quay.io
    url: https://quay.io
    aliases: [quay]
  - host: registry.k8s.io
    url: https://registry.k8s.io
    aliases: [k8s]
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Directory of signature policies (`*.yaml`).
    pub policies: Option<PathBuf>,
    /// Where audit events (JSON lines) go; standard output when absent.
    pub audit_log: Option<PathBuf>,
    pub tls: Option<RawTls>,
    /// Host (or alias) of the upstream used when a path names no registry.
    pub default_upstream: Option<String>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub upstream_defaults: RawUpstreamDefaults,
    /// Limits of the client-facing HTTP server (anonymous clients).
    #[serde(default)]
    pub server: RawServerLimits,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub storage: RawStorage,
    /// Client authentication and per-repository authorization; absent:
    /// every client is anonymous and may pull everything.
    pub auth: Option<RawAuth>,
    /// Registry watch: tags re-resolved and verified on a schedule.
    pub watch: Option<super::watch::RawWatch>,
    /// Air-gap imports (`portcullis import`).
    #[serde(default)]
    pub airgap: RawAirgap,
    /// Replicas on one bucket that know each other (`cluster.peers`).
    pub cluster: Option<super::cluster::RawCluster>,
}

/// `airgap:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAirgap {
    /// PEM public key of the export station: every import must carry an
    /// export record it signed naming each image.
    pub export_key: Option<PathBuf>,
}

/// `auth:`. The names `htpasswd` and `anonymous` are fixed (operators
/// script against them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuth {
    /// `user:bcrypt-hash` lines (`$2y$`, `$2b$`, `$2a$`), as Distribution
    /// and zot read them.
    pub htpasswd: Option<PathBuf>,
    /// Companion group file: `group: user1 user2` lines.
    pub groups_file: Option<PathBuf>,
    /// Inline groups: `{ ci: [robot1, alice] }` (merged with `groupsFile`).
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Static bearer tokens: `NAME TOKEN` lines (TOKEN may be `sha256:<hex>`).
    pub tokens: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates are identities.
    #[serde(rename = "clientCA")]
    pub client_ca: Option<PathBuf>,
    /// `true`: clients without credentials are the identity `anonymous`.
    #[serde(default)]
    pub anonymous: bool,
    /// HMAC key (at least 32 bytes) signing issued tokens, shared by
    /// replicas; absent: a random key per process.
    pub token_key: Option<PathBuf>,
    /// Lifetime of issued tokens (default 5m).
    pub token_ttl: Option<HumanDuration>,
    /// The `service` of the challenge and of issued tokens (default `portcullis`).
    pub service: Option<String>,
    /// The token endpoint URL announced in challenges (default: the
    /// request's scheme and `Host` + `/token`).
    pub realm: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawAuthRule>,
}

/// One authorization rule: these identities may pull what `match` names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuthRule {
    pub identities: Vec<String>,
    #[serde(rename = "match")]
    pub matches: RawAuthMatch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuthMatch {
    /// Registry host glob (as clients name the upstream); absent: any.
    pub registry: Option<String>,
    /// Repository globs (upstream names); absent or empty: all.
    #[serde(default)]
    pub repositories: Vec<String>,
}

/// `storage:`: how much the cache may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorage {
    /// Cap on cached blob bytes (`50GiB`, `500MB`, or a number of bytes);
    /// least recently served blobs are evicted past it. Absent: no cap.
    pub max_bytes: Option<bytesize::ByteSize>,
    /// Content and records in an S3-compatible bucket instead of `dataDir`.
    pub s3: Option<RawS3>,
}

/// `storage.s3`. Credentials are not here: they come from the standard AWS
/// environment variables and files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawS3 {
    pub bucket: String,
    /// Absent: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Key prefix inside the bucket (`cache/`); absent: the bucket's root.
    pub prefix: Option<String>,
    /// Allow a plain `http://` endpoint (a local test server).
    #[serde(default)]
    pub allow_http: bool,
    /// A blob served (by any replica) within this is not evicted; absent:
    /// three minutes (longer than the access index's flush interval).
    pub eviction_grace: Option<HumanDuration>,
}

/// The admin listener (metrics and probes).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAdmin {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstream {
    /// The registry name clients use (`docker.io`, `ghcr.io`, `127.0.0.1:5002`).
    pub host: RegistryHost,
    /// Where to connect: `https://host[:port]`, or `http://` together with
    /// `insecurePlainHttp: true`. May be left out for an `offline` upstream.
    pub url: Option<UpstreamUrl>,
    /// Serve this upstream from the store only (imported or earlier admitted
    /// content): never a network request; anything absent is 404.
    #[serde(default)]
    pub offline: bool,
    #[serde(default)]
    pub insecure_plain_http: bool,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub credentials: Option<RawCredentials>,
    /// Extra PEM CA certificates trusted for this upstream only.
    pub ca_file: Option<PathBuf>,
    /// Hosts (`host[:port]`) besides the upstream's own whose token realms may
    /// receive its credentials (e.g. `gitlab.com` for `registry.gitlab.com`).
    #[serde(default)]
    pub token_realms: Vec<RegistryHost>,
    /// Weakening switch: redirects and token realms may point at loopback,
    /// private, link-local, CGNAT or unspecified addresses (never at cloud
    /// metadata). Off by default.
    #[serde(default)]
    pub insecure_allow_private_addresses: bool,
}

/// Credentials for one upstream. Secrets are named by file or environment
/// variable (preferred) or given inline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// A static bearer token (some registries issue long-lived ones).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCache {
    /// Bytes of verified manifests kept in memory (besides the disk store).
    pub manifest_memory_bytes: Option<u64>,
    /// Tag observations kept in memory (the rest are read from disk).
    pub tag_memory_entries: Option<u64>,
    /// Blob downloads from upstreams running at once (followers of a
    /// running download do not count).
    pub max_cold_downloads: Option<usize>,
    /// How long a request waits for a download slot before `429`.
    pub cold_download_wait: Option<HumanDuration>,
    /// The oldest last confirmation of a tag the stale fallback still
    /// serves while its upstream is unreachable (absent: no bound).
    pub max_staleness: Option<HumanDuration>,
}

/// Connection limits of the client-facing server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServerLimits {
    /// HTTP/1: time to receive a request's headers, and the idle time of a
    /// keep-alive connection.
    pub header_read_timeout: Option<HumanDuration>,
    /// HTTP/2: interval of keep-alive pings, and how long to wait for the ack.
    pub http2_keep_alive_interval: Option<HumanDuration>,
    pub http2_keep_alive_timeout: Option<HumanDuration>,
    pub http2_max_concurrent_streams: Option<u32>,
    /// Bytes of request line and headers (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: Option<usize>,
    /// Open client connections, in total and per client (IPv4 address or IPv6 /64).
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    /// Time for a client to complete the TLS handshake.
    pub tls_handshake_timeout: Option<HumanDuration>,
    /// After SIGTERM: how long in-flight responses may take to finish.
    pub drain_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpstreamDefaults {
    pub connect_timeout: Option<HumanDuration>,
    pub response_header_timeout: Option<HumanDuration>,
    pub body_idle_timeout: Option<HumanDuration>,
    pub token_timeout: Option<HumanDuration>,
    pub retry_attempts: Option<u32>,
    pub retry_backoff: Option<HumanDuration>,
}

/// `http(s)://host[:port]` with no path, query or credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub https: bool,
    pub authority: RegistryHost,
}

impl FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (https, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("upstream URL `{s}` must start with https:// or http://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "upstream URL `{s}` must be scheme://host[:port] with no path, query or credentials"
            ));
        }
        let authority = authority.parse().map_err(|e| format!("upstream URL `{s}`: {e}"))?;
        Ok(UpstreamUrl { https, authority })
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 500ms, 10s, 5m or 1h"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(format!("`{s}` is not a duration like 500ms, 10s, 5m or 1h")),
        };
        Ok(HumanDuration(d))
    }
}

macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(UpstreamUrl, HumanDuration);

/// Parse YAML text. Errors carry the line and column of the offending value.
pub fn parse(yaml: &str) -> Result<RawConfig, yaml_serde::Error> {
    yaml_serde::from_str(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let raw = parse(DEFAULT_CONFIG_YAML).expect("built-in default must parse");
        assert_eq!(raw.upstreams.len(), 4);
    }

    #[test]
    fn unknown_keys_are_errors_with_line_numbers() {
        let err = parse("listen: 127.0.0.1:5000\nupstreams:\n  - host: a.io\n    url: https://a.io\n    colour: red\n")
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
    }

    #[test]
    fn bad_values_have_line_numbers() {
        let err = parse("upstreams:\n  - host: a.io\n    url: ftp://a.io\n").expect_err("bad url");
        let msg = err.to_string();
        // Custom errors are located at the enclosing mapping (the entry).
        assert!(
            msg.contains("https://") && msg.contains("upstreams[0]") && msg.contains("line 2"),
            "{msg}"
        );
        let err = parse("upstreamDefaults:\n  connectTimeout: soon\n").expect_err("bad duration");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn server_limits_parse_and_refuse_unknown_keys() {
        let raw = parse("server:\n  headerReadTimeout: 5s\n  maxConnectionsPerClient: 8\n").expect("limits");
        assert_eq!(
            raw.server.header_read_timeout,
            Some(HumanDuration(Duration::from_secs(5)))
        );
        assert_eq!(raw.server.max_connections_per_client, Some(8));
        let err = parse("server:\n  maxConnection: 8\n").expect_err("typo");
        assert!(err.to_string().contains("maxConnection"), "{err}");
        let err = parse("cache:\n  maxColdDownload: 8\n").expect_err("typo");
        assert!(err.to_string().contains("maxColdDownload"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!("500ms".parse(), Ok(HumanDuration(Duration::from_millis(500))));
        assert_eq!("2m".parse(), Ok(HumanDuration(Duration::from_secs(120))));
        assert!("10".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
    }
}
