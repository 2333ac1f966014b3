//! Whether the store takes what the proxy downloads: a full disk (`ENOSPC`,
//! `EDQUOT`), a read-only one (`EROFS`) or a bucket refusing writes is a
//! *condition*, not an error per request. Its first write failure is
//! logged (one WARN line) and counted
//! (`portcullis_store_write_failures_total{reason}`, `portcullis_store_caching`
//! drops to 0); failures while it lasts are only logged at debug. Pulls go on
//! meanwhile, verified and uncached (`passthrough`), and every download tries
//! to cache again: the first blob the store takes back ends the condition
//! with one INFO line, "caching resumed".
//!
//! A disk that still takes small blobs but not the one that failed is still
//! full: the condition records how many bytes the failed write needed and
//! ends only with a commit at least that large, or when the filesystem
//! reports that much free space after a commit. Otherwise every pull of an
//! image with a small config and a large layer would end and start it again.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{BackendError, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::StoreWriteFailure;

/// The storage condition of one proxy.
#[derive(Debug)]
pub(crate) struct Caching {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Caching,
    Failing {
        reason: StoreWriteFailure,
        /// The bytes of the write that failed, when known: a commit this
        /// large (or that much free space) shows the room is back.
        needed: Option<u64>,
    },
}

impl Caching {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Caching {
        Caching {
            state: Mutex::new(State::Caching),
            metrics,
        }
    }

    /// Whether the last write the store was asked for failed.
    #[cfg(test)]
    fn is_failing(&self) -> bool {
        matches!(*self.lock(), State::Failing { .. })
    }

    /// A write of `needed` bytes (when known) failed with `error`. Only the
    /// first failure of a condition is logged at WARN and counted.
    pub(crate) fn failed(&self, error: &StoreError, needed: Option<u64>) {
        let Some(reason) = write_failure(error) else {
            // Not the storage's doing (a proof for another digest is a bug
            // of the caller): reported where it happened.
            return;
        };
        // Room decides only for a full disk or quota; a refusing bucket or
        // a read-only disk is back once any write lands.
        let needed = needed.filter(|_| matches!(reason, StoreWriteFailure::NoSpace | StoreWriteFailure::Quota));
        let mut state = self.lock();
        match &mut *state {
            State::Caching => {
                *state = State::Failing { reason, needed };
                drop(state);
                self.metrics.store_write_failing(reason);
                tracing::warn!(reason = reason.as_str(), ?needed, %error,
                    "the store refuses writes: pulls are served verified but not cached until it takes a blob again");
            }
            State::Failing { needed: was, .. } => {
                // The largest write still waiting for room decides.
                *was = match (*was, needed) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                tracing::debug!(reason = reason.as_str(), %error, "store write failed (condition already reported)");
            }
        }
    }

    /// A best-effort record (a grant, a verdict) could not be written: part
    /// of the storage condition if the storage refused it, else a warning.
    pub(crate) fn best_effort(&self, error: &StoreError, what: &'static str) {
        if write_failure(error).is_some() {
            self.failed(error, None);
        } else {
            tracing::warn!(%error, "{what}");
        }
    }

    /// A blob of `len` bytes was committed. Ends the condition if that
    /// shows the room is back: no size was recorded (a bucket), the blob is
    /// at least as large as the write that failed, or `available()` (the
    /// filesystem's free bytes, asked only then) covers it.
    pub(crate) fn committed(&self, len: u64, available: impl FnOnce() -> Option<u64>) {
        let State::Failing { needed, .. } = *self.lock() else {
            return;
        };
        let room = match needed {
            None => true,
            Some(n) => len >= n || available().is_some_and(|free| free >= n),
        };
        if !room {
            return;
        }
        let mut state = self.lock();
        if matches!(*state, State::Failing { .. }) {
            *state = State::Caching;
            drop(state);
            self.metrics.store_caching_resumed();
            tracing::info!(bytes = len, "caching resumed: the store takes blobs again");
        }
    }

