//! Accepting connections: TCP, optional TLS (rustls, ALPN h2 + http/1.1),
//! HTTP/1.1 and HTTP/2 via hyper-util's auto builder, graceful shutdown.
//!
//! Every connection is bounded (`server:` in the configuration): a cap on
//! open connections in total and per client address (over it, the
//! connection is closed at once), a deadline for the first bytes and for
//! the request headers (which also closes idle keep-alive connections),
//! bounded header bytes, HTTP/2 keep-alive pings and a stream limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Peer;
use super::admin::{AdminListener, Readiness};
use super::conn_limit::ConnectionLimiter;
use super::preface_deadline::PrefaceDeadline;
use super::tls::Rotating;
use super::watch::{self, Watcher};
use crate::auth::{Auth, AuthError};
use crate::config::{Config, ServerLimits};
use crate::proxy::{Proxy, StartError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    admin: AdminListener,
    readiness: Arc<Readiness>,
    tls: Option<TlsAcceptor>,
    /// The server certificate and client CA bundle in force (reloaded
    /// when their files change).
    rotating: Option<Rotating>,
    proxy: Arc<Proxy>,
    /// Client authentication; `None`: every client is anonymous.
    auth: Option<Arc<Auth>>,
    limiter: ConnectionLimiter,
    /// The registry watch (`watch:` configured), run beside the server.
    watcher: Option<Arc<crate::watch::Watcher>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Open the store, build the upstream clients and bind the listener.
    pub async fn bind(config: Config) -> Result<Server, ListenError> {
        let config = Arc::new(config);
        let client_ca = config.auth.as_ref().and_then(|a| a.client_ca.as_deref());
        let (tls, rotating) = match config.tls.as_ref() {
            Some(files) => {
                let (acceptor, rotating) = super::tls::acceptor(files, client_ca)?;
                (Some(acceptor), Some(rotating))
            }
            None => (None, None),
        };
        let auth = config.auth.as_ref().map(Auth::new).transpose()?.map(Arc::new);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ListenError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin = AdminListener::bind(config.admin_listen)
            .await
            .map_err(|source| ListenError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let limits = config.server_limits;
        let proxy = Proxy::new(config)?;
        let watcher = crate::watch::Watcher::new(proxy.clone())?;
        Ok(Server {
            watcher,
            listener,
            admin,
            readiness: Arc::new(Readiness::default()),
            tls,
            rotating,
            proxy,
            auth,
            limiter: ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_client),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
    }

    /// One line that says what this server will do: where it listens, which
    /// upstreams it fronts, what it enforces (naming every rule that only
    /// audits), where it stores, and who may pull.
    pub fn log_startup(&self) {
        let config = self.proxy.config();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listen = self
            .local_addr()
            .map_or_else(|| config.listen.to_string(), |a| a.to_string());
        let upstreams: Vec<String> = config
            .upstreams
            .iter()
            .map(|u| format!("{}={}", u.host, u.url))
            .collect();
        let default_upstream = config.default_upstream.as_ref().map(|u| u.host.to_string());
        let (policy, audit_only) = match self.proxy.gate().policy() {
            None => ("integrity-only (no signature policy)".to_owned(), Vec::new()),
            Some(p) => {
                let audit: Vec<String> = p
                    .rules
                    .iter()
                    .filter(|r| r.mode == crate::policy::Mode::Audit)
                    .map(|r| r.name.clone())
                    .collect();
                (
                    format!("revision {} ({} rules)", p.short_revision(), p.rules.len()),
                    audit,
                )
            }
        };
        let admin = self
            .admin_addr()
            .map_or_else(|| config.admin_listen.to_string(), |a| a.to_string());
        tracing::info!(
            listen = %format!("{scheme}://{listen}"),
            admin = %format!("http://{admin}"),
            upstreams = %upstreams.join(", "),
            default_upstream = default_upstream.as_deref().unwrap_or("none"),
            policy = %policy,
            audit_only_rules = %if audit_only.is_empty() { "none".to_owned() } else { audit_only.join(", ") },
            storage = %match config.storage.max_bytes {
                Some(cap) => format!("{} (cap {})", config.data_dir.display(), bytesize::ByteSize(cap).display().iec()),
                None => format!("{} (no cap)", config.data_dir.display()),
            },
            clients = %self.auth.as_ref().map_or_else(
                || "anonymous (no client authentication configured)".to_owned(),
                |a| a.describe()
            ),
            watch = %config.watch.as_ref().map_or("off".to_owned(), |w| w.describe()),
            "portcullis listening"
        );
    }

    /// Serve until `shutdown` resolves, then drain: `/readyz` fails at once,
    /// the listener closes, in-flight responses get `server.drainTimeout`
    /// to finish, and the downloads they started get what is left of it to
    /// commit.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let limits = self.proxy.config().server_limits;
        let builder = connection_builder(&limits);
        let reloader = tokio::spawn(super::reload::watch(self.proxy.clone()));
        let usage_flusher = tokio::spawn(self.proxy.clone().flush_usage_periodically());
        let _watchers = self.watchers();
        let watch_health = self.watcher.as_ref().map(|w| w.health());
        let watch = self.watcher.clone().map(|w| {
            tokio::spawn(async move {
                if let Err(e) = w.run().await {
                    tracing::error!(error = %e, "registry watch stopped");
                }
            })
        });
        let admin = tokio::spawn(self.admin.run(self.proxy.clone(), self.readiness.clone(), watch_health));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Over a cap the connection is dropped here, before any byte is
            // read: closing is the cheapest answer to a flood.
            let slot = match self.limiter.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.proxy.metrics().connection_refused(refusal);
                    tracing::debug!(%peer, cap = refusal.as_str(), "connection refused: too many open connections");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let stream = PrefaceDeadline::new(stream, limits.header_read_timeout);
            match &self.tls {
                None => {
                    let service = service(self.proxy.clone(), self.auth.clone(), Peer::plain(peer));
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        drop(slot);
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let (proxy, auth) = (self.proxy.clone(), self.auth.clone());
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls =
                            match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                            };
                        // The handshake consumed the first deadline; the
                        // HTTP bytes get their own.
                        let peer_info = Peer::tls(peer, tls.get_ref().1.peer_certificates());
                        let service = service(proxy, auth, peer_info);
                        let tls = PrefaceDeadline::new(tls, limits.header_read_timeout);
                        let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        drop(slot);
                    });
                }
            }
        }
        self.readiness.start_draining();
        drop(self.listener);
        reloader.abort();
        usage_flusher.abort();
        if let Some(w) = watch {
            // Queued events stay on disk and are delivered after a restart.
            w.abort();
        }
        let deadline = tokio::time::Instant::now() + limits.drain_timeout;
        tracing::info!(
            seconds = limits.drain_timeout.as_secs_f64(),
            "shutting down: not ready, listener closed, draining in-flight requests"
        );
        if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
            tracing::warn!("drain timed out; closing remaining connections");
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.proxy.finish_downloads(left).await {
            tracing::warn!(
                "drain timed out with blob downloads running; their partial files are discarded at the next start"
            );
        }
        admin.abort();
        tracing::info!("drained; exiting");
    }
}

impl Server {
    /// Reloaders of the server certificate, the client CA bundle and the
    /// client credentials,
    /// stopped when dropped.
    fn watchers(&self) -> Vec<Watcher> {
        let mut out = Vec::new();
        if let Some(rotating) = &self.rotating {
            out.push(watch::spawn(rotating.cert.clone()));
            if let Some(ca) = &rotating.client_ca {
                out.push(watch::spawn(ca.clone()));
            }
        }
        if let Some(auth) = &self.auth {
            out.push(watch::spawn(auth.clone()));
        }
        out
    }
}

fn service(
    proxy: Arc<Proxy>,
    auth: Option<Arc<Auth>>,
    peer: Peer,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::body::Logged>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ use<> {
    let peer = Arc::new(peer);
    service_fn(move |req| crate::server::handle(proxy.clone(), auth.clone(), req, peer.clone()))
}

/// hyper's HTTP/1 and HTTP/2 settings from `server:`. Both sides get a
/// timer: without one hyper silently drops its header read timeout (and
/// panics if one is configured explicitly).
fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
