//! A bare TCP relay: the floor that `bench/run.sh` measures Portcullis
//! against. It parses no HTTP and holds nothing back: each connection is
//! copied byte for byte to the upstream and back. With `--sha256` every byte
//! coming back from the upstream is also hashed on a second thread, as
//! Portcullis must; with `--temp-file DIR` it is also written to a temporary
//! file in `DIR` on another thread (deleted when the response ends), as
//! Portcullis must before it can keep a blob. With both, the relay does the
//! work a verifying cache cannot skip and nothing else: what it reaches on a
//! machine is what any such proxy in the middle can hope for there.
//!
//! With `--delay-ms N` every chunk a client sends up is held back N ms
//! first: each request then costs one more N ms round trip, which is how
//! `bench/verify.sh` puts a distant upstream behind a local one.
//!
//! ```text
//! cargo run --release --example tcp_relay -- LISTEN UPSTREAM [--sha256] [--temp-file DIR] [--delay-ms N]
//! ```

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes read from the upstream at a time (Portcullis reads 256 KiB too).
const READ_BUFFER: usize = 256 * 1024;
/// Chunks queued for each worker thread (Portcullis queues 64 too).
const QUEUE: usize = 64;

/// What is done to each response byte besides relaying it.
#[derive(Clone, Default)]
struct Work {
    sha256: bool,
    temp_dir: Option<PathBuf>,
    /// Added latency per request (per chunk sent up).
    delay: std::time::Duration,
}

const USAGE: &str = "usage: tcp_relay LISTEN UPSTREAM [--sha256] [--temp-file DIR] [--delay-ms N]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, work) = parse_args(&args)?;
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let work = work.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream, &work).await {
                eprintln!("tcp_relay: {e:#}");
            }
        });
    }
}

fn parse_args(args: &[String]) -> anyhow::Result<(SocketAddr, SocketAddr, Work)> {
    let [listen, upstream, rest @ ..] = args else {
        anyhow::bail!(USAGE);
    };
    let mut work = Work::default();
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--sha256" => work.sha256 = true,
            "--temp-file" => work.temp_dir = Some(rest.next().context(USAGE)?.into()),
            "--delay-ms" => {
                let ms: u64 = rest
                    .next()
                    .context(USAGE)?
                    .parse()
                    .context("--delay-ms takes milliseconds")?;
                work.delay = std::time::Duration::from_millis(ms);
            }
            _ => anyhow::bail!(USAGE),
        }
    }
    let listen = listen.parse().context("LISTEN must be ADDR:PORT")?;
    let upstream = upstream.parse().context("UPSTREAM must be ADDR:PORT")?;
    Ok((listen, upstream, work))
}

async fn relay(client: TcpStream, upstream: SocketAddr, work: &Work) -> anyhow::Result<()> {
    let upstream = TcpStream::connect(upstream)
        .await
        .context("connecting to the upstream")?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    // Requests go up as they are (after the configured delay).
    let delay = work.delay;
    tokio::spawn(async move {
        if delay.is_zero() {
            return tokio::io::copy(&mut client_read, &mut upstream_write).await.map(drop);
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return upstream_write.shutdown().await;
            }
            tokio::time::sleep(delay).await;
            upstream_write.write_all(&buf[..n]).await?;
        }
    });
    let mut workers = Vec::new();
    if work.sha256 {
        workers.push(worker(hash_all));
    }
    if let Some(dir) = &work.temp_dir {
        let file = tempfile::tempfile_in(dir).context("creating the temp file")?;
        workers.push(worker(move |rx| write_all(rx, file)));
    }
    // Responses come back in reads as large as Portcullis's, into fresh
    // buffers shared with the workers (as hyper's are), so the modes and
    // Portcullis differ only in the work done per byte.
    let mut buf = BytesMut::new();
    'relay: loop {
        buf.reserve(READ_BUFFER);
        if upstream_read.read_buf(&mut buf).await? == 0 {
            break;
        }
        let chunk = buf.split().freeze();
        client_write.write_all(&chunk).await?;
        for (tx, _) in &workers {
            // A worker that stopped taking chunks has failed: its error is
            // reported below.
            if tx.send(chunk.clone()).await.is_err() {
                break 'relay;
            }
        }
    }
    for (tx, thread) in workers {
        drop(tx);
        thread.await.context("worker thread")??;
    }
    Ok(())
}

type Worker = (mpsc::Sender<Bytes>, JoinHandle<anyhow::Result<()>>);

/// A blocking thread fed every response chunk.
fn worker(run: impl FnOnce(mpsc::Receiver<Bytes>) -> anyhow::Result<()> + Send + 'static) -> Worker {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::task::spawn_blocking(move || run(rx)))
}

fn hash_all(mut rx: mpsc::Receiver<Bytes>) -> anyhow::Result<()> {
    let mut sha = Sha256::new();
    while let Some(chunk) = rx.blocking_recv() {
        sha.update(&chunk);
    }
    sha.finalize();
    Ok(())
}

/// Appends to an unlinked temp file: the page-cache write Portcullis does.
fn write_all(mut rx: mpsc::Receiver<Bytes>, mut file: std::fs::File) -> anyhow::Result<()> {
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk).context("writing the temp file")?;
    }
    Ok(())
}
