//! A bare TCP relay: the floor that `bench/run.sh` measures Portcullis
//! against. It parses no HTTP, stores nothing and holds nothing back: each
//! connection is copied byte for byte to the upstream and back. With
//! `--sha256` every byte coming back from the upstream is also hashed on a
//! second thread, as Portcullis must. What such a relay reaches on a machine
//! is what any verifying proxy in the middle can hope for there.
//!
//! ```text
//! cargo run --release --example tcp_relay -- LISTEN UPSTREAM [--sha256]
//! ```

use std::net::SocketAddr;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bytes read from the upstream at a time (Portcullis reads 256 KiB too).
const READ_BUFFER: usize = 256 * 1024;
/// Chunks queued for the hashing thread.
const HASH_QUEUE: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, hash) = match args.as_slice() {
        [l, u] => (l, u, false),
        [l, u, flag] if flag == "--sha256" => (l, u, true),
        _ => anyhow::bail!("usage: tcp_relay LISTEN UPSTREAM [--sha256]"),
    };
    let listen: SocketAddr = listen.parse().context("LISTEN must be ADDR:PORT")?;
    let upstream: SocketAddr = upstream.parse().context("UPSTREAM must be ADDR:PORT")?;
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream, hash).await {
                eprintln!("tcp_relay: {e:#}");
            }
        });
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, hash: bool) -> anyhow::Result<()> {
    let upstream = TcpStream::connect(upstream)
        .await
        .context("connecting to the upstream")?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    // Requests go up as they are.
    tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut upstream_write).await });
    // Responses come back in reads as large as Portcullis's, so the two
    // modes and Portcullis differ only in the work done per byte.
    let (tx, hasher) = if hash {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(HASH_QUEUE);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut sha = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                sha.update(&chunk);
            }
            sha.finalize()
        });
        (Some(tx), Some(hasher))
    } else {
        (None, None)
    };
    loop {
        let mut chunk = vec![0u8; READ_BUFFER];
        let n = upstream_read.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        client_write.write_all(&chunk).await?;
        if let Some(tx) = &tx
            && tx.send(chunk).await.is_err()
        {
            break;
        }
    }
    drop(tx);
    if let Some(hasher) = hasher {
        hasher.await.context("hashing thread")?;
    }
    Ok(())
}
