//! HTTP/2 limits on the wire: the server's SETTINGS advertise the stream
//! and header-list bounds, and a peer that stops answering keep-alive pings
//! is disconnected. The client here is raw frames, as an attacker's is.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 0x4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;

#[tokio::test]
async fn http2_limits_are_advertised_and_a_silent_peer_is_dropped() {
    let (fake, _image) = upstream_with_image(&[64], 51).await;
    let limits = "server:\n  http2MaxConcurrentStreams: 7\n  maxHeaderBytes: 20000\n  http2KeepAliveInterval: 1s\n  http2KeepAliveTimeout: 1s\n";
    let proxy = proxy_for(&fake, limits).await;

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(PREFACE).await.expect("preface");
    stream.write_all(&EMPTY_SETTINGS).await.expect("settings");
    let started = Instant::now();

    // Read every frame until the server closes; never answer anything.
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a peer that never acks its pings for 10 s"),
        }
    }
    let closed_after = started.elapsed();
    let frames = frames(&bytes);

    let settings = frames
        .iter()
        .find(|(kind, flags, _)| *kind == FRAME_SETTINGS && flags & 0x1 == 0)
        .map(|(_, _, payload)| settings_of(payload))
        .expect("the server's SETTINGS");
    assert!(settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 7)), "{settings:?}");
    assert!(
        settings.contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, 20_000)),
        "{settings:?}"
    );

    assert!(
        frames
            .iter()
            .any(|(kind, flags, _)| *kind == FRAME_PING && flags & 0x1 == 0),
        "the server pinged: {:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(
        frames.iter().any(|(kind, _, _)| *kind == FRAME_GOAWAY),
        "closed with GOAWAY"
    );
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(6),
        "closed after one interval and one timeout, not {closed_after:?}"
    );
}

/// (type, flags, payload) of each complete frame.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// The (identifier, value) pairs of a SETTINGS payload.
fn settings_of(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}
