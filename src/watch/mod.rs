//! Registry watch for security operations: re-resolve the watched tags on a
//! schedule, judge what they point to through the proxy's own gate, and
//! deliver every change as an event that survives receiver outages and
//! restarts.
//!
//! ```text
//! every interval (+ up to 10% jitter), per watched repository (round.rs):
//!   HEAD tag (proxy's upstream client; 429 → Retry-After) ─► compare with
//!   store::watch observations (in the store's backend: shared by replicas)
//!   ─► Proxy::assess (fresh verdict, audited) ─► conditional write of the
//!   observations ─► if it won: events ─► audit log (JSON line) + metrics +
//!   every sink's queue (store::watch::EventQueue, local, fsynced); if
//!   another watcher wrote first: compare again with its observations
//! per sink (deliver.rs): oldest queued event ─► render (CloudEvents or
//!   OCSF) ─► HMAC header ─► POST; 2xx removes it, anything else is retried
//!   with backoff (at least once, in order)
//! ```
//!
//! Imports: `oci`, `config`, `telemetry`, `upstream`, `store`, `policy`
//! (`glob`, for repository globs), `proxy`.

mod catalog;
mod deliver;
pub mod event;
mod list;
pub mod render;
mod round;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

pub use event::WatchEvent;

use crate::config::{RepoSelection, TagSelection, WatchConfig};
use crate::policy::glob::Glob;
use crate::proxy::{Judgement, Proxy};
use crate::store::{EventQueue, StoreError};
use crate::telemetry::watch_metrics::WatchEventKind;

/// Why a watch step failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the configuration has no `watch:` section")]
    NotConfigured,
    #[error("watch setup: {0}")]
    Setup(String),
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::Error),
    #[error("the upstream answered HEAD without a Docker-Content-Digest")]
    NoDigest,
    #[error("the upstream sent an invalid tag list: {0}")]
    BadListing(String),
    #[error("{0}")]
    Proxy(#[from] crate::proxy::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// One sink's queue and the signal that wakes its deliverer.
struct SinkQueue {
    name: String,
    queue: Arc<EventQueue>,
    wake: Arc<tokio::sync::Notify>,
}

/// The watcher: configuration, the proxy it judges with, the sinks' queues.
pub struct Watcher {
    proxy: Arc<Proxy>,
    config: WatchConfig,
    sinks: Vec<SinkQueue>,
    /// Each target's compiled repository glob (`None`: a single name).
    globs: Vec<Option<Glob>>,
    health: Arc<WatchHealth>,
    /// Tags whose last check failed (one `watch.failed` per outage).
    failing: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("targets", &self.config.targets.len())
            .finish_non_exhaustive()
    }
}

/// Whether the watcher keeps up, for `/readyz`.
#[derive(Debug)]
pub struct WatchHealth {
    interval: Duration,
    queue_limit: usize,
    queues: Vec<(String, Arc<EventQueue>)>,
    /// When the last round ended (or the watcher started).
    last_round: Mutex<Instant>,
}

