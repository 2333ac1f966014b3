//! Code shared by the fuzz targets. The Go-semantics reference reader, the
//! properties and the structure-aware document generator are the ones the
//! deterministic test `tests/json_differential` runs: one copy, included.

#[path = "../../tests/json_differential/reference.rs"]
pub mod reference;

use portcullis::oci::json::{self, Schema};

/// Every schema of the strict reader, for targets that pick one by a byte.
pub const SCHEMAS: [&Schema; 5] = [
    &json::IMAGE_DOCUMENT,
    &json::SIMPLE_SIGNING,
    &json::DSSE_ENVELOPE,
    &json::IN_TOTO_STATEMENT,
    &json::SIGSTORE_BUNDLE,
];

/// The image the payload targets bind statements and signatures to.
pub const IMAGE: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The first byte as a selector, the rest as the input.
pub fn split(data: &[u8]) -> Option<(usize, &[u8])> {
    data.split_first().map(|(b, rest)| (usize::from(*b), rest))
}
