//! `portcullis promote` end to end: two real CNCF Distribution registries
//! (staging and production, plain HTTP on loopback, configured as
//! upstreams), images signed in cosign's legacy format with the test
//! signer, and the built binary. Every refusal checks that production's
//! tag did not move and that no bad byte reached it.

#[path = "../support/mod.rs"]
mod support;

mod common;
mod copy;
mod keyless;
mod refusals;
mod roles;
mod token;
