//! Pull-through orchestration: the only module that puts upstream, verify
//! and store together.
//!
//! Imports: `oci`, `config`, `telemetry`, `upstream`, `verify`, `store`.

mod admission;
mod assess;
mod blob;
mod caching;
mod coalesce;
mod error;
mod evidence;
mod manifest;
pub mod offline;
mod passthrough;
mod peers;
mod referrers;
mod tags;

use std::sync::Arc;

pub use admission::{Admitted, Gate};
pub use assess::{Assessment, Judgement};
pub use blob::{BlobBody, BlobServed, ByteRange, ByteSlice};
pub use error::Error;
pub use evidence::MaterialRefs;
pub use manifest::ManifestServed;
pub use offline::StoreSource;
pub use referrers::ReferrersServed;
pub use tags::{PageSize, TagsServed};

use crate::config::Config;
use crate::oci::{Digest, RepoName};
use crate::store::{Flights, Store};
use crate::telemetry::Metrics;
use crate::upstream::{Registries, Registry};
use crate::verify::VerifiedManifest;

/// Where a request goes: the upstream registry and the repository name
/// there, plus the name as the client wrote it (for responses).
#[derive(Clone, Debug)]
pub struct Target {
    pub registry: Arc<Registry>,
    /// The repository on the upstream (`library/` added for Docker Hub).
    pub repo: RepoName,
    /// The name in the client's request path (`ghcr.io/org/app`).
    pub client_name: String,
}

/// What makes two tag resolutions the same upstream request.
type TagHeadKey = (crate::oci::RegistryHost, RepoName, crate::oci::Tag, HeaderValueKey);

/// An `Accept` header value as a map key.
type HeaderValueKey = Vec<u8>;

