//! Delivery to one webhook: the oldest queued event is rendered, signed and
//! POSTed; only a 2xx removes it from the queue. Anything else (refused
//! connection, timeout, 5xx, other statuses) is retried with exponential
//! backoff (or the receiver's longer `Retry-After`, within the cap), so
//! events arrive at least once and in queue order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::event::WatchEvent;
use super::render::{SIGNATURE_HEADER, render, signature};
use super::{WatchError, blocking};
use crate::config::WebhookSink;
use crate::store::EventQueue;
use crate::telemetry::Metrics;
use crate::telemetry::watch_metrics::DeliveryOutcome;

type HookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Time one delivery may take (connect, send, response headers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay; doubled per failure up to the sink's cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// An HTTP(S) client for webhooks (webpki roots, HTTP/1.1).
pub fn client() -> Result<HookClient, WatchError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WatchError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// One sink's delivery state.
pub struct Deliverer {
    pub sink: WebhookSink,
    pub queue: Arc<EventQueue>,
    pub wake: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    pub queue_limit: usize,
    pub backoff_cap: Duration,
}

impl Deliverer {
    /// Deliver forever (until the task is aborted).
    pub async fn run(self, client: HookClient) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.report_depth();
            let front = match blocking({
                let q = self.queue.clone();
                move || q.front()
            })
            .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(sink = %self.sink.name, error = %e, "cannot read the watch event queue");
                    tokio::time::sleep(self.backoff_cap).await;
                    continue;
                }
            };
            let Some((seq, bytes)) = front else {
                self.wake.notified().await;
                continue;
            };
            let event: WatchEvent = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    self.set_aside(seq, &e.to_string()).await;
                    continue;
                }
            };
            match self.attempt(&client, &event).await {
                Ok(()) => {
                    self.metrics.watch.delivery(&self.sink.name, DeliveryOutcome::Delivered);
                    let q = self.queue.clone();
                    if let Err(e) = blocking(move || q.remove(seq)).await {
                        tracing::error!(sink = %self.sink.name, error = %e, "cannot remove a delivered watch event (it will be sent again)");
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(Refused { reason, retry_after }) => {
                    self.metrics.watch.delivery(&self.sink.name, DeliveryOutcome::Failed);
                    // The receiver's `Retry-After` when longer, within the cap.
                    let wait = retry_after.map_or(backoff, |r| r.max(backoff)).min(self.backoff_cap);
                    tracing::warn!(sink = %self.sink.name, queued = self.queue.len(), retry_in_ms = wait.as_millis() as u64,
                        error = %reason, "watch event delivery failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.backoff_cap);
                }
            }
        }
    }

    fn report_depth(&self) {
        let depth = self.queue.len();
        self.metrics
            .watch
            .queue(&self.sink.name, depth, depth > self.queue_limit);
    }

    /// Only this process writes the queue: an unreadable entry is disk
    /// damage or a bug. It is set aside (kept, and logged as an error) so
    /// that it does not hold up the events behind it.
    async fn set_aside(&self, seq: u64, error: &str) {
        let q = self.queue.clone();
        match blocking(move || q.quarantine(seq)).await {
            Ok(path) => tracing::error!(sink = %self.sink.name, path = %path.display(), error,
                "queued watch event unreadable; set aside, not delivered"),
            Err(e) => {
                tracing::error!(sink = %self.sink.name, error = %e, "cannot set an unreadable watch event aside");
                tokio::time::sleep(self.backoff_cap).await;
            }
        }
    }

    /// One POST of the queued event.
    async fn attempt(&self, client: &HookClient, event: &WatchEvent) -> Result<(), Refused> {
        let refused = |reason: String| Refused {
            reason,
            retry_after: None,
        };
        let (body, content_type) = render(self.sink.format, event);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.sink.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secret) = &self.sink.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret.expose_secret().as_bytes(), &body));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| refused(format!("request: {e}")))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
            .await
            .map_err(|_| refused(format!("no response within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| refused(format!("request failed: {e}")))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Refused {
            reason: format!("receiver answered {}", resp.status()),
            retry_after,
        })
    }
}

/// Why a delivery was not accepted, and when the receiver asked to be
/// tried again (`Retry-After` in seconds).
struct Refused {
    reason: String,
    retry_after: Option<Duration>,
}
