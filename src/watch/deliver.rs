//! Delivery to one webhook: the oldest queued event is rendered, signed and
//! POSTed; only a 2xx removes it from the queue. Anything else (refused
//! connection, timeout, 5xx, other statuses) is retried with exponential
//! backoff, so events arrive at least once and in queue order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
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
            match self.attempt(&client, &bytes).await {
                Ok(()) => {
                    self.metrics.watch.delivery(&self.sink.name, DeliveryOutcome::Delivered);
                    let q = self.queue.clone();
                    if let Err(e) = blocking(move || q.remove(seq)).await {
                        tracing::error!(sink = %self.sink.name, error = %e, "cannot remove a delivered watch event (it will be sent again)");
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(reason) => {
                    self.metrics.watch.delivery(&self.sink.name, DeliveryOutcome::Failed);
                    tracing::warn!(sink = %self.sink.name, queued = self.queue.len(), retry_in_ms = backoff.as_millis() as u64,
                        error = %reason, "watch event delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
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

    /// One POST of the queued event; `Err` names why it was not accepted.
    async fn attempt(&self, client: &HookClient, queued: &[u8]) -> Result<(), String> {
        let event: WatchEvent = match serde_json::from_slice(queued) {
            Ok(e) => e,
            // Only this process writes the queue: an unreadable entry is a
            // bug or disk damage, and is kept (and reported) rather than lost.
            Err(e) => return Err(format!("queued event unreadable: {e}")),
        };
        let (body, content_type) = render(self.sink.format, &event);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.sink.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secret) = &self.sink.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret.expose_secret().as_bytes(), &body));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
            .await
            .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {}", resp.status()))
        }
    }
}
