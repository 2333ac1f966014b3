//! Running Portcullis as production infrastructure (issue 11): the admin
//! listener (`/healthz`, `/readyz`, `/metrics` read by a real Prometheus
//! text parser after a scripted workload, with counters moving by exact
//! amounts) and graceful restarts (SIGTERM during a large pull: the pull
//! completes with the right digest, readiness fails at once, the process
//! exits 0 with the blob committed).
//!
//! Upstream: the real CNCF Distribution registry.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod drain;
mod image;
mod prometheus;
