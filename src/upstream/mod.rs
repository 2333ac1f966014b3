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
mod push;
mod realms;

use std::collections::HashMap;
use std::sync::Arc;

pub use error::{Error, FailureClass};
pub use fetch::{BlobResponse, ManifestHead, TagsPage};
pub use push::{Mount, Upload};

use crate::config::{Config, Upstream, UpstreamPolicy};
use crate::oci::RegistryHost;
use crate::telemetry::Metrics;

/// A client for one upstream registry.
pub struct Registry {
    upstream: Arc<Upstream>,
    http: client::HttpClient,
    auth: auth::Auth,
    policy: UpstreamPolicy,
    metrics: Arc<Metrics>,
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
            http,
            policy,
            metrics,
        })
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
        let mut by_host = HashMap::new();
        for u in &config.upstreams {
            by_host.insert(
                u.host.clone(),
                Arc::new(Registry::new(u.clone(), config.upstream_policy, metrics.clone())?),
            );
        }
        Ok(Registries {
            by_host: Arc::new(by_host),
        })
    }

    pub fn get(&self, host: &RegistryHost) -> Option<&Arc<Registry>> {
        self.by_host.get(host)
    }
}
