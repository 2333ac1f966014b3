//! Reloading credentials and certificates without a restart: on SIGHUP,
//! and when a watched file's content changes (polled; the reloadable
//! compares content hashes itself). A reload that fails keeps what is in
//! force; the failure is logged once per distinct error.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;

const POLL: Duration = Duration::from_secs(2);

/// Something re-read from files. `reload` is blocking (small files).
pub(super) trait Reloadable: Send + Sync + 'static {
    /// What it is, for the log (`TLS certificate`, `credentials`).
    fn what(&self) -> &'static str;
    /// Re-read if the files changed (or `force`); `Ok(true)`: replaced.
    fn reload(&self, force: bool) -> Result<bool, String>;
}

impl Reloadable for Auth {
    fn what(&self) -> &'static str {
        "client credentials"
    }

    fn reload(&self, force: bool) -> Result<bool, String> {
        Auth::reload(self, force).map_err(|e| e.to_string())
    }
}

/// Aborts its task when dropped (the server's watchers end with `run`).
#[derive(Debug)]
pub(super) struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn spawn(item: Arc<dyn Reloadable>) -> Watcher {
    Watcher(tokio::spawn(watch(item)))
}

async fn watch(item: Arc<dyn Reloadable>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_error: Option<String> = None;
    loop {
        let force = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = tokio::time::sleep(POLL) => false,
        };
        let it = item.clone();
        let outcome = tokio::task::spawn_blocking(move || it.reload(force))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match outcome {
            Ok(true) => {
                last_error = None;
                tracing::info!(what = item.what(), "reloaded");
            }
            Ok(false) => {}
            Err(e) if last_error.as_ref() != Some(&e) => {
                tracing::error!(what = item.what(), error = %e, "reload refused; the previous one stays in force");
                last_error = Some(e);
            }
            Err(_) => {}
        }
    }
}
