//! Typed Prometheus metrics (`prometheus-client`), served on the admin
//! listener. One [`Metrics`] is registered when the proxy starts and passed
//! to every part that records (no global): tests and tools that build
//! several proxies in one process get one registry each.
//!
//! Label values come only from enums or from the configuration (upstream
//! hosts from the allow-list, rule names from the policy in force), never
//! from request text, so a client cannot grow the series count.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::CacheOutcome;

/// A label value spelled by an enum's `as_str` (also used by
/// `watch_metrics`).
macro_rules! label_value {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

/// Which part of the registry API a request addressed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RouteKind {
    /// `/v2/`
    Base,
    Manifest,
    Blob,
    Tags,
    Referrers,
    /// The token endpoint of client authentication.
    Token,
    /// A replica's request to another (`cluster.peers`).
    Peer,
    /// Refused before a route was known (bad path, writes, unknown host).
    Unrouted,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Base => "base",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::Tags => "tags",
            RouteKind::Referrers => "referrers",
            RouteKind::Token => "token",
            RouteKind::Peer => "peer",
            RouteKind::Unrouted => "unrouted",
        }
    }
}
label_value!(RouteKind);

/// Request method, folded to the methods the pull API serves.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MethodKind {
    Get,
    Head,
    Post,
    Other,
}

impl MethodKind {
    pub fn of(method: &http::Method) -> MethodKind {
        match *method {
            http::Method::GET => MethodKind::Get,
            http::Method::HEAD => MethodKind::Head,
            http::Method::POST => MethodKind::Post,
            _ => MethodKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Get => "GET",
            MethodKind::Head => "HEAD",
            MethodKind::Post => "POST",
            MethodKind::Other => "other",
        }
    }
}
label_value!(MethodKind);

/// `2xx` … `5xx`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusClass(u8);

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        StatusClass(u8::try_from(status / 100).unwrap_or(5).clamp(1, 5))
    }

    pub fn as_str(self) -> &'static str {
        match self.0 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        }
    }
}
label_value!(StatusClass);

/// An upstream response as the alerts need to tell them apart: throttling
/// and authentication apart from other client errors.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Success,
    Redirect,
    Unauthorized,
    NotFound,
    TooManyRequests,
    ClientError,
    ServerError,
    /// No HTTP response: connection refused, reset, timed out.
    Failed,
}

impl UpstreamOutcome {
    pub fn of(status: http::StatusCode) -> UpstreamOutcome {
        match status.as_u16() {
            401 => UpstreamOutcome::Unauthorized,
            404 => UpstreamOutcome::NotFound,
            429 => UpstreamOutcome::TooManyRequests,
            s if status.is_success() || s < 200 => UpstreamOutcome::Success,
            s if s < 400 => UpstreamOutcome::Redirect,
            s if s < 500 => UpstreamOutcome::ClientError,
            _ => UpstreamOutcome::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Success => "2xx",
            UpstreamOutcome::Redirect => "3xx",
            UpstreamOutcome::Unauthorized => "401",
            UpstreamOutcome::NotFound => "404",
            UpstreamOutcome::TooManyRequests => "429",
            UpstreamOutcome::ClientError => "4xx",
            UpstreamOutcome::ServerError => "5xx",
            UpstreamOutcome::Failed => "error",
        }
    }
}
label_value!(UpstreamOutcome);

/// An admission outcome.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AdmissionOutcome {
    Allow,
    Deny,
    /// Audit mode: served, but the policy would have denied it.
    WouldDeny,
}

impl AdmissionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionOutcome::Allow => "allow",
            AdmissionOutcome::Deny => "deny",
            AdmissionOutcome::WouldDeny => "would-deny",
        }
    }
}
label_value!(AdmissionOutcome);

/// How an admission was decided.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AdmissionMode {
    Enforce,
    Audit,
    /// No signature policy (`--integrity-only`).
    IntegrityOnly,
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Enforce => "enforce",
            AdmissionMode::Audit => "audit",
            AdmissionMode::IntegrityOnly => "integrity-only",
        }
    }
}
label_value!(AdmissionMode);

/// What did not match its digest.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IntegrityKind {
    /// A blob's bytes did not hash to its digest (download aborted).
    Blob,
    /// A manifest's bytes did not hash to the digest asked for or claimed.
    Manifest,
    /// A document refused by the strict reader: duplicate or case-folded
    /// keys, hybrids, a media type that disagrees with its shape.
    Document,
}

