//! Fault injection: a fake upstream that misbehaves on purpose, and exact
//! assertions on what the client gets, what the proxy stores (nothing wrong,
//! ever) and how it recovers once the upstream behaves again.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod access;
mod blobs;
mod fake_self_check;
mod hostile;
mod manifests;
mod upstream;
