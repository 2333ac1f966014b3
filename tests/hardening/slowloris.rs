//! 1,000 slowloris connections held open against the proxy: ordinary pulls
//! from another client keep working, the per-client cap closes the excess
//! at once, and the server closes every slow connection within its header
//! read timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use super::common::*;

const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const PER_CLIENT: usize = 500;
/// Slow connections from each of two attacking addresses: 600 + 600, of
/// which 500 + 500 are held (1,000 open) and 100 + 100 refused.
const PER_ATTACKER: usize = 600;
const ATTACKERS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)];
/// The honest client: Linux routes all of 127.0.0.0/8 to `lo`.
const HONEST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The shapes of a slow client.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Connects and sends nothing (the protocol is never even detected).
    Silent,
    /// Starts the HTTP/2 preface and stops.
    PartialPreface,
    /// Sends a request line and drips one header byte at a time.
    DrippingHeaders,
}

impl Slow {
    fn of(i: usize) -> Slow {
        [Slow::Silent, Slow::PartialPreface, Slow::DrippingHeaders][i % 3]
    }
}

/// When the server closed one slow connection, counted from its connect.
struct Closed {
    after: Duration,
    kind: Slow,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_capped_and_timed_out_while_pulls_keep_working() {
    // Each connection costs two descriptors here (client and server end).
    raise_fd_limit(4 * ATTACKERS.len() as u64 * PER_ATTACKER as u64 + 512);
    let (fake, image) = upstream_with_image(&[4096, 200_000], 91).await;
    let limits = format!(
        "server:\n  headerReadTimeout: {}s\n  maxConnections: 1100\n  maxConnectionsPerClient: {PER_CLIENT}\n",
        HEADER_TIMEOUT.as_secs()
    );
    let proxy = proxy_for(&fake, &limits).await;

    let mut slow = JoinSet::new();
    for attacker in ATTACKERS {
        for i in 0..PER_ATTACKER {
            let stream = connect_from(attacker, proxy.addr).await;
            slow.spawn(hold_open(stream, Slow::of(i)));
        }
    }
    let all_open = Instant::now();

    // The honest client pulls the whole image while the slow ones are held.
    let pulled = pull_image(&proxy, &image, HONEST).await;
    assert!(
        all_open.elapsed() < HEADER_TIMEOUT,
        "the pull must finish while the slow connections are open (took {pulled:?})"
    );

    // An attacker address is at its cap: a new connection is closed at once.
    let refused = pull_manifest_from(&proxy, ATTACKERS[0]).await;
    assert!(
        refused.is_err(),
        "the per-client cap must refuse a new connection: {refused:?}"
    );

    let mut closed = Vec::new();
    while let Some(done) = slow.join_next().await {
        closed.push(done.expect("slow client task"));
    }
    let refused_at_once: Vec<&Closed> = closed.iter().filter(|c| c.after < HEADER_TIMEOUT / 2).collect();
    let timed_out: Vec<&Closed> = closed.iter().filter(|c| c.after >= HEADER_TIMEOUT / 2).collect();
    assert_eq!(
        refused_at_once.len(),
        ATTACKERS.len() * (PER_ATTACKER - PER_CLIENT),
        "connections over the per-client cap are closed at once"
    );
    assert_eq!(
        timed_out.len(),
        ATTACKERS.len() * PER_CLIENT,
        "1,000 slow connections were held"
    );
    let latest = timed_out.iter().map(|c| c.after).max().unwrap_or_default();
    assert!(
        latest < HEADER_TIMEOUT + Duration::from_secs(4),
        "every slow connection is closed by the server within its header timeout (latest after {latest:?})"
    );
    for kind in [Slow::Silent, Slow::PartialPreface, Slow::DrippingHeaders] {
        assert!(
            timed_out
                .iter()
                .any(|c| std::mem::discriminant(&c.kind) == std::mem::discriminant(&kind)),
            "{kind:?} connections were held and timed out"
        );
    }

    // The slots are free again: the attacker's address can pull now.
    let again = pull_manifest_from(&proxy, ATTACKERS[0])
        .await
        .expect("once the slow connections are closed, their address connects again");
    assert_eq!(again.0, StatusCode::OK);
}

/// Play one slow client until the server closes the connection; returns
/// how long that took after connecting.
async fn hold_open(mut stream: TcpStream, kind: Slow) -> Closed {
    let started = Instant::now();
    match kind {
        Slow::Silent => {}
        Slow::PartialPreface => {
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n").await;
        }
        Slow::DrippingHeaders => {
            let _ = stream.write_all(b"GET /v2/ HTTP/1.1\r\nHost: proxy\r\nX-Slow: ").await;
        }
    }
    let mut buf = [0u8; 256];
    loop {
        let read = stream.read(&mut buf);
        match tokio::time::timeout(Duration::from_millis(500), read).await {
            // EOF, reset, or whatever the server answered before closing.
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) if matches!(kind, Slow::DrippingHeaders) => {
                if stream.write_all(b"a").await.is_err() {
                    break;
                }
            }
            Err(_) => {}
        }
        if started.elapsed() > HEADER_TIMEOUT * 5 {
            break; // reported by the caller's bound
        }
    }
    Closed {
        after: started.elapsed(),
        kind,
    }
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// A hyper client whose connections come from `source`.
fn client_from(source: Ipv4Addr) -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(IpAddr::V4(source)));
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get_from(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(StatusCode, Bytes), hyper_util::client::legacy::Error> {
    let req = Request::get(url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .body(Empty::new())
        .expect("request");
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok((status, body))
}

/// Manifest by tag, then every blob, each checked byte for byte.
async fn pull_image(proxy: &TestProxy, image: &Image, source: Ipv4Addr) -> Duration {
    let started = Instant::now();
    let client = client_from(source);
    let (status, manifest) = get_from(&client, &proxy.url(&manifest_path("v1")))
        .await
        .expect("manifest GET during the attack");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(manifest, image.manifest.bytes);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let (status, bytes) = get_from(&client, &proxy.url(&blob_path(&blob.digest)))
            .await
            .expect("blob GET during the attack");
        assert_eq!(status, StatusCode::OK, "blob {}", blob.digest);
        assert!(bytes == blob.bytes, "blob {} byte for byte", blob.digest);
    }
    started.elapsed()
}

async fn pull_manifest_from(
    proxy: &TestProxy,
    source: Ipv4Addr,
) -> Result<(StatusCode, Bytes), hyper_util::client::legacy::Error> {
    let (client, url) = (client_from(source), proxy.url(&manifest_path("v1")));
    tokio::time::timeout(Duration::from_secs(10), get_from(&client, &url))
        .await
        .expect("a refused connection fails fast, it does not hang")
}

/// 1,000 held connections need more descriptors than the usual soft limit
/// of 1,024: raise it up to the hard limit.
fn raise_fd_limit(wanted: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return;
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "this test needs {wanted} file descriptors; the hard limit is {hard}"
    );
    let raised = rustix::process::Rlimit {
        current: Some(wanted),
        maximum: current.maximum,
    };
    setrlimit(Resource::Nofile, raised).expect("raise the descriptor limit");
}

/// Request line and headers are bounded (`server.maxHeaderBytes`): a head
/// larger than that is refused (hyper answers 431) and the connection
/// closed, not buffered; a head within the bound is served.
#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let (fake, _image) = upstream_with_image(&[64], 92).await;
    let proxy = proxy_for(&fake, "server:\n  maxHeaderBytes: 16384\n").await;
    let big = "a".repeat(64 * 1024);
    let small = "a".repeat(4 * 1024);
    for (value, expected) in [(&big, "431"), (&small, "200")] {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!("GET /v2/ HTTP/1.1\r\nHost: proxy\r\nX-Filler: {value}\r\nConnection: close\r\n\r\n");
        // The server may close while the oversized head is still being sent.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server answers and closes");
        let status_line = String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned();
        // Closing with part of the oversized head unread makes the kernel
        // send a reset, which can overtake the 431 on its way: then the
        // client sees no answer at all, which is a refusal too.
        let refused_by_reset = expected == "431" && matches!(read, Ok(Err(_))) && answer.is_empty();
        assert!(
            refused_by_reset || status_line.starts_with(&format!("HTTP/1.1 {expected}")),
            "{} header bytes: {status_line:?} ({read:?})",
            value.len()
        );
    }
}
