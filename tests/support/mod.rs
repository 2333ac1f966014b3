//! Shared helpers for the integration test binaries.
//!
//! - `proxy`: run Portcullis in-process on a free loopback port.
//! - `client`: a minimal HTTP client for assertions on exact bytes/headers.
//! - `images`: build OCI/Docker images, indexes and blobs in memory.
//! - `fake`: an in-process upstream registry that misbehaves on purpose.
//! - `distribution`: the real CNCF Distribution registry (`docker-registry`).
#![allow(dead_code)]

pub mod client;
pub mod cosign;
pub mod distribution;
pub mod fake;
pub mod images;
pub mod proxy;

/// Fail with a clear message when a required external tool is missing;
/// tests never skip silently.
pub fn require_tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` is not installed; run scripts/test (it installs docker-registry, skopeo, containerd, podman)"
    );
}
