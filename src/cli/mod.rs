//! The commands of the `portcullis` binary, one file each: `serve`,
//! `verify`, `watch`, `promote`, `export`, `import`, `store`, `policy check`
//! and `config check`. `main.rs` parses the command line and calls a
//! command's `command` (or `check`) with what it parsed; the command loads
//! the configuration, runs, prints its report and returns the exit code.
//! The helpers they share (runtime, shutdown signal, error lines) live here.
//!
//! Imports: `oci`, `config`, `telemetry`, `policy`, `store`, `proxy`, `promote`,
//! `server` (`serve` runs the `Server`), `watch`, `airgap`.

use std::process::ExitCode;

pub mod config;
pub mod export;
pub mod import;
pub mod policy;
pub mod promote;
pub mod serve;
pub mod store;
pub mod verify;
pub mod watch;

/// The multi-threaded runtime every command runs on.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Print `portcullis: <error>` on stderr; exit with `code`.
fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("portcullis: {e:#}");
    ExitCode::from(code)
}

/// 0 on success; otherwise the error chain on stderr and exit 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
