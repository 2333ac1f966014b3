//! Helpers shared by this suite's modules.

pub(crate) use crate::support::client::{get, head, request};
pub(crate) use crate::support::fake::{FakeRegistry, Fault};
pub(crate) use crate::support::images::{Blob, Image, oci_image};
pub(crate) use crate::support::proxy::TestProxy;
pub(crate) use http::{Method, StatusCode};
pub(crate) use portcullis::oci::Digest;
pub(crate) use std::time::Duration;

pub const REPO: &str = "hardening/app";

/// A proxy (integrity-only) whose default upstream is `fake`, with `extra`
/// appended to its configuration (`server:` or `cache:` blocks).
pub async fn proxy_for(fake: &FakeRegistry, extra: &str) -> TestProxy {
    let host = fake.host();
    let yaml = format!(
        "defaultUpstream: {host}\nupstreams:\n  - host: {host}\n    url: {url}\n    insecurePlainHttp: true\nupstreamDefaults:\n  responseHeaderTimeout: 2s\n  bodyIdleTimeout: 2s\n  retryAttempts: 1\n{extra}",
        url = fake.url()
    );
    TestProxy::start(&yaml).await
}

/// A fake upstream holding one image tagged `v1`.
pub async fn upstream_with_image(layers: &[usize], seed: u64) -> (FakeRegistry, Image) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(layers, seed);
    fake.put_image(REPO, "v1", &image);
    (fake, image)
}

pub fn blob_path(digest: &Digest) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

pub fn manifest_path(reference: impl std::fmt::Display) -> String {
    format!("/v2/{REPO}/manifests/{reference}")
}
