//! Client authentication and authorization (issue 11) with real parts: the
//! real CNCF Distribution registry upstream, Portcullis in-process on a
//! free loopback port, and podman, skopeo, containerd's `ctr` and curl as
//! the clients. Certificates are made at run time (rcgen).
//!
//! Every test ends by checking that no password or token it used appears
//! in the log captured from the whole test binary, nor in the audit log.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod anonymous;
mod clients;
mod mtls;
mod reload;
mod tokens;
