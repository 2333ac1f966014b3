//! The gate against an adversary (issue 9), written as the real attacks:
//! hostile documents built byte by byte as JSON text, pushed with their raw
//! bytes to a real CNCF Distribution upstream (or, where Distribution itself
//! refuses them at push, served by the lying in-process upstream), an
//! enforcing policy with a fresh key, Portcullis in-process in front, and
//! the Go clients as victims: skopeo always, containerd's `ctr` for the
//! headline decoy, the octet-stream look-alike and index vouching. Each
//! test has its control beside it: the signed image and its real material
//! still pull with the same client.
//!
//! Every expectation of a test is checked and the unmet ones are reported
//! together (`Findings`), so a run against code that still has a side door
//! says everything the attack achieved.
//!
//! Modules by theme: `one_reading` (case folding, duplicate keys, hybrid
//! and mislabelled documents), `material` (material by allow-list, blob
//! grants of material, bad referrers), `admission` (index vouching,
//! presence per repository, revocation on reload, grants across restarts,
//! verdict files).

#[path = "../support/mod.rs"]
mod support;

mod common;

mod admission;
mod material;
mod one_reading;
