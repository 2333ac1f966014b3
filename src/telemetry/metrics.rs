//! Counters exposed at `/metrics` in the Prometheus text format. Label
//! values come only from enums, never from request text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::CacheOutcome;

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    allow: AtomicU64,
    deny: AtomicU64,
    would_deny: AtomicU64,
    cache_hit: AtomicU64,
    cache_miss: AtomicU64,
    cache_joined: AtomicU64,
    cache_stale: AtomicU64,
    integrity_failures: AtomicU64,
    bytes_served: AtomicU64,
    connections_refused_global: AtomicU64,
    connections_refused_per_client: AtomicU64,
    cold_downloads_refused: AtomicU64,
}

/// Which cap refused a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// An admission outcome.
#[derive(Clone, Copy, Debug)]
pub enum AdmissionOutcome {
    Allow,
    Deny,
    /// Audit mode: served, but the policy would have denied it.
    WouldDeny,
}

impl Metrics {
    pub fn admission(&self, outcome: AdmissionOutcome) {
        let c = match outcome {
            AdmissionOutcome::Allow => &self.allow,
            AdmissionOutcome::Deny => &self.deny,
            AdmissionOutcome::WouldDeny => &self.would_deny,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache(&self, outcome: CacheOutcome) {
        let c = match outcome {
            CacheOutcome::None => return,
            CacheOutcome::Hit => &self.cache_hit,
            CacheOutcome::Miss => &self.cache_miss,
            CacheOutcome::Joined => &self.cache_joined,
            CacheOutcome::Stale => &self.cache_stale,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn integrity_failure(&self) {
        self.integrity_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes_served(&self, n: u64) {
        self.bytes_served.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connection_refused(&self, cap: ConnectionRefusal) {
        self.refusals(cap).fetch_add(1, Ordering::Relaxed);
    }

    fn refusals(&self, cap: ConnectionRefusal) -> &AtomicU64 {
        match cap {
            ConnectionRefusal::Global => &self.connections_refused_global,
            ConnectionRefusal::PerClient => &self.connections_refused_per_client,
        }
    }

    /// A blob request refused because every download slot stayed busy.
    pub fn cold_download_refused(&self) {
        self.cold_downloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP portcullis_admissions_total Admission decisions by verdict."
        );
        let _ = writeln!(out, "# TYPE portcullis_admissions_total counter");
        for (v, c) in [
            ("allow", &self.allow),
            ("deny", &self.deny),
            ("would-deny", &self.would_deny),
        ] {
            let _ = writeln!(out, "portcullis_admissions_total{{verdict=\"{v}\"}} {}", get(c));
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_requests_cache_total Manifest and blob requests by cache outcome."
        );
        let _ = writeln!(out, "# TYPE portcullis_requests_cache_total counter");
        for (o, c) in [
            (CacheOutcome::Hit, &self.cache_hit),
            (CacheOutcome::Miss, &self.cache_miss),
            (CacheOutcome::Joined, &self.cache_joined),
            (CacheOutcome::Stale, &self.cache_stale),
        ] {
            let _ = writeln!(
                out,
                "portcullis_requests_cache_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_integrity_failures_total Upstream content that did not match its digest."
        );
        let _ = writeln!(out, "# TYPE portcullis_integrity_failures_total counter");
        let _ = writeln!(
            out,
            "portcullis_integrity_failures_total {}",
            get(&self.integrity_failures)
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_bytes_served_total Response body bytes sent to clients."
        );
        let _ = writeln!(out, "# TYPE portcullis_bytes_served_total counter");
        let _ = writeln!(out, "portcullis_bytes_served_total {}", get(&self.bytes_served));
        let _ = writeln!(
            out,
            "# HELP portcullis_connections_refused_total Client connections closed at once by a connection cap."
        );
        let _ = writeln!(out, "# TYPE portcullis_connections_refused_total counter");
        for cap in [ConnectionRefusal::Global, ConnectionRefusal::PerClient] {
            let _ = writeln!(
                out,
                "portcullis_connections_refused_total{{cap=\"{}\"}} {}",
                cap.as_str(),
                get(self.refusals(cap))
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_cold_downloads_refused_total Blob requests answered 429 because every upstream download slot stayed busy."
        );
        let _ = writeln!(out, "# TYPE portcullis_cold_downloads_refused_total counter");
        let _ = writeln!(
            out,
            "portcullis_cold_downloads_refused_total {}",
            get(&self.cold_downloads_refused)
        );
        out
    }
}

/// The process's counters.
pub fn global() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}