impl WatchHealth {
    /// What is behind, if anything: a round overdue by more than two
    /// intervals (plus a minute), or a sink's queue past its bound.
    pub fn behind(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let since = self.last_round.lock().map_or(Duration::ZERO, |t| t.elapsed());
        if since > self.interval * 3 + Duration::from_secs(60) {
            reasons.push(format!("no watch round finished for {}s", since.as_secs()));
        }
        for (name, q) in &self.queues {
            let depth = q.len();
            if depth > self.queue_limit {
                reasons.push(format!(
                    "watch sink `{name}` has {depth} undelivered events (limit {})",
                    self.queue_limit
                ));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    fn round_finished(&self) {
        if let Ok(mut t) = self.last_round.lock() {
            *t = Instant::now();
        }
    }
}

impl Watcher {
    /// The watcher of `proxy`'s configuration, or `None` without a `watch:`
    /// section. Opens (creating) every sink's queue.
    pub fn new(proxy: Arc<Proxy>) -> Result<Option<Arc<Watcher>>, WatchError> {
        let Some(config) = proxy.config().watch.clone() else {
            return Ok(None);
        };
        let mut sinks = Vec::new();
        for s in &config.sinks {
            sinks.push(SinkQueue {
                name: s.name.clone(),
                queue: Arc::new(proxy.store().watch.queue(&s.name)?),
                wake: Arc::new(tokio::sync::Notify::new()),
            });
        }
        let globs = compile_globs(&config)?;
        let health = Arc::new(WatchHealth {
            interval: config.interval,
            queue_limit: config.queue_limit,
            queues: sinks.iter().map(|s| (s.name.clone(), s.queue.clone())).collect(),
            last_round: Mutex::new(Instant::now()),
        });
        Ok(Some(Arc::new(Watcher {
            proxy,
            config,
            sinks,
            globs,
            health,
            failing: Mutex::new(HashSet::new()),
        })))
    }

    pub fn health(&self) -> Arc<WatchHealth> {
        self.health.clone()
    }

    /// Deliver to every sink and run a round every interval (with jitter),
    /// until the future is dropped (which stops the deliverers too).
    pub async fn run(self: Arc<Self>) -> Result<(), WatchError> {
        let client = deliver::client()?;
        let mut deliverers = tokio::task::JoinSet::new();
        let backoff_cap = self
            .config
            .interval
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        for (sink, q) in self.config.sinks.iter().zip(&self.sinks) {
            let d = deliver::Deliverer {
                sink: sink.clone(),
                queue: q.queue.clone(),
                wake: q.wake.clone(),
                metrics: self.proxy.metrics().clone(),
                queue_limit: self.config.queue_limit,
                backoff_cap,
            };
            deliverers.spawn(d.run(client.clone()));
        }
        tracing::info!(
            targets = self.config.targets.len(),
            sinks = self.sinks.len(),
            interval_ms = self.config.interval.as_millis() as u64,
            "registry watch started"
        );
        loop {
            self.round().await;
            let jitter = self.config.interval.mul_f64(fastrand::f64() * 0.1);
            tokio::time::sleep(self.config.interval + jitter).await;
        }
    }

    /// One round over every watched repository: how many tags it checked
    /// and how many of those could not be checked.
    pub async fn round(&self) -> RoundStats {
        let mut stats = RoundStats::default();
        // Every repository of every target, expanded first.
        let mut repositories = Vec::new();
        let mut target_ok = vec![true; self.config.targets.len()];
        for (i, (t, glob)) in self.config.targets.iter().zip(&self.globs).enumerate() {
            match round::expand(&self.proxy, t, glob.as_ref()).await {
                Ok(watched) => repositories.extend(watched.into_iter().map(|w| (i, w))),
                Err(e) => {
                    let (registry, label) = (t.upstream.host.to_string(), t.repository.label());
                    self.failed(&registry, label, label, "*", e).await;
                    stats.failed += 1;
                    target_ok[i] = false;
                }
            }
        }
        // Repositories are checked side by side, and `concurrency` permits
        // bound the tag checks of the whole round (each repository keeps
        // its own tags' event order).
        let permits = tokio::sync::Semaphore::new(self.config.concurrency);
        let permits = &permits;
        let checked: Vec<(usize, round::TargetStats)> = futures_util::stream::iter(repositories)
            .map(|(i, w)| async move { (i, self.check_target(&w, permits).await) })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        for (i, target) in checked {
            stats.tags += target.tags;
            stats.failed += target.failed;
            target_ok[i] &= target.failed == 0;
        }
        let now = i64::try_from(round::unix_now()).unwrap_or(i64::MAX);
        for (t, ok) in self.config.targets.iter().zip(target_ok) {
            if ok {
                let registry = t.upstream.host.to_string();
                self.proxy
                    .metrics()
                    .watch
                    .round_succeeded(&registry, t.repository.label(), now);
            }
        }
        self.health.round_finished();
        stats
    }

    /// Record `event` everywhere: audit log, metrics, and every sink's
    /// durable queue (waking its deliverer). A queue past its bound is
    /// reported, never trimmed.
    async fn emit(&self, kind: WatchEventKind, event: &WatchEvent) -> Result<(), WatchError> {
        let audit = event::AuditRecord { record: "watch", event };
        self.proxy.gate().audit_sink().emit_record(&audit);
        self.proxy
            .metrics()
            .watch
            .event(&event.registry, kind, event.verdict_label());
        tracing::info!(event = kind.as_str(), subject = %event.subject(), old = ?event.old_digest,
            new = ?event.new_digest, verdict = ?event.verdict, id = %event.id, "watch event");
        let bytes = serde_json::to_vec(event).map_err(|e| WatchError::Internal(e.to_string()))?;
        for s in &self.sinks {
            let (q, b) = (s.queue.clone(), bytes.clone());
            let depth = blocking(move || q.push(&b)).await?;
            let over = depth > self.config.queue_limit;
            self.proxy.metrics().watch.queue(&s.name, depth, over);
            if over {
                tracing::warn!(sink = %s.name, depth, limit = self.config.queue_limit,
                    "watch event queue past its limit (nothing is dropped; is the receiver down?)");
            }
            s.wake.notify_one();
        }
        Ok(())
    }

    fn lock_failing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a round did (`portcullis watch --rounds` prints it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Tags checked (or attempted).
    pub tags: usize,
    /// Tags, tag lists or catalogs that could not be checked.
    pub failed: usize,
}

/// One line of `portcullis watch --once`.
#[derive(Debug)]
pub struct TagReport {
    /// `registry/repository:tag`.
    pub subject: String,
    pub outcome: Outcome,
}

/// What `--once` found for one tag.
#[derive(Debug)]
pub enum Outcome {
    Judged {
        digest: crate::oci::Digest,
        assessment: crate::proxy::Assessment,
    },
    Missing,
    Failed(String),
}

impl TagReport {
    /// `ALLOWED|DENIED|UNDECIDED|MISSING|FAILED subject [digest rule=… missing=…]`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Judged { digest, assessment: a } => {
                let word = a.judgement.as_str().to_uppercase();
                let audit = if a.audit_only && a.judgement == Judgement::Denied {
                    " (audit only)"
                } else {
                    ""
                };
                format!(
                    "{word}{audit} {} {digest} rule={} missing=[{}] {}",
                    self.subject,
                    a.rule.as_deref().unwrap_or("-"),
                    a.missing.join(","),
                    a.reasons.join("; ")
                )
                .trim_end()
                .to_owned()
            }
            Outcome::Missing => format!("MISSING {}", self.subject),
            Outcome::Failed(e) => format!("FAILED {} {e}", self.subject),
        }
    }

    pub fn denied(&self) -> bool {
        matches!(&self.outcome, Outcome::Judged { assessment, .. } if assessment.judgement == Judgement::Denied)
    }

    pub fn allowed(&self) -> bool {
        matches!(&self.outcome, Outcome::Judged { assessment, .. } if assessment.judgement == Judgement::Allowed)
    }
}

/// `portcullis watch --once`: judge every watched tag now (no stored state
/// read or written, no events): one report per tag.
pub async fn once(proxy: &Proxy) -> Result<Vec<TagReport>, WatchError> {
    let config = proxy.config().watch.as_ref().ok_or(WatchError::NotConfigured)?;
    let globs = compile_globs(config)?;
    let mut reports = Vec::new();
    for (t, glob) in config.targets.iter().zip(&globs) {
        match round::expand(proxy, t, glob.as_ref()).await {
            Ok(watched) => {
                for w in &watched {
                    reports.extend(once_repository(proxy, w).await?);
                }
            }
            Err(e) => reports.push(TagReport {
                subject: format!("{}/{}:*", t.upstream.host, t.repository.label()),
                outcome: Outcome::Failed(format!("catalog: {e}")),
            }),
        }
    }
    Ok(reports)
}

/// Every repository glob compiled (policy glob syntax), by target.
fn compile_globs(config: &WatchConfig) -> Result<Vec<Option<Glob>>, WatchError> {
    config
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| match &t.repository {
            RepoSelection::Name(_) => Ok(None),
            RepoSelection::Glob { pattern, .. } => Glob::path(pattern)
                .map(Some)
                .map_err(|e| WatchError::Setup(format!("watch.targets[{i}].repository: {e}"))),
        })
        .collect()
}

