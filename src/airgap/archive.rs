//! The archive writer of `portcullis export`: a tar (optionally zstd)
//! encoder on its own thread, fed entries through a bounded channel; a
//! blob's chunks arrive through a channel of their own, so memory stays flat
//! whatever the blob's size, and an entry that ends short fails the archive.

use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use tokio::sync::mpsc;

/// What the writer thread appends.
pub(super) enum Item {
    File {
        path: String,
        bytes: Bytes,
    },
    Stream {
        path: String,
        size: u64,
        chunks: mpsc::Receiver<Result<Bytes, String>>,
    },
}

/// The tar (and zstd) encoder, on its own thread.
pub(super) fn write_tar(path: &Path, zstd: bool, mut rx: mpsc::Receiver<Item>) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let sink = if zstd {
        Sink::Zstd(zstd::Encoder::new(file, 3)?)
    } else {
        Sink::Plain(file)
    };
    let mut tar = tar::Builder::new(sink);
    while let Some(item) = rx.blocking_recv() {
        match item {
            Item::File { path, bytes } => append(&mut tar, &path, bytes.len() as u64, &bytes[..])?,
            Item::Stream { path, size, chunks } => append(
                &mut tar,
                &path,
                size,
                ChunkReader {
                    rx: chunks,
                    current: Bytes::new(),
                    remaining: size,
                },
            )?,
        }
    }
    let file = tar.into_inner()?.finish()?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, size: u64, data: impl Read) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
}

enum Sink {
    Plain(std::io::BufWriter<std::fs::File>),
    Zstd(zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>),
}

impl Sink {
    fn finish(self) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        match self {
            Sink::Plain(f) => Ok(f),
            Sink::Zstd(z) => z.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(buf),
            Sink::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Zstd(z) => z.flush(),
        }
    }
}

/// A blob's chunks as a `Read` for the tar builder: fails if the stream
/// fails or ends before the announced size (the entry must not be short).
struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
    remaining: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.remaining == 0 {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob ended before its size",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_blob_stream_fails_the_entry() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"abc"))).expect("send");
        drop(tx);
        let mut r = ChunkReader {
            rx,
            current: Bytes::new(),
            remaining: 5,
        };
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).expect_err("short");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"abc");
    }
}
