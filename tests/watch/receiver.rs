//! A webhook receiver on 127.0.0.1: records every request (path, headers,
//! body) and answers with a status the test sets (503 = "down").

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    log: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(200));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (status.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, l) = (s.clone(), l.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (s, l) = (s.clone(), l.clone());
                    async move { Ok::<_, Infallible>(record(req, &s, &l).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            status,
            log,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer every request with `status` from now on.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Requests to `path` answered 2xx (what the sender counts as delivered).
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.all(path)
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Every request to `path`, whatever it was answered.
    pub fn all(&self, path: &str) -> Vec<Received> {
        let log = self.log.lock().expect("log");
        log.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Wait until `done` holds for the accepted requests to `path` (panics
    /// after `limit` with what arrived).
    pub async fn wait_for(&self, path: &str, limit: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.accepted(path);
            if done(&got) {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                let bodies: Vec<String> = got
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect();
                panic!(
                    "receiver {path}: condition not met within {limit:?}; accepted:\n{}",
                    bodies.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn record(req: Request<Incoming>, status: &AtomicU16, log: &Mutex<Vec<Received>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let code = status.load(Ordering::SeqCst);
    log.lock().expect("log").push(Received {
        path,
        headers,
        body,
        status: code,
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(code).expect("status");
    resp
}
