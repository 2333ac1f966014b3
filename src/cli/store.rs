//! `portcullis store stats|verify|gc`: the cache on disk, without a
//! running server. They may run beside a live server on the same data
//! directory (partial downloads are left alone); the server's own figures
//! catch up with a `gc` or a quarantine at its next start.

use std::path::PathBuf;

use crate::config::Config;
use crate::store::{Evicted, Store, StoreError, StoreOptions, UsageStats, VerifyReport};

/// What `store stats` reports.
#[derive(Debug, Clone)]
pub struct Stats {
    pub data_dir: PathBuf,
    /// Where the content lives: the data directory, or the bucket and prefix.
    pub location: String,
    pub max_bytes: Option<u64>,
    pub usage: UsageStats,
}

impl Stats {
    /// Blob requests served from the store over all blob requests that
    /// reached it (hits and downloads), if there were any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.usage.hits + self.usage.downloads;
        (total > 0).then(|| self.usage.hits as f64 / total as f64)
    }
}

fn open(config: &Config) -> Result<Store, StoreError> {
    Store::open_with(
        &config.data_dir,
        StoreOptions {
            max_bytes: config.storage.max_bytes,
            clean_tmp: false,
            s3: config.storage.s3.as_ref().map(crate::proxy::s3_options),
            eviction_grace: crate::proxy::eviction_grace(&config.storage),
            ..StoreOptions::default()
        },
    )
}

pub fn stats(config: &Config) -> Result<Stats, StoreError> {
    let store = open(config)?;
    Ok(Stats {
        data_dir: config.data_dir.clone(),
        location: store.describe(),
        max_bytes: store.max_bytes(),
        usage: store.usage.stats(),
    })
}

/// Re-hash everything; mismatches are quarantined.
pub fn verify(config: &Config) -> Result<VerifyReport, StoreError> {
    open(config)?.verify()
}

/// Evict down to `storage.maxBytes` now (nothing without a cap).
pub fn gc(config: &Config) -> Result<(Evicted, u64), StoreError> {
    let store = open(config)?;
    let evicted = store.gc()?;
    Ok((evicted, store.blob_bytes()))
}