/// The proxy: configuration, upstream clients, caches.
pub struct Proxy {
    /// This proxy, for background work that outlives a request's borrow.
    me: std::sync::Weak<Proxy>,
    config: Arc<Config>,
    registries: Registries,
    store: Arc<Store>,
    manifests: moka::future::Cache<Digest, VerifiedManifest>,
    /// Bounds concurrent upstream manifest loads (`manifest::manifest_load_slot`).
    manifest_loads: tokio::sync::Semaphore,
    /// Digests of admitted manifests already written to the store.
    persisted: moka::sync::Cache<Digest, ()>,
    flights: Flights<Error>,
    /// Concurrent resolutions of the same tag share one upstream HEAD.
    tag_heads: coalesce::Coalesce<TagHeadKey, Result<crate::upstream::ManifestHead, crate::upstream::Error>>,
    /// Blob downloads (and their commits) still running: a shutdown waits
    /// for them so that verified bytes already sent are also kept.
    downloads: tokio_util::task::TaskTracker,
    /// This replica's name in download leases (shared stores only).
    replica: Arc<str>,
    /// The other replicas, with `cluster.peers`: blobs stream from the one
    /// leading their download, tags resolve on the one leading them.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    gate: Gate,
    metrics: Arc<Metrics>,
    /// Whether the store takes what is downloaded (disk full, bucket
    /// refusing writes: reported once per condition).
    caching: Arc<caching::Caching>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(
        "no signature policy in {0}: give --policies DIR, or --integrity-only to serve anything that matches its digest"
    )]
    NoPolicy(std::path::PathBuf),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot open the audit log {path}: {source}")]
    AuditLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Proxy {
    pub fn new(config: Arc<Config>) -> Result<Arc<Proxy>, StartError> {
        let audit = configured_audit_sink(&config)?;
        Self::with_audit(config, audit)
    }

    /// Like [`Proxy::new`], with audit events going to `audit`.
    pub fn with_audit(
        config: Arc<Config>,
        audit: crate::telemetry::audit::AuditSink,
    ) -> Result<Arc<Proxy>, StartError> {
        Self::with_options(config, audit, ProxyOptions::default())
    }

    /// Like [`Proxy::with_audit`], with the content of some upstreams coming
    /// from local sources (`options.sources`; an `offline` upstream not
    /// named there is served from the store).
    pub fn with_options(
        config: Arc<Config>,
        audit: crate::telemetry::audit::AuditSink,
        options: ProxyOptions,
    ) -> Result<Arc<Proxy>, StartError> {
        let store_options = crate::store::StoreOptions {
            tag_memory_entries: config.proxy_limits.tag_memory_entries,
            max_bytes: config.storage.max_bytes,
            clean_tmp: options.clean_tmp,
            s3: config.storage.s3.as_ref().map(s3_options),
            eviction_grace: eviction_grace(&config.storage),
        };
        let store = Arc::new(match options.backend {
            Some(backend) => Store::with_backend(backend, &config.data_dir, &store_options)?,
            None => Store::open_with(&config.data_dir, store_options)?,
        });
        let metrics = Arc::new(Metrics::new());
        let registries = Registries::with_sources(&config, &metrics, |u| {
            if let Some(s) = options.sources.get(&u.host) {
                return Some(s.clone());
            }
            u.offline.then(|| {
                Arc::new(offline::StoreSource::new(u.host.clone(), store.clone()))
                    as crate::upstream::local::SharedSource
            })
        })?;
        let manifests = moka::future::Cache::builder()
            .max_capacity(config.manifest_memory_bytes)
            .weigher(|_k: &Digest, v: &VerifiedManifest| u32::try_from(v.bytes().len()).unwrap_or(u32::MAX))
            .build();
        let gate = Gate::new(load_policy(&config)?, store.verdicts.clone(), audit);
        if let Some(p) = gate.policy() {
            tracing::info!(
                revision = p.short_revision(),
                rules = p.rules.len(),
                authorities = p.authorities.len(),
                "policy loaded"
            );
            for w in &p.warnings {
                tracing::warn!("policy: {w}");
            }
        } else {
            tracing::warn!("INTEGRITY-ONLY mode: no signature policy; content is served when it matches its digests");
        }
        let revision = gate.policy().map(|p| p.revision.clone());
        metrics.policy_in_force(revision.as_deref());
        // Counted once, before any commit can race the walk; commits keep
        // the gauge current from here on.
        metrics.store_bytes_changed(i64::try_from(store.blob_bytes()).unwrap_or(i64::MAX));
        let limits = config.proxy_limits;
        let cluster = crate::cluster::Cluster::from_config(&config)?.map(Arc::new);
        if let Some(c) = &cluster {
            tracing::info!(me = %c.me(), peers = c.peers().len(), "cluster: blobs and tags are led by one replica each");
        }
        Ok(Arc::new_cyclic(|me| Proxy {
            me: me.clone(),
            config,
            registries,
            store,
            manifests,
            manifest_loads: tokio::sync::Semaphore::new(manifest::MAX_CONCURRENT_MANIFEST_LOADS),
            persisted: moka::sync::Cache::new(1_000_000),
            flights: Flights::new(limits.max_cold_downloads, limits.cold_download_wait),
            tag_heads: coalesce::Coalesce::new(),
            downloads: tokio_util::task::TaskTracker::new(),
            replica: replica_name(),
            cluster,
            gate,
            caching: Arc::new(caching::Caching::new(metrics.clone())),
            metrics,
        }))
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The client's repository `repo` on the allow-listed upstream `host`
    /// (`None`: not an upstream of this proxy): every command that names
    /// an image builds its [`Target`] here.
    pub fn target(&self, host: &str, repo: &RepoName) -> Option<Target> {
        let (upstream, registry) = self.upstream(host)?;
        Some(Target {
            registry,
            repo: upstream.upstream_repo(repo),
            client_name: repo.to_string(),
        })
    }

    /// The allow-listed upstream `host` and its client.
    fn upstream(&self, host: &str) -> Option<(&Arc<crate::config::Upstream>, Arc<Registry>)> {
        let upstream = self.config.upstream_by_host(host)?;
        Some((upstream, self.registries.get(&upstream.host)?.clone()))
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// The on-disk store (the watcher keeps its observations and queues there).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics this proxy records (rendered by the admin listener).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the store can take new content (readiness). A full disk or
    /// an exhausted quota is not a reason to stop taking pulls: they are
    /// served verified and uncached (`passthrough`), and the condition has
    /// its own metric (`portcullis_store_caching`). A read-only or failing
    /// disk, or a bucket that cannot be written, still fails here.
    pub async fn store_writable(&self) -> Result<(), Error> {
        use crate::telemetry::metrics::StoreWriteFailure::{NoSpace, Quota};
        let store = self.store.clone();
        match blocking(move || store.check_writable()).await {
            Err(Error::Store(e)) if matches!(caching::write_failure(&e), Some(NoSpace | Quota)) => Ok(()),
            checked => checked,
        }
    }

    /// Refresh the gauges read at scrape time (the filesystem's free space).
    pub async fn refresh_scrape_gauges(&self) {
        let store = self.store.clone();
        if let Ok(Some(available)) = blocking(move || store.available_bytes()).await {
            self.metrics.store_available(available);
        }
    }

    /// Wait until every running blob download has finished and committed
    /// (or failed), or `deadline` passes; `false` if some were still running.
    pub async fn finish_downloads(&self, deadline: std::time::Duration) -> bool {
        self.downloads.close();
        let finished = tokio::time::timeout(deadline, self.downloads.wait()).await.is_ok();
        self.flush_usage().await;
        finished
    }

    /// Write the store's access times every minute while the server runs
    /// (the caller aborts the task; shutdown writes them once more).
    pub async fn flush_usage_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::store::usage::FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_usage().await;
        }
    }

    /// Write the store's access times if they changed (off the workers).
    pub async fn flush_usage(&self) {
        let usage = self.store.usage.clone();
        if let Err(e) = blocking(move || usage.flush()).await {
            tracing::warn!(error = %e, "cannot write the store's access index");
        }
    }
}

