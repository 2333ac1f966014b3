//! Policy reload: on SIGHUP, and when a file in the policy directory
//! changes (polled). A new policy is compiled completely before it replaces
//! the old one; an invalid one is refused and the old one stays.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::proxy::Proxy;

const POLL: Duration = Duration::from_secs(2);

/// Names, sizes and modification times of the directory's files.
fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Run until the process ends (the caller aborts the task on shutdown).
pub async fn watch(proxy: Arc<Proxy>) {
    let Some(dir) = proxy.gate().policy_dir().cloned() else {
        return;
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; policy reload on file change only");
            None
        }
    };
    let mut seen = fingerprint(&dir);
    loop {
        let signalled = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = tokio::time::sleep(POLL) => false,
        };
        let now = fingerprint(&dir);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        // Reading and compiling (trust roots included) is blocking work.
        let p = proxy.clone();
        match tokio::task::spawn_blocking(move || p.reload_policy()).await {
            Ok(Ok(Some(revision))) => tracing::info!(%revision, "policy reloaded"),
            Ok(Ok(None)) => tracing::debug!("policy unchanged"),
            Ok(Err(e)) => tracing::error!(error = %e, "new policy refused; the previous policy stays in force"),
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}
