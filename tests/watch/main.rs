//! The registry watch (issue 14) end to end: a real CNCF Distribution
//! upstream seeded with images signed in cosign's legacy format with fresh
//! keys, Portcullis (in-process, or the built binary for `watch --once`)
//! watching a tag under a signature policy, and webhook receivers run by the
//! test on 127.0.0.1 (hyper) that record every request.
//!
//! Intervals are short (200ms) so rounds come quickly; the tests wait for
//! events, never assert how fast they came.

#[path = "../support/mod.rs"]
mod support;

mod catalog;
mod common;
mod cost;
mod delivery;
mod moves;
mod once;
mod receiver;
mod replicas;
mod upstream;