/// A name unique to this process among replicas: host, pid and a random
/// part (a restarted replica is a new holder; its old leases expire).
fn replica_name() -> Arc<str> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Arc::from(format!(
        "{}-{}-{:08x}",
        host.trim(),
        std::process::id(),
        fastrand::u32(..)
    ))
}

/// `storage.s3.evictionGrace`, or the store's default.
pub fn eviction_grace(storage: &crate::config::Storage) -> std::time::Duration {
    storage
        .s3
        .as_ref()
        .and_then(|s3| s3.eviction_grace)
        .unwrap_or(crate::store::usage::DEFAULT_SHARED_GRACE)
}

/// `storage.s3` as the store opens it.
pub fn s3_options(s3: &crate::config::S3Storage) -> crate::store::S3Options {
    crate::store::S3Options {
        bucket: s3.bucket.clone(),
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        prefix: s3.prefix.clone(),
        allow_http: s3.allow_http,
    }
}

/// How to build a [`Proxy`] beyond its configuration.
#[derive(Debug)]
pub struct ProxyOptions {
    /// Discard partial downloads in `tmp/` at start (a server does; a
    /// command that may run beside a live server must not).
    pub clean_tmp: bool,
    /// Upstreams whose content comes from a local source (an archive being
    /// imported), by host.
    pub sources: std::collections::HashMap<crate::oci::RegistryHost, crate::upstream::local::SharedSource>,
    /// The store's backend, instead of the one the configuration names
    /// (tests: replicas sharing one in-memory bucket).
    pub backend: Option<Arc<dyn crate::store::backend::Backend>>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            clean_tmp: true,
            sources: std::collections::HashMap::new(),
            backend: None,
        }
    }
}

/// The policy named by the configuration, or `None` in integrity-only mode.
fn load_policy(config: &Config) -> Result<Option<(crate::policy::PolicySet, std::path::PathBuf)>, StartError> {
    match &config.admission {
        crate::config::Admission::IntegrityOnly => Ok(None),
        crate::config::Admission::Policies(dir) => match crate::policy::load_dir(dir) {
            Ok(p) => Ok(Some((p, dir.clone()))),
            Err(crate::policy::PolicyError::Empty(_)) => Err(StartError::NoPolicy(dir.clone())),
            Err(crate::policy::PolicyError::Read { ref path, ref source })
                if path == dir && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(StartError::NoPolicy(dir.clone()))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// For commands whose standard output is their report (`export`,
/// `import`): the configured audit log, else standard error.
pub fn command_audit_sink(config: &Config) -> Result<crate::telemetry::audit::AuditSink, StartError> {
    match &config.audit_log {
        None => Ok(crate::telemetry::audit::AuditSink::stderr()),
        Some(_) => configured_audit_sink(config),
    }
}

/// The audit sink the configuration names (`auditLog:`, else stdout).
pub fn configured_audit_sink(config: &Config) -> Result<crate::telemetry::audit::AuditSink, StartError> {
    match &config.audit_log {
        None => Ok(crate::telemetry::audit::AuditSink::stdout()),
        Some(path) => crate::telemetry::audit::AuditSink::file(path).map_err(|source| StartError::AuditLog {
            path: path.clone(),
            source,
        }),
    }
}

impl Proxy {
    /// The admission gate (policy, verdicts, grants).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Re-read the policy directory; on success swap it in, otherwise keep
    /// the current policy. Returns the new revision when it changed.
    pub fn reload_policy(&self) -> Result<Option<String>, crate::policy::PolicyError> {
        let (Some(dir), Some(current)) = (self.gate.policy_dir(), self.gate.policy()) else {
            return Ok(None);
        };
        let new = crate::policy::load_dir(dir)?;
        if new.revision == current.revision {
            return Ok(None);
        }
        for w in &new.warnings {
            tracing::warn!("policy: {w}");
        }
        let revision = new.revision.clone();
        self.gate.replace_policy(new);
        self.metrics.policy_in_force(Some(&revision));
        Ok(Some(revision))
    }
}

/// Run blocking store I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| Error::Store(Arc::new(e))),
        Err(e) => Err(Error::Internal(format!("blocking task failed: {e}"))),
    }
}