impl IntegrityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityKind::Blob => "blob",
            IntegrityKind::Manifest => "manifest",
            IntegrityKind::Document => "document",
        }
    }
}
label_value!(IntegrityKind);

/// The format of a signature or attestation that was checked.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SignatureFormat {
    /// A cosign layer in a `.sig`/`.att` image (simple signing or DSSE).
    Legacy,
    /// A Sigstore bundle (cosign v3's default).
    Bundle,
}

impl SignatureFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFormat::Legacy => "legacy",
            SignatureFormat::Bundle => "bundle",
        }
    }
}
label_value!(SignatureFormat);

/// Which cap refused a client connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `server.maxConnections` connections are open.
    Global,
    /// This client address holds `server.maxConnectionsPerClient` already.
    PerClient,
}

impl ConnectionRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::Global => "global",
            ConnectionRefusal::PerClient => "per-client",
        }
    }
}
label_value!(ConnectionRefusal);

/// How a policy reload ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new revision is in force.
    Applied,
    /// The new files did not compile; the previous policy stays.
    Refused,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Refused => "refused",
        }
    }
}
label_value!(ReloadOutcome);

/// Why the store refused a write (`portcullis_store_write_failures_total`):
/// the operating system's reason for a local file, or the object store.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StoreWriteFailure {
    /// `ENOSPC`: the filesystem is full.
    NoSpace,
    /// `EDQUOT`: a disk quota is exhausted.
    Quota,
    /// `EROFS`: the filesystem is read-only.
    ReadOnly,
    /// The object store refused or failed a write (S3).
    Backend,
    /// Any other local I/O error.
    Io,
}

impl StoreWriteFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreWriteFailure::NoSpace => "no_space",
            StoreWriteFailure::Quota => "quota",
            StoreWriteFailure::ReadOnly => "read_only",
            StoreWriteFailure::Backend => "backend",
            StoreWriteFailure::Io => "io",
        }
    }
}
label_value!(StoreWriteFailure);

label_value!(CacheOutcome);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteKind,
    method: MethodKind,
    status: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    route: RouteKind,
    outcome: CacheOutcome,
}

