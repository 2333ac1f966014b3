//! `portcullis watch [--once | --rounds N]`: the registry watch without the
//! server. `--once` judges every watched tag now and prints one line per tag
//! (for CI gates and cron); `--rounds N` runs N stateful rounds and prints
//! their times (benchmarks, catching up); without either the watch runs
//! until SIGTERM/Ctrl-C.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::{runtime, shutdown_signal};
use crate::config::{Config, Overrides};
use crate::proxy::{self, Proxy};
use crate::telemetry::audit::AuditSink;
use crate::telemetry::{self, LogFormat};
use crate::watch::{self, TagReport, WatchError, Watcher};

/// Why the watch could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchCliError {
    #[error(transparent)]
    Start(#[from] proxy::StartError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot create a scratch directory {path}: {source}")]
    Scratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
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
/// Nothing is read from or written to the configured data directory (a
/// server may be using it): the run gets a scratch directory of its own.
pub async fn once(mut config: Config) -> Result<Vec<TagReport>, WatchCliError> {
    if config.watch.is_none() {
        return Err(WatchError::NotConfigured.into());
    }
    let scratch = Scratch::create()?;
    config.data_dir = scratch.0.clone();
    let proxy = Proxy::with_audit(Arc::new(config), AuditSink::memory())?;
    let reports = watch::once(&proxy).await?;
    drop(proxy);
    drop(scratch);
    Ok(reports)
}

/// A directory under the system's temporary directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn create() -> Result<Scratch, WatchCliError> {
        let dir = std::env::temp_dir().join(format!("portcullis-watch-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|source| WatchCliError::Scratch {
            path: dir.clone(),
            source,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--rounds N`: run `n` rounds back to back on the configured data
/// directory (observations read and written, events queued, not
/// delivered), reporting one line per round through `report`. Whether any
/// round had a check that failed.
pub async fn rounds(config: Config, n: u32, mut report: impl FnMut(String)) -> Result<bool, WatchCliError> {
    let proxy = Proxy::new(Arc::new(config))?;
    let watcher = Watcher::new(proxy)?.ok_or(WatchError::NotConfigured)?;
    let mut any_failed = false;
    for i in 1..=n {
        let started = std::time::Instant::now();
        let stats = watcher.round().await;
        any_failed |= stats.failed > 0;
        report(format!(
            "round {i}: {} tags checked in {:.3} s, {} failed",
            stats.tags,
            started.elapsed().as_secs_f64(),
            stats.failed
        ));
    }
    Ok(any_failed)
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

/// Load the configuration and watch: `--once` (`once`) prints one line per
/// tag and exits with [`exit_code`]; `--rounds N` (`rounds`) prints one line
/// per round (exit 2 if a check failed); otherwise the watch runs until a
/// shutdown signal. Exit 2 when the watch could not run.
pub fn command(path: Option<&Path>, overrides: &Overrides, once: bool, rounds: Option<u32>) -> ExitCode {
    telemetry::init(LogFormat::Compact);
    Config::load(path, overrides)
        .map_err(anyhow::Error::from)
        .and_then(|c| execute(c, once, rounds))
        .unwrap_or_else(|e| {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(2)
        })
}

/// `watch --once`: one line per tag and its exit status; `--rounds N`:
/// one line per round; otherwise run until a shutdown signal.
fn execute(config: Config, once: bool, rounds: Option<u32>) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async {
        if let Some(n) = rounds {
            let failed = self::rounds(config, n, |line| println!("{line}")).await?;
            return Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
        if !once {
            run(config, shutdown_signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let reports = self::once(config).await?;
        for r in &reports {
            println!("{}", r.line());
        }
        Ok(ExitCode::from(exit_code(&reports)))
    })
}
