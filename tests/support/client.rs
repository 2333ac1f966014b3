//! A small HTTP client for tests: exact status, headers and body (or the
//! transport error, for aborted bodies).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response; `body` is `Err` when the transfer broke (e.g. the proxy
/// aborted a body that failed verification).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, panicking with context if the transfer failed.
    pub fn bytes(&self) -> Bytes {
        match &self.body {
            Ok(b) => b.clone(),
            Err(e) => panic!("body transfer failed: {e}"),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes()).expect("JSON body")
    }

    /// The OCI error code of an error body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }

    pub fn error_message(&self) -> String {
        self.json()["errors"][0]["message"].as_str().unwrap_or("").to_owned()
    }
}

pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(method, url, headers, Empty::<Bytes>::new()).await
}

/// A request with a body (e.g. a form POST).
pub async fn request_with_body(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    send(method, url, headers, Full::new(body)).await
}

async fn send<B>(method: Method, url: &str, headers: &[(&str, &str)], body: B) -> Resp
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client: Client<_, B> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).expect("request");
    let resp = client.request(req).await.expect("response headers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Resp { status, headers, body }
}

/// GET `url`, also returning how long after the request the first body
/// byte arrived (`None`: no byte did).
pub async fn get_timed(url: &str) -> (Resp, Option<std::time::Duration>) {
    let started = std::time::Instant::now();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder().uri(url).body(Empty::new()).expect("request");
    let resp = client.request(req).await.expect("response headers");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let mut body = resp.into_body();
    let (mut bytes, mut first, mut failed) = (Vec::new(), None, None);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && first.is_none() {
                        first = Some(started.elapsed());
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Err(e) => {
                failed = Some(format!("{e:?}"));
                break;
            }
        }
    }
    let body = match failed {
        Some(e) => Err(e),
        None => Ok(Bytes::from(bytes)),
    };
    (Resp { status, headers, body }, first)
}

pub async fn get(url: &str) -> Resp {
    request(Method::GET, url, &[]).await
}

pub async fn head(url: &str) -> Resp {
    request(Method::HEAD, url, &[]).await
}
