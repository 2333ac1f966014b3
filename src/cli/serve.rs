//! `portcullis serve`: the proxy itself, until SIGTERM/Ctrl-C.

use std::path::Path;
use std::process::ExitCode;

use super::{report, runtime, shutdown_signal};
use crate::config::{Config, Overrides};
use crate::server::Server;
use crate::telemetry::{self, LogFormat};

/// Load the configuration (`path`, else the built-in default, with the
/// flags' `overrides`) and serve until a shutdown signal (exit 1: failed).
pub fn command(path: Option<&Path>, overrides: &Overrides, log_format: LogFormat) -> ExitCode {
    telemetry::init(log_format);
    report(
        Config::load(path, overrides)
            .map_err(anyhow::Error::from)
            .and_then(serve),
    )
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.log_startup();
        server.run(shutdown_signal()).await;
        Ok(())
    })
}
