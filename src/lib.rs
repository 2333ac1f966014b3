//! Portcullis: a verifying pull-through OCI registry proxy.
//!
//! Module map (imports point downward only):
//! `oci` → `telemetry`, `verify` → `config` → `auth`, `upstream`, `store` → `proxy` → `promote`, `server` → `cli`
//! (the commands `main.rs` starts).
//! See `docs/ARCHITECTURE.md` for the request flow.

pub mod airgap;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod oci;
pub mod policy;
pub mod promote;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod verify;
pub mod watch;
