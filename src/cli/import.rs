//! `portcullis import FILE`: the site's configuration and policy, the
//! archive, and the report (what was imported, what was refused and why).

use std::path::{Path, PathBuf};

use crate::airgap::import::{self, ImportError, Options as ImportOptions, Report};
use crate::airgap::record::{ExportStation, SignatureError};
use crate::config::Config;
use crate::oci::{RegistryHost, RepoName};

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

fn repository(s: &str) -> Result<(RegistryHost, RepoName), SetupError> {
    let bad = || SetupError::BadRepository(s.to_owned());
    let (host, repo) = s.split_once('/').ok_or_else(bad)?;
    Ok((host.parse().map_err(|_| bad())?, repo.parse().map_err(|_| bad())?))
}
