//! Logging: tracing initialisation and the one access-log line per request.
//!
//! Imports: `oci`.

pub mod audit;
#[macro_use]
pub mod metrics;
pub mod watch_metrics;

pub use metrics::Metrics;

use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::oci::Digest;

/// Output format of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Compact, human-readable lines.
    Compact,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `RUST_LOG` overrides the default level
/// (`info`). Safe to call more than once (later calls are no-ops).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Compact => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// How a request was served with respect to the local cache.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Not a cacheable request (errors, `/v2/`, tag lists).
    None,
    /// Served from memory or disk without fetching content upstream.
    Hit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Joined another request's in-progress upstream download.
    Joined,
    /// Upstream unreachable; served the last verified content for a tag.
    Stale,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::None => "-",
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// Who made a request: the peer address and the authenticated identity
/// (`user:NAME`, `cert:DN`, `anonymous`; `-` when none was established).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    pub client: String,
    pub identity: String,
}

/// Everything the access log says about one request.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub client: String,
    pub identity: String,
    pub method: http::Method,
    pub path: String,
    pub route: metrics::RouteKind,
    pub upstream: Option<String>,
    pub digest: Option<Digest>,
    pub cache: CacheOutcome,
    pub status: u16,
    pub error: Option<String>,
}

impl AccessRecord {
    /// Emit the line. `bytes` is what was actually sent; `complete` is false
    /// when the body was aborted (integrity failure, client gone).
    pub fn emit(&self, metrics: &metrics::Metrics, bytes: u64, complete: bool, elapsed: Duration) {
        let registry = self.upstream.as_deref().unwrap_or("-");
        metrics.request(self.route, metrics::MethodKind::of(&self.method), self.status, elapsed);
        metrics.bytes_served(registry, bytes);
        metrics.cache(self.route, self.cache);
        let digest = self.digest.as_ref().map(ToString::to_string);
        tracing::info!(
            target: "portcullis::access",
            client = %self.client,
            identity = %self.identity,
            method = %self.method,
            path = %self.path,
            route = self.route.as_str(),
            upstream = registry,
            digest = digest.as_deref().unwrap_or("-"),
            cache = self.cache.as_str(),
            status = self.status,
            bytes,
            complete,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = self.error.as_deref().unwrap_or(""),
            "request"
        );
    }
}
