//! `portcullis config check FILE`: validate a configuration file and print
//! what it would do.

use std::path::Path;
use std::process::ExitCode;

use super::report;
use crate::config::{Config, Overrides};

/// Print the configuration's description (exit 1: invalid).
pub fn check(file: &Path) -> ExitCode {
    report(
        Config::load(Some(file), &Overrides::default())
            .map(|c| print!("{}", c.describe()))
            .map_err(Into::into),
    )
}
