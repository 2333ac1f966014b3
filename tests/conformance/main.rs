//! The OCI distribution-spec conformance suite's PULL category (plus the
//! content-discovery checks a pull needs: tag listing and referrers),
//! rewritten as Rust tests against Portcullis in front of a real CNCF
//! Distribution registry seeded through the push API.
//!
//! Each test starts its own `docker-registry` (about 50 ms) and proxy, so
//! tests are independent and "cold" really means cold.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod discovery;
mod pull;
mod ranges_and_errors;
mod routing;
