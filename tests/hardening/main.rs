//! The HTTP surface against anonymous adversaries (issue 9, section 4):
//! slowloris connections and connection caps, `Range` arithmetic at the
//! edges of `u64`, lying upstream bodies, `HEAD` on cold blobs, `tags/list`
//! parameters, and the bound on concurrent cold downloads.
//!
//! Each test runs its own proxy in front of the in-process fake upstream
//! (`support::fake`), all on loopback.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod blobs;
mod http2;
mod slowloris;
mod tags;
