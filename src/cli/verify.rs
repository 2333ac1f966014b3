//! `portcullis verify IMAGE`: resolve, fetch, verify and admit one image
//! reference exactly as the proxy would, and report the verdict.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::runtime;
use crate::config::{Config, Overrides};
use crate::oci::{Reference, RegistryHost};
use crate::proxy::{self, Proxy};
use crate::telemetry::audit::{AuditEvent, AuditSink};
use crate::telemetry::{self, LogFormat, Requester};

/// The outcome of `portcullis verify`.
#[derive(Debug)]
pub struct Report {
    pub allowed: bool,
    pub events: Vec<AuditEvent>,
    pub error: Option<String>,
}

/// Why a reference could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("`{0}` is not an image reference ([registry/]repository[:tag][@digest])")]
    BadReference(String),
    #[error("registry `{0}` is not an allow-listed upstream")]
    NotAllowListed(String),
    #[error("no registry in `{0}` and no default upstream configured")]
    NoDefault(String),
    #[error(transparent)]
    Start(#[from] proxy::StartError),
}

/// Split `[host/]repo[:tag][@digest]` into host (if any), repository and reference.
pub(super) fn split_reference(image: &str) -> Option<(Option<&str>, &str, Reference)> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let (host, path) = match rest.split_once('/') {
        Some((first, p)) if RegistryHost::looks_like_host(first) => (Some(first), p),
        _ => (None, rest),
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (path, None),
    };
    let reference = match (digest, tag) {
        (Some(d), _) => Reference::Digest(d.parse().ok()?),
        (None, Some(t)) => Reference::Tag(t.parse().ok()?),
        (None, None) => Reference::Tag("latest".parse().ok()?),
    };
    Some((host, repo, reference))
}

/// Verify `image` under `config`'s policy (integrity-only if so configured).
pub async fn run(config: Config, image: &str) -> Result<Report, VerifyError> {
    let (host, repo, reference) = split_reference(image).ok_or_else(|| VerifyError::BadReference(image.into()))?;
    let upstream = match host {
        Some(h) => config
            .upstream_by_host(h)
            .cloned()
            .ok_or_else(|| VerifyError::NotAllowListed(h.into()))?,
        None => config
            .default_upstream
            .clone()
            .ok_or_else(|| VerifyError::NoDefault(image.into()))?,
    };
    let repo = repo.parse().map_err(|_| VerifyError::BadReference(image.into()))?;
    let proxy = Proxy::with_audit(Arc::new(config), AuditSink::memory())?;
    let target = proxy
        .target(upstream.host.as_str(), &repo)
        .ok_or_else(|| VerifyError::NotAllowListed(upstream.host.to_string()))?;
    let who = Requester {
        client: "portcullis verify".to_owned(),
        identity: "-".to_owned(),
    };
    let result = proxy.manifest(&target, &reference, None, &who).await;
    Ok(Report {
        allowed: result.is_ok(),
        events: proxy.gate().audit_sink().kept(),
        error: result.err().map(|e| e.to_string()),
    })
}

/// Load the configuration, verify `image` and print the verdict with its
/// reasons (exit 0 allowed; 1 denied, or it could not be checked).
pub fn command(path: Option<&Path>, overrides: &Overrides, image: &str) -> ExitCode {
    telemetry::init(LogFormat::Compact);
    let outcome = Config::load(path, overrides)
        .map_err(anyhow::Error::from)
        .and_then(|c| execute(c, image));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Print the verdict with its reasons; `Ok(true)` when allowed.
fn execute(config: Config, image: &str) -> anyhow::Result<bool> {
    let runtime = runtime()?;
    let report = runtime.block_on(run(config, image))?;
    for event in &report.events {
        println!("{}", serde_json::to_string_pretty(event)?);
    }
    match (&report.error, report.allowed) {
        (None, true) => println!("ALLOW {image}"),
        (Some(e), _) => println!("DENY {image}: {e}"),
        (None, false) => println!("DENY {image}"),
    }
    Ok(report.allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let (h, r, t) = split_reference("ghcr.io/org/app:v1").expect("ref");
        assert_eq!((h, r, t.to_string()), (Some("ghcr.io"), "org/app", "v1".to_owned()));
        let (h, r, t) = split_reference("alpine").expect("ref");
        assert_eq!((h, r, t.to_string()), (None, "alpine", "latest".to_owned()));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let image = format!("localhost:5000/a/b@{d}");
        let (h, _, t) = split_reference(&image).expect("ref");
        assert_eq!((h, t.to_string()), (Some("localhost:5000"), d.to_owned()));
        assert!(split_reference("repo@sha256:zz").is_none());
        assert!(split_reference("repo:-bad").is_none());
    }
}
