//! One upstream request for many concurrent asks of the same thing: the
//! first caller starts it, callers that arrive while it runs await the same
//! answer, and the entry is gone once it finished, so a later ask goes
//! upstream again (tags are resolved per request, never cached here).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};

/// Running requests by key.
pub(super) struct Coalesce<K, V: Clone> {
    running: Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
}

impl<K, V: Clone> std::fmt::Debug for Coalesce<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalesce")
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Coalesce<K, V> {
    pub fn new() -> Self {
        Coalesce {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The answer of the request running for `key`, or of `start()` run
    /// now. If every caller goes away, the next caller resumes the same
    /// request (a `Shared` future is polled by whoever holds it).
    pub async fn run<F>(&self, key: K, start: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            running
                .entry(key.clone())
                .or_insert_with(|| start().boxed().shared())
                .clone()
        };
        let value = shared.clone().await;
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.get(&key).is_some_and(|s| s.ptr_eq(&shared)) {
            running.remove(&key);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_asks_share_one_run_and_later_asks_run_again() {
        let c = Arc::new(Coalesce::<&'static str, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let ask = |c: Arc<Coalesce<&'static str, usize>>, runs: Arc<AtomicUsize>| async move {
            c.run("tag", || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await
        };
        let answers = futures_util::future::join_all((0..8).map(|_| tokio::spawn(ask(c.clone(), runs.clone())))).await;
        assert!(answers.into_iter().all(|a| a.ok() == Some(1)), "one run, one answer");
        assert_eq!(ask(c.clone(), runs.clone()).await, 2, "a later ask runs again");
    }
}
