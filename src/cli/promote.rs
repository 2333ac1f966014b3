//! `portcullis promote SRC DST`: turn two references into a
//! [`promote::Plan`] on the configured registries and run it with the
//! proxy's own gate.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::runtime;
use super::verify::split_reference;
use crate::config::{Config, Overrides};
use crate::oci::{Reference, Tag};
use crate::promote::{self, Expected, Plan, PromoteError, Promoted};
use crate::proxy::{self, Proxy, Target};
use crate::telemetry::audit::{AuditEvent, AuditSink};
use crate::telemetry::{self, LogFormat};

/// Exit code: promoted (or, with `--dry-run`, would be).
pub const EXIT_PROMOTED: u8 = 0;
/// Exit code: the policy denied the source (or the copy at the destination).
pub const EXIT_DENIED: u8 = 1;
/// Exit code: the promotion could not be completed; the tag did not move.
pub const EXIT_FAILED: u8 = 2;

/// Options of `portcullis promote`.
#[derive(Debug, Clone)]
pub struct Options {
    pub expect_current: Option<Expected>,
    pub dry_run: bool,
    pub chunk_bytes: usize,
    /// The promoter's signing key (PKCS#8 PEM, ECDSA P-256) for the record.
    pub sign_key: Option<std::path::PathBuf>,
}

/// Why the command could not even start a promotion (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("`{0}` is not an image reference ([registry/]repository[:tag][@digest])")]
    BadReference(String),
    #[error("`{0}` must name a registry configured as an upstream")]
    NotConfigured(String),
    #[error("the destination `{0}` must name a tag to move")]
    NoDestinationTag(String),
    #[error(transparent)]
    Key(#[from] promote::record::RecordError),
    #[error(transparent)]
    Start(#[from] proxy::StartError),
}

/// The outcome and the audit events of the admissions it ran.
#[derive(Debug)]
pub struct Report {
    pub result: Result<Promoted, PromoteError>,
    pub events: Vec<AuditEvent>,
    /// Registry requests made, by configured host (token requests aside).
    pub requests: std::collections::BTreeMap<String, u64>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        match &self.result {
            Ok(_) => EXIT_PROMOTED,
            Err(e) if e.exit_code() == 1 => EXIT_DENIED,
            Err(_) => EXIT_FAILED,
        }
    }
}

/// A data directory of one run's own, removed when the run ends: every
/// promotion verifies afresh (no verdict or manifest cached by an earlier
/// run or a proxy sharing the directory stands in for the admissions).
struct RunDir(std::path::PathBuf);

impl RunDir {
    fn under(data_dir: &std::path::Path) -> RunDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        RunDir(
            data_dir
                .join("promote-runs")
                .join(format!("{}-{nanos}", std::process::id())),
        )
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the promotion's data directory");
        }
    }
}

/// Promote `src` to `dst` under `config`'s registries and policy.
pub async fn run(mut config: Config, src: &str, dst: &str, options: Options) -> Result<Report, SetupError> {
    let run_dir = RunDir::under(&config.data_dir);
    config.data_dir = run_dir.0.clone();
    let promoter_key = match &options.sign_key {
        Some(path) => Some(Arc::new(promote::record::PromoterKey::load(path)?)),
        None => None,
    };
    let proxy = Proxy::with_audit(Arc::new(config), AuditSink::memory())?;
    let (src_target, src_ref) = target(&proxy, src)?;
    let (dst_target, dst_ref) = target(&proxy, dst)?;
    let dst_tag = destination_tag(dst, &dst_ref)?;
    let plan = Plan {
        src: src_target,
        src_ref,
        dst: dst_target,
        dst_tag,
        expect_current: options.expect_current,
        dry_run: options.dry_run,
        chunk_bytes: options.chunk_bytes,
        promoter_key,
    };
    let result = promote::run(&proxy, &plan).await;
    let requests = [&plan.src, &plan.dst]
        .iter()
        .map(|t| {
            let host = t.registry.host().to_string();
            let n = proxy.metrics().upstream_requests_to(&host);
            (host, n)
        })
        .collect();
    Ok(Report {
        result,
        events: proxy.gate().audit_sink().kept(),
        requests,
    })
}

/// Load the configuration, promote `src` to `dst` and print the outcome
/// (text, or one JSON object with `json`); the exit code says which
/// ([`EXIT_PROMOTED`], [`EXIT_DENIED`], [`EXIT_FAILED`]).
pub fn command(
    path: Option<&Path>,
    overrides: &Overrides,
    src: &str,
    dst: &str,
    options: Options,
    json: bool,
) -> ExitCode {
    telemetry::init(LogFormat::Compact);
    match Config::load(path, overrides).map_err(anyhow::Error::from) {
        Ok(config) => execute(config, src, dst, options, json),
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Run a promotion and print its outcome; the exit code says which.
fn execute(config: Config, src: &str, dst: &str, options: Options, json: bool) -> ExitCode {
    let outcome = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| Ok(rt.block_on(run(config, src, dst, options))?));
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = report.exit_code();
    let verdict = match code {
        0 => "promoted",
        1 => "denied",
        _ => "failed",
    };
    if json {
        let out = serde_json::json!({
            "result": verdict,
            "source": src,
            "destination": dst,
            "promotion": report.result.as_ref().ok(),
            "error": report.result.as_ref().err().map(|e| e.to_string()),
            "requests": report.requests,
            "audit": report.events,
        });
        println!("{out}");
    } else {
        match &report.result {
            Ok(p) if p.dry_run => println!("DRY RUN: would promote {src} ({}) to {dst}", p.digest),
            Ok(p) => println!("PROMOTED {src} ({}) to {dst}; copied {:?}", p.digest, p.copied),
            Err(e) => println!("{} {src} to {dst}: {e}", verdict.to_uppercase()),
        }
        for w in report.result.iter().flat_map(|p| &p.warnings) {
            println!("warning: {w}");
        }
    }
    ExitCode::from(code)
}

/// A reference on a configured registry (the registry must be named: a
/// promotion never falls back to a default upstream).
fn target(proxy: &Proxy, image: &str) -> Result<(Target, Reference), SetupError> {
    let (host, repo, reference) = split_reference(image).ok_or_else(|| SetupError::BadReference(image.into()))?;
    let host = host.ok_or_else(|| SetupError::NotConfigured(image.into()))?;
    let repo = repo.parse().map_err(|_| SetupError::BadReference(image.into()))?;
    let target = proxy
        .target(host, &repo)
        .ok_or_else(|| SetupError::NotConfigured(image.into()))?;
    Ok((target, reference))
}

fn destination_tag(dst: &str, reference: &Reference) -> Result<Tag, SetupError> {
    match reference {
        Reference::Tag(t) => Ok(t.clone()),
        Reference::Digest(_) => Err(SetupError::NoDestinationTag(dst.into())),
    }
}
