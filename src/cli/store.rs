//! `portcullis store stats|verify|gc`: the cache on disk, without a
//! running server. They may run beside a live server on the same data
//! directory (partial downloads are left alone); the server's own figures
//! catch up with a `gc` or a quarantine at its next start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, Overrides};
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

/// Which `portcullis store` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Size, counts, pins, hit ratio.
    Stats,
    /// Re-hash everything; quarantine mismatches (exit 1 if any).
    Verify,
    /// Evict down to `storage.maxBytes` now.
    Gc,
}

/// Load the configuration and run `action` on its store, printing the
/// result (exit 1: failed, or `verify` found mismatches).
pub fn command(path: Option<&Path>, overrides: &Overrides, action: Action) -> ExitCode {
    match Config::load(path, overrides).map_err(anyhow::Error::from) {
        Ok(config) => execute(action, &config),
        Err(e) => super::report(Err(e)),
    }
}

fn execute(action: Action, config: &Config) -> ExitCode {
    let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
    let outcome = match action {
        Action::Stats => stats(config).map(|s| {
            println!("store: {}", s.location);
            println!("blobs: {} ({})", s.usage.blobs, size(s.usage.bytes));
            match s.max_bytes {
                Some(cap) => println!(
                    "cap: {} ({:.1}% used)",
                    size(cap),
                    s.usage.bytes as f64 * 100.0 / cap.max(1) as f64
                ),
                None => println!("cap: none"),
            }
            println!("pinned: {} ({})", s.usage.pinned, size(s.usage.pinned_bytes));
            match s.hit_ratio() {
                Some(r) => println!(
                    "hit ratio: {:.1}% ({} served from the store, {} downloaded)",
                    r * 100.0,
                    s.usage.hits,
                    s.usage.downloads
                ),
                None => println!("hit ratio: - (nothing served yet)"),
            }
            ExitCode::SUCCESS
        }),
        Action::Verify => verify(config).map(|r| {
            println!("checked: {} files", r.checked);
            for path in &r.quarantined {
                println!("MISMATCH: moved to {}", path.display());
            }
            if r.quarantined.is_empty() {
                println!("ok: every file hashes to its digest");
                ExitCode::SUCCESS
            } else {
                println!("{} files did not match their digest", r.quarantined.len());
                ExitCode::from(1)
            }
        }),
        Action::Gc => gc(config).map(|(evicted, left)| {
            println!(
                "evicted: {} blobs ({}); held now: {}",
                evicted.blobs.len(),
                size(evicted.bytes),
                size(left)
            );
            ExitCode::SUCCESS
        }),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("portcullis: {e}");
        ExitCode::FAILURE
    })
}
