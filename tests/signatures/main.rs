//! End-to-end proof of the signature policy: a real CNCF Distribution
//! upstream seeded with images and signatures in exactly cosign's formats
//! (legacy `.sig`/`.att`, key-based Sigstore bundle referrers behind the
//! referrers fallback index), Portcullis in front with a policy directory,
//! and skopeo as the client. Every case checks what the client sees (skopeo
//! succeeds or fails), the exact HTTP answer (403 `DENIED` naming the rule
//! and the reasons) and the audit event (verdict, rule, authorities,
//! policy revision, cache).
//!
//! The `portcullis policy check` and `portcullis verify` commands are run
//! as the built binary at the end.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod admission;
mod cli;
mod lifecycle;
mod signers;
mod tags_and_material;
