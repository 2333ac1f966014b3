//! Talking to real registries (pulls in `fetch`, pushes in `push`): one [`Registry`] per allow-listed upstream,
//! with its own HTTP client (rustls), token cache, timeouts and retries.
//!
//! Imports: `oci`, `config`, `telemetry` (metrics), `verify` (the
//! `UnverifiedManifest` type only).

mod auth;
mod client;
mod destination;
mod error;
mod fetch;
pub mod local;
mod push;
mod realms;

use std::collections::HashMap;
use std::sync::Arc;

pub use client::{error_chain, tls_client_config};
pub use error::{Error, FailureClass};
pub use fetch::{BlobResponse, ManifestHead, TagsPage};
pub use push::{Mount, Upload};

use crate::config::{Config, Upstream, UpstreamPolicy};
use crate::oci::RegistryHost;
use crate::telemetry::Metrics;

/// A client for one upstream registry.
pub struct Registry {
    upstream: Arc<Upstream>,
    /// `None` for a local registry: it has no way to the network.
    http: Option<client::HttpClient>,
    auth: auth::Auth,
    policy: UpstreamPolicy,
    metrics: Arc<Metrics>,
    /// Set for an upstream served from local content (an `offline`
    /// upstream, an archive being imported): no request reaches the network.
    local: Option<local::SharedSource>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.upstream.host)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(upstream: Arc<Upstream>, policy: UpstreamPolicy, metrics: Arc<Metrics>) -> Result<Registry, Error> {
        let http = client::build(&upstream, &policy)?;
        Ok(Registry {
            auth: auth::Auth::new(&upstream),
            upstream,
            http: Some(http),
            policy,
            metrics,
            local: None,
        })
    }

    /// A registry named `upstream` whose content comes from `source` only
    /// (no HTTP client is built; nothing is ever sent).
    pub fn local(
        upstream: Arc<Upstream>,
        source: local::SharedSource,
        policy: UpstreamPolicy,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            auth: auth::Auth::new(&upstream),
            http: None,
            upstream,
            policy,
            metrics,
            local: Some(source),
        }
    }

    /// Whether this registry answers from local content only.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn host(&self) -> &RegistryHost {
        &self.upstream.host
    }
}

/// All upstream registries, by client-visible host.
#[derive(Debug, Clone)]
pub struct Registries {
    by_host: Arc<HashMap<RegistryHost, Arc<Registry>>>,
}

impl Registries {
    pub fn from_config(config: &Config, metrics: &Arc<Metrics>) -> Result<Registries, Error> {
        Self::with_sources(config, metrics, |_| None)
    }

    /// Like [`Registries::from_config`], with the content of the upstreams
    /// for which `source` gives a local source coming from it alone.
    pub fn with_sources(
        config: &Config,
        metrics: &Arc<Metrics>,
        source: impl Fn(&Upstream) -> Option<local::SharedSource>,
    ) -> Result<Registries, Error> {
        let mut by_host = HashMap::new();
        for u in &config.upstreams {
            let registry = match source(u) {
                Some(s) => Registry::local(u.clone(), s, config.upstream_policy, metrics.clone()),
                None => Registry::new(u.clone(), config.upstream_policy, metrics.clone())?,
            };
            by_host.insert(u.host.clone(), Arc::new(registry));
        }
        Ok(Registries {
            by_host: Arc::new(by_host),
        })
    }

    pub fn get(&self, host: &RegistryHost) -> Option<&Arc<Registry>> {
        self.by_host.get(host)
    }
}
