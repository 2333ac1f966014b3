//! The admin listener (`admin.listen`, default `127.0.0.1:5001`): metrics
//! and probes, apart from the registry port so that scrapes and probes never
//! queue behind pulls and registry clients never see metrics.
//!
//! - `GET /healthz`: the process is alive (always `200` while it serves).
//! - `GET /readyz`: `200` when the store is writable, a policy is loaded (or
//!   integrity-only was asked for), the server is not draining and the
//!   registry watch (if configured) keeps up; `503`
//!   naming what is not ready otherwise. Turns false the moment SIGTERM
//!   arrives, so a load balancer stops sending new pulls before the
//!   listener closes.
//! - `GET /metrics`: OpenMetrics when the scraper asks for it (`Accept`),
//!   otherwise the classic Prometheus text format.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::body::{ResponseBody, empty, full};
use crate::config::Admission;
use crate::proxy::Proxy;
use crate::telemetry::metrics::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use crate::watch::WatchHealth;

/// Probes and scrapes are small; a client that sends nothing is dropped.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the server is draining (set once, on the shutdown signal).
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// The bound admin listener.
pub struct AdminListener {
    listener: TcpListener,
}

impl AdminListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<AdminListener> {
        Ok(AdminListener {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serve until the task is aborted (after the registry port drained).
    pub async fn run(self, proxy: Arc<Proxy>, readiness: Arc<Readiness>, watch: Option<Arc<WatchHealth>>) {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEADER_TIMEOUT);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = Probes {
                proxy: proxy.clone(),
                readiness: readiness.clone(),
                watch: watch.clone(),
            };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
            });
        }
    }
}

/// What the probes look at.
#[derive(Clone)]
struct Probes {
    proxy: Arc<Proxy>,
    readiness: Arc<Readiness>,
    watch: Option<Arc<WatchHealth>>,
}

async fn respond<B>(state: &Probes, req: &Request<B>) -> Response<ResponseBody> {
    let proxy = &state.proxy;
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into(), head);
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), head),
        "/readyz" => match not_ready(state).await {
            None => text(StatusCode::OK, "ready\n".into(), head),
            Some(reasons) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", reasons.join("; ")),
                head,
            ),
        },
        "/metrics" => {
            proxy.refresh_scrape_gauges().await;
            metrics(proxy, req, head)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /healthz /readyz /metrics\n".into(),
            head,
        ),
    }
}

/// What keeps the server from taking new pulls, if anything.
async fn not_ready(state: &Probes) -> Option<Vec<String>> {
    let (proxy, readiness) = (&state.proxy, &state.readiness);
    let mut reasons = Vec::new();
    if let Some(behind) = state.watch.as_ref().and_then(|w| w.behind()) {
        reasons.push(behind);
    }
    if readiness.is_draining() {
        reasons.push("draining (shutting down)".to_owned());
    }
    let policy_expected = matches!(proxy.config().admission, Admission::Policies(_));
    if policy_expected && proxy.gate().policy().is_none() {
        reasons.push("no signature policy loaded".to_owned());
    }
    if let Err(e) = proxy.store_writable().await {
        reasons.push(format!("store not writable: {e}"));
    }
    (!reasons.is_empty()).then_some(reasons)
}

fn metrics<B>(proxy: &Proxy, req: &Request<B>, head: bool) -> Response<ResponseBody> {
    let openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = proxy.metrics().render(openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        PROMETHEUS_CONTENT_TYPE
    };
    let mut resp = text(StatusCode::OK, body, head);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: String, head: bool) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(if head { empty() } else { full(body) });
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}
