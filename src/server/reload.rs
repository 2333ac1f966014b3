//! Policy reload: on SIGHUP, and when a file the policy depends on changes
//! (polled). A new policy is compiled completely before it replaces the old
//! one; an invalid one is refused and the old one stays.
//!
//! Watched: the policy directory's files, and every file the policy in force
//! hashes into its revision (`PolicySet::sources`: keys and trusted roots,
//! also in subdirectories or outside the directory). Changes are detected by
//! content hash, not size and modification time, so a key replaced in place
//! by another of the same size within the clock's granularity still revokes
//! the old key at the next poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::oci::{Algorithm, Digest};
use crate::proxy::Proxy;
use crate::telemetry::metrics::ReloadOutcome;

const POLL: Duration = Duration::from_secs(2);

/// What changes between two polls when a reload may be needed.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    /// The directory's regular files (a new, removed or edited policy
    /// document, including one that failed to compile and so is not yet
    /// among the sources) by name and content hash.
    directory: Vec<(String, Option<Digest>)>,
    /// The policy in force's files by path and content hash (`None`:
    /// unreadable, e.g. removed).
    sources: Vec<(PathBuf, Option<Digest>)>,
}

fn content_hash(path: &Path) -> Option<Digest> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Digest::of(Algorithm::Sha256, &bytes))
}

/// Blocking: reads every watched file (small: documents, PEM keys, trusted
/// roots).
fn fingerprint(dir: &Path, sources: &[PathBuf]) -> Fingerprint {
    let mut directory: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), content_hash(&e.path())))
                .collect()
        })
        .unwrap_or_default();
    directory.sort();
    let sources = sources.iter().map(|p| (p.clone(), content_hash(p))).collect();
    Fingerprint { directory, sources }
}

/// The files the policy in force depends on.
fn sources_in_force(proxy: &Proxy) -> Vec<PathBuf> {
    proxy
        .gate()
        .policy()
        .map(|p| p.sources().map(Path::to_path_buf).collect())
        .unwrap_or_default()
}

/// Fingerprint off the async workers.
async fn observe(proxy: &Arc<Proxy>, dir: &Path) -> Option<Fingerprint> {
    let sources = sources_in_force(proxy);
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || fingerprint(&dir, &sources))
        .await
        .ok()
}

/// Run until the process ends (the caller aborts the task on shutdown).
pub async fn watch(proxy: Arc<Proxy>) {
    // The handler is installed in every mode: SIGHUP's default action ends
    // the process, and logrotate-style tooling sends it to anything.
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; policy reload on file change only");
            None
        }
    };
    let Some(dir) = proxy.gate().policy_dir().cloned() else {
        if let Some(hup) = hup.as_mut() {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: no signature policy to reload (integrity-only mode)");
            }
        }
        return;
    };
    let mut seen = observe(&proxy, &dir).await;
    loop {
        let signalled = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = tokio::time::sleep(POLL) => false,
        };
        let now = observe(&proxy, &dir).await;
        if !signalled && now == seen {
            continue;
        }
        // Taken before the reload reads the files, so that a change made
        // while it compiles is seen at the next poll. When the new policy
        // names other files, the next fingerprint differs by its source
        // list, and the extra reload finds the revision unchanged.
        seen = now;
        // Reading and compiling (trust roots included) is blocking work.
        let p = proxy.clone();
        match tokio::task::spawn_blocking(move || p.reload_policy()).await {
            Ok(Ok(Some(revision))) => {
                proxy.metrics().policy_reload(ReloadOutcome::Applied);
                tracing::info!(%revision, "policy reloaded");
            }
            Ok(Ok(None)) => tracing::debug!("policy unchanged"),
            Ok(Err(e)) => {
                proxy.metrics().policy_reload(ReloadOutcome::Refused);
                tracing::error!(error = %e, "new policy refused; the previous policy stays in force");
            }
            Err(e) => {
                proxy.metrics().policy_reload(ReloadOutcome::Refused);
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_with_the_same_size_and_mtime_changes_the_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let key = outside.path().join("nested").join("key.pub");
        std::fs::create_dir(outside.path().join("nested")).expect("mkdir");
        std::fs::write(dir.path().join("policy.yaml"), "a").expect("write");
        std::fs::write(&key, "first key").expect("write");
        let sources = vec![dir.path().join("policy.yaml"), key.clone()];
        let before = fingerprint(dir.path(), &sources);
        assert_eq!(
            before,
            fingerprint(dir.path(), &sources),
            "stable while nothing changes"
        );

        let mtime = std::fs::metadata(&key).and_then(|m| m.modified()).expect("mtime");
        std::fs::write(&key, "other key").expect("rewrite");
        std::fs::File::options()
            .write(true)
            .open(&key)
            .and_then(|f| f.set_modified(mtime))
            .expect("restore mtime");
        let after = fingerprint(dir.path(), &sources);
        assert_ne!(before, after, "same size and mtime, other content");
        assert_eq!(before.directory, after.directory, "the key is outside the directory");

        std::fs::remove_file(&key).expect("remove");
        assert_eq!(fingerprint(dir.path(), &sources).sources[1], (key, None));
    }
}