/// `--once` for one repository.
async fn once_repository(proxy: &Proxy, t: &round::Watched) -> Result<Vec<TagReport>, WatchError> {
    let mut reports = Vec::new();
    {
        let target = proxy
            .target(t.upstream.host.as_str(), &t.repository)
            .ok_or_else(|| WatchError::Internal(format!("no client for {}", t.upstream.host)))?;
        let tags = match &t.tags {
            TagSelection::Listed(tags) => tags.clone(),
            TagSelection::All { max } => match list::all_tags(&target, *max).await {
                Ok(tags) => tags,
                Err(e) => {
                    let subject = format!("{}/{}:*", t.upstream.host, t.repository);
                    reports.push(TagReport {
                        subject,
                        outcome: Outcome::Failed(format!("tag list: {e}")),
                    });
                    return Ok(reports);
                }
            },
        };
        // As in a round: `concurrency` tags at once, reported in tag order.
        let target = &target;
        let judged = tags.into_iter().map(|tag| async move {
            let subject = format!("{}/{}:{tag}", t.upstream.host, t.repository);
            let outcome = match round::resolve(target, &tag).await {
                Ok(None) => Outcome::Missing,
                Ok(Some(digest)) => match proxy.assess(target, &tag, &digest).await {
                    Ok(assessment) => Outcome::Judged { digest, assessment },
                    Err(e) => Outcome::Failed(e.to_string()),
                },
                Err(e) => Outcome::Failed(e.to_string()),
            };
            TagReport { subject, outcome }
        });
        let concurrency = proxy.config().watch.as_ref().map_or(1, |w| w.concurrency);
        let mut judged = futures_util::stream::iter(judged).buffered(concurrency);
        while let Some(report) = judged.next().await {
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Run blocking store I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WatchError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(WatchError::Store),
        Err(e) => Err(WatchError::Internal(format!("blocking task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(dir: &std::path::Path, limit: usize) -> (WatchHealth, Arc<EventQueue>) {
        let store = crate::store::Store::open(dir).expect("store");
        let queue = Arc::new(store.watch.queue("soc").expect("queue"));
        let health = WatchHealth {
            interval: Duration::from_secs(1),
            queue_limit: limit,
            queues: vec![("soc".to_owned(), queue.clone())],
            last_round: Mutex::new(Instant::now()),
        };
        (health, queue)
    }

    #[test]
    fn behind_names_a_queue_past_its_limit_and_a_stalled_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, q) = health(dir.path(), 1);
        assert_eq!(h.behind(), None);
        q.push(b"{}").expect("push");
        assert_eq!(h.behind(), None, "at the limit is not past it");
        q.push(b"{}").expect("push");
        assert_eq!(
            h.behind().as_deref(),
            Some("watch sink `soc` has 2 undelivered events (limit 1)")
        );
        let (h, _) = health(dir.path(), 10);
        if let Some(past) = Instant::now().checked_sub(Duration::from_secs(64))
            && let Ok(mut t) = h.last_round.lock()
        {
            *t = past;
        }
        assert!(
            h.behind()
                .is_some_and(|b| b.starts_with("no watch round finished for 6")),
            "{:?}",
            h.behind()
        );
    }
}
