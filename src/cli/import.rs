//! `portcullis import FILE`: the site's configuration and policy, the
//! archive, and the report (what was imported, what was refused and why).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{fail, runtime};

use crate::airgap::import::{self, ImportError, Options as ImportOptions, Report};
use crate::airgap::record::{ExportStation, SignatureError};
use crate::config::{Config, Overrides};
use crate::oci::{RegistryHost, RepoName};
use crate::telemetry::{self, LogFormat};

/// Options of `portcullis import`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `registry/repository` for entries named by a bare tag.
    pub repository: Option<String>,
    pub all_or_nothing: bool,
    /// Require an export record signed with this public key (PEM).
    pub export_key: Option<PathBuf>,
}

/// Why the command could not run an import (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--repository `{0}` is not registry/repository")]
    BadRepository(String),
    #[error(transparent)]
    Key(#[from] SignatureError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// Import `archive` under `config`.
pub async fn run(config: Config, archive: &Path, options: Options) -> Result<Report, SetupError> {
    let default_repository = options.repository.as_deref().map(repository).transpose()?;
    // The flag, else the site's configuration (`airgap.exportKey`).
    let key = options.export_key.clone().or_else(|| config.export_key.clone());
    let export_station = key.as_deref().map(ExportStation::load).transpose()?;
    let opts = ImportOptions {
        default_repository,
        all_or_nothing: options.all_or_nothing,
        export_station,
    };
    Ok(import::run(config, archive, &opts).await?)
}

/// Load the configuration, import `archive` and print one line per image
/// (text, or one JSON object with `json`). Exit 1: something was refused;
/// 2: failed.
pub fn command(path: Option<&Path>, overrides: &Overrides, archive: &Path, options: Options, json: bool) -> ExitCode {
    telemetry::init(LogFormat::Compact);
    match Config::load(path, overrides) {
        Ok(config) => execute(config, archive, options, json),
        Err(e) => fail(&e, 2),
    }
}

/// Run an import and print one line per image.
fn execute(config: Config, archive: &Path, options: Options, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(run(config, archive, options)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                for i in &report.imported {
                    println!(
                        "IMPORTED {} {} ({} manifests, {} blobs)",
                        i.name, i.digest, i.manifests, i.blobs
                    );
                }
                for r in &report.refused {
                    println!("REFUSED {}: {}", r.name, r.reason);
                }
                if let Some(p) = &report.archive_problem {
                    println!("ARCHIVE: {p}");
                }
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => fail(&e, 2),
    }
}

fn repository(s: &str) -> Result<(RegistryHost, RepoName), SetupError> {
    let bad = || SetupError::BadRepository(s.to_owned());
    let (host, repo) = s.split_once('/').ok_or_else(bad)?;
    Ok((host.parse().map_err(|_| bad())?, repo.parse().map_err(|_| bad())?))
}
