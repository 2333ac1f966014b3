//! Pull-through orchestration: the only module that puts upstream, verify
//! and store together.
//!
//! Imports: `oci`, `config`, `telemetry`, `upstream`, `verify`, `store`.

mod blob;
mod error;
mod manifest;
mod referrers;
mod tags;

use std::sync::Arc;

pub use blob::{BlobBody, BlobServed, ByteRange};
pub use error::Error;
pub use manifest::ManifestServed;
pub use referrers::ReferrersServed;
pub use tags::TagsServed;

use crate::config::Config;
use crate::oci::{Digest, RepoName};
use crate::store::{Flights, Store};
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

/// The proxy: configuration, upstream clients, caches.
pub struct Proxy {
    config: Arc<Config>,
    registries: Registries,
    store: Arc<Store>,
    manifests: moka::future::Cache<Digest, VerifiedManifest>,
    flights: Flights<Error>,
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
}

impl Proxy {
    pub fn new(config: Arc<Config>) -> Result<Arc<Proxy>, StartError> {
        let store = Arc::new(Store::open(&config.data_dir)?);
        let registries = Registries::from_config(&config)?;
        let manifests = moka::future::Cache::builder()
            .max_capacity(config.manifest_memory_bytes)
            .weigher(|_k: &Digest, v: &VerifiedManifest| u32::try_from(v.bytes().len()).unwrap_or(u32::MAX))
            .build();
        Ok(Arc::new(Proxy {
            config,
            registries,
            store,
            manifests,
            flights: Flights::default(),
        }))
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn registries(&self) -> &Registries {
        &self.registries
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