/// An upstream registry as named in the allow-list (or `-` when none was
/// chosen), so the label set is bounded by the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    registry: String,
    status: UpstreamOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    verdict: AdmissionOutcome,
    /// The rule's name from the policy in force (`-`: integrity-only or
    /// no rule matched).
    rule: String,
    mode: AdmissionMode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntegrityLabels {
    kind: IntegrityKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabels {
    format: SignatureFormat,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabels {
    cap: ConnectionRefusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreWriteLabels {
    reason: StoreWriteFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: ReloadOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    /// The full policy revision, or `integrity-only`.
    revision: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_duration_histogram() -> Histogram {
    // 1 ms … ~33 s: cached manifests answer in about a millisecond, cold
    // admissions take tens to hundreds, large blobs seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn signature_duration_histogram() -> Histogram {
    // 0.1 ms … ~0.8 s per candidate × authority.
    Histogram::new(exponential_buckets(0.0001, 2.0, 14))
}

/// Every metric the proxy records, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    cache: Family<CacheLabels, Counter>,
    bytes_served: Family<RegistryLabels, Counter>,
    bytes_fetched: Family<RegistryLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    admissions: Family<AdmissionLabels, Counter>,
    integrity_failures: Family<IntegrityLabels, Counter>,
    signature_duration: HistogramFamily<FormatLabels>,
    downloads_in_flight: Gauge,
    download_followers: Gauge,
    cold_downloads_refused: Counter,
    store_bytes: Gauge,
    store_limit: Gauge,
    store_evictions: Counter,
    peer_bytes: Counter,
    peer_fallbacks: Counter,
    store_write_failures: Family<StoreWriteLabels, Counter>,
    store_caching: Gauge,
    auth_failures: Family<ReasonLabels, Counter>,
    connections_refused: Family<CapLabels, Counter>,
    policy_info: Family<PolicyLabels, Gauge>,
    policy_reloads: Family<ReloadLabels, Counter>,
    /// The registry watch's families.
    pub watch: super::watch_metrics::WatchMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `Content-Type` of an OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic Prometheus text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl Metrics {
    /// Create and register every family, under the `portcullis_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_duration_histogram),
            cache: Family::default(),
            bytes_served: Family::default(),
            bytes_fetched: Family::default(),
            upstream_requests: Family::default(),
            admissions: Family::default(),
            integrity_failures: Family::default(),
            signature_duration: Family::new_with_constructor(signature_duration_histogram),
            downloads_in_flight: Gauge::default(),
            download_followers: Gauge::default(),
            cold_downloads_refused: Counter::default(),
            store_bytes: Gauge::default(),
            store_limit: Gauge::default(),
            store_evictions: Counter::default(),
            peer_bytes: Counter::default(),
            peer_fallbacks: Counter::default(),
            store_write_failures: Family::default(),
            store_caching: Gauge::default(),
            auth_failures: Family::default(),
            connections_refused: Family::default(),
            policy_info: Family::default(),
            policy_reloads: Family::default(),
            watch: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Client requests by route, method and status class",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from request to the end of the response body, by route",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "cache_requests",
            "Manifest and blob requests by route and cache outcome",
            m.cache.clone(),
        );
        r.register_with_unit(
            "served",
            "Response body bytes sent to clients, by upstream registry",
            Unit::Bytes,
            m.bytes_served.clone(),
        );
        r.register_with_unit(
            "upstream_fetched",
            "Body bytes received from upstream registries (manifests, blobs, lists)",
            Unit::Bytes,
            m.bytes_fetched.clone(),
        );
        r.register(
            "upstream_requests",
            "HTTP requests to upstream registries by registry and outcome (each attempt counts; 429 and 5xx are throttling and outages)",
            m.upstream_requests.clone(),
        );
        r.register(
            "admissions",
            "Admission decisions by verdict, rule and mode",
            m.admissions.clone(),
        );
        r.register(
            "integrity_failures",
            "Upstream content refused: bytes that did not match their digest, or documents the strict reader refused",
            m.integrity_failures.clone(),
        );
        r.register_with_unit(
            "signature_verification_duration",
            "Time to check one signature or attestation candidate against one authority, by format",
            Unit::Seconds,
            m.signature_duration.clone(),
        );
        r.register(
            "downloads_in_flight",
            "Blob downloads from upstreams running now (one per digest)",
            m.downloads_in_flight.clone(),
        );
        r.register(
            "download_followers",
            "Client responses being sent that joined another request's blob download",
            m.download_followers.clone(),
        );
        r.register(
            "cold_downloads_refused",
            "Blob requests answered 429 because every upstream download slot stayed busy",
            m.cold_downloads_refused.clone(),
        );
        r.register_with_unit(
            "store",
            "Bytes of verified blobs in the store",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register_with_unit(
            "store_limit",
            "Bytes the store may grow to: what it holds plus the free space of its filesystem",
            Unit::Bytes,
            m.store_limit.clone(),
        );
        r.register(
            "store_evictions",
            "Blobs evicted from the store to stay under its size cap",
            m.store_evictions.clone(),
        );
        r.register_with_unit(
            "cluster_peer_received",
            "Blob bytes streamed from the replica leading their download (cluster.peers)",
            Unit::Bytes,
            m.peer_bytes.clone(),
        );
        r.register(
            "cluster_peer_fallbacks",
            "Blob downloads and tag resolutions the leading replica could not take, done here instead",
            m.peer_fallbacks.clone(),
        );
        r.register(
            "store_write_failures",
            "Storage write failures by reason, counted once per condition (the first failure after the store last took a blob), not per request",
            m.store_write_failures.clone(),
        );
        r.register(
            "store_caching",
            "1 while downloaded blobs are being kept; 0 while the store refuses writes and pulls are served verified but uncached",
            m.store_caching.clone(),
        );
        m.store_caching.set(1);
        r.register(
            "auth_failures",
            "Client authentication failures by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at once by a connection cap",
            m.connections_refused.clone(),
        );
        r.register(
            "policy_info",
            "The signature policy revision in force (value 1)",
            m.policy_info.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by outcome (refused: the previous policy stayed in force)",
            m.policy_reloads.clone(),
        );
        let watch = super::watch_metrics::WatchMetrics::register(r);
        Metrics { registry, watch, ..m }
    }

    /// One finished client request.
    pub fn request(&self, route: RouteKind, method: MethodKind, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: StatusClass::of(status),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn cache(&self, route: RouteKind, outcome: CacheOutcome) {
        if outcome != CacheOutcome::None {
            self.cache.get_or_create(&CacheLabels { route, outcome }).inc();
        }
    }

    /// Body bytes sent to a client for content of `registry` (`-`: none).
    pub fn bytes_served(&self, registry: &str, n: u64) {
        self.bytes_served
            .get_or_create(&RegistryLabels {
                registry: registry.to_owned(),
            })
            .inc_by(n);
    }

    pub fn bytes_fetched(&self, registry: &str, n: u64) {
        self.bytes_fetched
            .get_or_create(&RegistryLabels {
                registry: registry.to_owned(),
            })
            .inc_by(n);
    }

    /// The counter of bytes received from `registry`, for a body read in
    /// many chunks (one lookup, not one per chunk).
    pub fn fetched_counter(&self, registry: &str) -> Counter {
        self.bytes_fetched.get_or_create_owned(&RegistryLabels {
            registry: registry.to_owned(),
        })
    }

    pub fn upstream_request(&self, registry: &str, status: UpstreamOutcome) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                registry: registry.to_owned(),
                status,
            })
            .inc();
    }

    /// Requests sent to `registry` so far, every outcome (for command-line
    /// reports such as `portcullis promote --json`).
    pub fn upstream_requests_to(&self, registry: &str) -> u64 {
        const ALL: [UpstreamOutcome; 8] = [
            UpstreamOutcome::Success,
            UpstreamOutcome::Redirect,
            UpstreamOutcome::Unauthorized,
            UpstreamOutcome::NotFound,
            UpstreamOutcome::TooManyRequests,
            UpstreamOutcome::ClientError,
            UpstreamOutcome::ServerError,
            UpstreamOutcome::Failed,
        ];
        ALL.iter()
            .map(|&status| {
                let labels = UpstreamLabels {
                    registry: registry.to_owned(),
                    status,
                };
                self.upstream_requests.get(&labels).map_or(0, |c| c.get())
            })
            .sum()
    }

    pub fn admission(&self, verdict: AdmissionOutcome, rule: Option<&str>, mode: AdmissionMode) {
        self.admissions
            .get_or_create(&AdmissionLabels {
                verdict,
                rule: rule.unwrap_or("-").to_owned(),
                mode,
            })
            .inc();
    }

    pub fn integrity_failure(&self, kind: IntegrityKind) {
        self.integrity_failures.get_or_create(&IntegrityLabels { kind }).inc();
    }

    pub fn signature_checked(&self, format: SignatureFormat, elapsed: Duration) {
        self.signature_duration
            .get_or_create(&FormatLabels { format })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one running download until the guard drops.
    pub fn download_started(&self) -> GaugeGuard {
        GaugeGuard::new(&self.downloads_in_flight)
    }

    /// Counts one following response until the guard drops.
    pub fn follower_joined(&self) -> GaugeGuard {
        GaugeGuard::new(&self.download_followers)
    }

    /// The counter a blob body from a peer replica adds its bytes to.
    pub fn peer_bytes(&self) -> Counter {
        self.peer_bytes.clone()
    }

    /// A leading replica could not be asked: this one did the work.
    pub fn peer_fallback(&self) {
        self.peer_fallbacks.inc();
    }

    pub fn cold_download_refused(&self) {
        self.cold_downloads_refused.inc();
    }

    /// The store's size changed by `delta` bytes.
    pub fn store_bytes_changed(&self, delta: i64) {
        self.store_bytes.inc_by(delta);
    }

    /// The store's room: held bytes plus `available` free bytes.
    pub fn store_available(&self, available: u64) {
        let held = self.store_bytes.get();
        self.store_limit
            .set(held.saturating_add(i64::try_from(available).unwrap_or(i64::MAX)));
    }

    pub fn store_evicted(&self) {
        self.store_evictions.inc();
    }

    /// The store started refusing writes (once per condition): counted,
    /// and `portcullis_store_caching` drops to 0.
    pub fn store_write_failing(&self, reason: StoreWriteFailure) {
        self.store_write_failures
            .get_or_create(&StoreWriteLabels { reason })
            .inc();
        self.store_caching.set(0);
    }

    /// The store takes blobs again.
    pub fn store_caching_resumed(&self) {
        self.store_caching.set(1);
    }

    /// A client authentication failure; `reason` is one of a fixed set
    /// (the authentication module's failure enum).
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn connection_refused(&self, cap: ConnectionRefusal) {
        self.connections_refused.get_or_create(&CapLabels { cap }).inc();
    }

    /// The revision now in force (`None`: integrity-only); the previous
    /// one's series goes away.
    pub fn policy_in_force(&self, revision: Option<&str>) {
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&PolicyLabels {
                revision: revision.unwrap_or("integrity-only").to_owned(),
            })
            .set(1);
    }

    pub fn policy_reload(&self, outcome: ReloadOutcome) {
        self.policy_reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// The exposition: OpenMetrics when `openmetrics`, otherwise the
    /// classic Prometheus text format (what a plain `curl` gets).
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a label encoder, and a partial page is better than none.
        if let Err(e) = encoded {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Holds a gauge one higher while alive.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels_and_units() {
        let m = Metrics::new();
        m.request(RouteKind::Blob, MethodKind::Get, 200, Duration::from_millis(3));
        m.bytes_served("docker.io", 10);
        m.admission(AdmissionOutcome::WouldDeny, Some("catch-all"), AdmissionMode::Audit);
        m.policy_in_force(Some("abc"));
        m.policy_in_force(Some("def"));
        let text = m.render(false);
        assert!(text.contains(r#"portcullis_requests_total{route="blob",method="GET",status="2xx"} 1"#));
        assert!(text.contains(r#"portcullis_served_bytes_total{registry="docker.io"} 10"#));
        assert!(text.contains(r#"portcullis_admissions_total{verdict="would-deny",rule="catch-all",mode="audit"} 1"#));
        assert!(text.contains(r#"portcullis_policy_info{revision="def"} 1"#));
        assert!(!text.contains(r#"revision="abc""#), "the old revision's series is gone");
        assert!(text.contains("portcullis_request_duration_seconds_bucket"));
        let open = m.render(true);
        assert!(open.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    }

    /// The families of an exposition by `# TYPE` line: name → type.
    fn families(m: &Metrics) -> std::collections::BTreeMap<String, String> {
        m.render(true)
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect()
    }

    /// A registry with one series in every family (empty families are
    /// not exposed at all).
    fn every_family_recorded() -> Metrics {
        let m = Metrics::new();
        m.request(RouteKind::Manifest, MethodKind::Get, 200, Duration::ZERO);
        m.cache(RouteKind::Blob, CacheOutcome::Hit);
        m.bytes_served("r", 1);
        m.bytes_fetched("r", 1);
        m.upstream_request("r", UpstreamOutcome::TooManyRequests);
        m.admission(AdmissionOutcome::Deny, Some("r"), AdmissionMode::Enforce);
        m.integrity_failure(IntegrityKind::Blob);
        m.signature_checked(SignatureFormat::Bundle, Duration::ZERO);
        m.cold_download_refused();
        m.store_bytes_changed(1);
        m.store_available(1);
        m.store_evicted();
        m.store_write_failing(StoreWriteFailure::NoSpace);
        m.auth_failure("bad_password");
        m.connection_refused(ConnectionRefusal::Global);
        m.policy_in_force(None);
        m.policy_reload(ReloadOutcome::Refused);
        use crate::telemetry::watch_metrics::{DeliveryOutcome, WatchEventKind, WatchVerdict};
        m.watch.event("r", WatchEventKind::TagMoved, WatchVerdict::Denied);
        m.watch.round_succeeded("r", "app", 1);
        m.watch.failure("r", "app");
        m.watch.queue("soc", 1, false);
        m.watch.delivery("soc", DeliveryOutcome::Failed);
        m
    }

    /// Whether `series` is a sample name of one of `families`.
    fn exists(families: &std::collections::BTreeMap<String, String>, series: &str) -> bool {
        families.iter().any(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|s| series == format!("{family}{s}"))
        })
    }

    /// The Grafana dashboard and the alert rules in `deploy/` reference
    /// only series this build exposes (a renamed metric breaks this test,
    /// not an operator's alerting).
    #[test]
    fn deploy_files_name_only_metrics_that_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let files = [
            root.join("grafana").join("portcullis.json"),
            root.join("prometheus").join("alerts.yml"),
        ];
        let families = families(&every_family_recorded());
        let name = regex::Regex::new(r"portcullis_[a-z0-9_]+").expect("regex");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("deploy file");
            if file.extension().is_some_and(|e| e == "json") {
                serde_json::from_str::<serde_json::Value>(&text).expect("dashboard is JSON");
            } else {
                yaml_serde::from_str::<serde_json::Value>(&text).expect("alert rules are YAML");
            }
            let referenced: std::collections::BTreeSet<&str> = name.find_iter(&text).map(|m| m.as_str()).collect();
            assert!(referenced.len() > 5, "{} references metrics", file.display());
            for series in referenced {
                assert!(
                    exists(&families, series),
                    "{} references `{series}`, which Portcullis does not expose",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn gauge_guards_count_while_alive() {
        let m = Metrics::new();
        let a = m.download_started();
        let b = m.download_started();
        assert_eq!(m.downloads_in_flight.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.downloads_in_flight.get(), 0);
    }
}