    /// The state holds no invariant a panic could break half-way.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl super::Proxy {
    /// A pull's write to the store failed: a storage condition (recorded;
    /// the pull goes on with what is in memory) or another error.
    pub(super) fn served_uncached(&self, e: super::Error, needed: Option<u64>) -> Result<(), super::Error> {
        match e {
            super::Error::Store(s) if write_failure(&s).is_some() => {
                self.caching.failed(&s, needed);
                Ok(())
            }
            other => Err(other),
        }
    }
}

/// Why `error` refused a write, as the metric's label; `None` for an error
/// that is not the storage's.
pub(crate) fn write_failure(error: &StoreError) -> Option<StoreWriteFailure> {
    Some(match error {
        StoreError::Io { source, .. } => io_failure(source),
        StoreError::WrongProof { .. } => return None,
        StoreError::Backend(b) => match &**b {
            BackendError::Read { source, .. } => io_failure(source),
            _ => StoreWriteFailure::Backend,
        },
    })
}

fn io_failure(e: &std::io::Error) -> StoreWriteFailure {
    match e.kind() {
        std::io::ErrorKind::StorageFull => StoreWriteFailure::NoSpace,
        std::io::ErrorKind::QuotaExceeded => StoreWriteFailure::Quota,
        std::io::ErrorKind::ReadOnlyFilesystem => StoreWriteFailure::ReadOnly,
        _ => StoreWriteFailure::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> StoreError {
        StoreError::Io {
            action: "allocate",
            path: "tmp/x.part".into(),
            source: std::io::Error::from_raw_os_error(28),
        }
    }

    fn failures(m: &Metrics, reason: &str) -> String {
        let series = format!("portcullis_store_write_failures_total{{reason=\"{reason}\"}} ");
        m.render(false)
            .lines()
            .find_map(|l| l.strip_prefix(&series).map(str::to_owned))
            .unwrap_or_else(|| "0".into())
    }

    fn caching_gauge(m: &Metrics) -> String {
        m.render(false)
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_store_caching ").map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn the_reason_comes_from_the_os_error() {
        assert_eq!(write_failure(&enospc()), Some(StoreWriteFailure::NoSpace));
        let erofs = StoreError::Io {
            action: "create",
            path: "tmp".into(),
            source: std::io::Error::from_raw_os_error(30),
        };
        assert_eq!(write_failure(&erofs), Some(StoreWriteFailure::ReadOnly));
        let edquot = StoreError::Io {
            action: "write",
            path: "tmp".into(),
            source: std::io::Error::from_raw_os_error(122),
        };
        assert_eq!(write_failure(&edquot), Some(StoreWriteFailure::Quota));
        let bucket: StoreError = BackendError::RuntimeGone.into();
        assert_eq!(write_failure(&bucket), Some(StoreWriteFailure::Backend));
    }

    /// Counted once per condition, however many writes fail in it; a small
    /// commit does not end a condition a larger write is waiting out, one
    /// as large does, and the next failure is a new condition.
    #[test]
    fn one_count_per_condition() {
        let metrics = Arc::new(Metrics::new());
        let caching = Caching::new(metrics.clone());
        assert_eq!(caching_gauge(&metrics), "1");
        for _ in 0..5 {
            caching.failed(&enospc(), Some(10 << 20));
        }
        assert_eq!(failures(&metrics, "no_space"), "1");
        assert_eq!(caching_gauge(&metrics), "0");

        caching.committed(500, || Some(1 << 20));
        assert!(caching.is_failing(), "a small blob fits; the large one still does not");
        caching.failed(&enospc(), Some(10 << 20));
        assert_eq!(failures(&metrics, "no_space"), "1");

        caching.committed(500, || Some(64 << 20));
        assert!(!caching.is_failing(), "the filesystem has the room again");
        assert_eq!(caching_gauge(&metrics), "1");

        caching.failed(&enospc(), None);
        assert_eq!(failures(&metrics, "no_space"), "2", "a new condition");
        caching.committed(1, || None);
        assert!(!caching.is_failing(), "no size recorded: any commit ends it");
    }
}
