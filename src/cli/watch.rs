//! `portcullis watch [--once]`: the registry watch without the server.
//! `--once` judges every watched tag now and prints one line per tag (for
//! CI gates and cron); without it the watch runs until SIGTERM/Ctrl-C.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::proxy::{self, Proxy};
use crate::telemetry::audit::AuditSink;
use crate::watch::{self, TagReport, WatchError, Watcher};

/// Why the watch could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchCliError {
    #[error(transparent)]
    Start(#[from] proxy::StartError),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Exit status of `--once`: 0 every tag allowed, 1 some tag points to a
/// denied digest, 2 none denied but some could not be judged.
pub fn exit_code(reports: &[TagReport]) -> u8 {
    if reports.iter().any(TagReport::denied) {
        1
    } else if reports.iter().all(TagReport::allowed) {
        0
    } else {
        2
    }
}

/// Judge every watched tag once (audit events kept in memory, not printed).
pub async fn once(config: Config) -> Result<Vec<TagReport>, WatchCliError> {
    if config.watch.is_none() {
        return Err(WatchError::NotConfigured.into());
    }
    let proxy = Proxy::with_audit(Arc::new(config), AuditSink::memory())?;
    Ok(watch::once(&proxy).await?)
}

/// Run the watch until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), WatchCliError> {
    let proxy = Proxy::new(Arc::new(config))?;
    let watcher = Watcher::new(proxy)?.ok_or(WatchError::NotConfigured)?;
    tokio::select! {
        r = watcher.run() => r?,
        () = shutdown => tracing::info!("watch stopping; undelivered events stay queued"),
    }
    Ok(())
}
