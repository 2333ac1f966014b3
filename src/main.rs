//! The `portcullis` binary: parse the command line, load the configuration,
//! run. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::{Config, Overrides, UpstreamUrl};
use portcullis::server::Server;
use portcullis::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A verifying pull-through OCI registry proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the built-in default configuration without --config).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Cache directory (overrides the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Upstream for paths that name no registry, e.g. http://127.0.0.1:5001
        /// (http:// means plain HTTP; its host is allow-listed).
        #[arg(long)]
        default_upstream: Option<UpstreamUrl>,
        #[arg(long, value_enum, default_value = "compact")]
        log_format: LogFormat,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print what it would do.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
            default_upstream,
            log_format,
        } => {
            telemetry::init(log_format);
            let overrides = Overrides {
                listen,
                data_dir,
                default_upstream,
            };
            report(
                Config::load(config.as_deref(), &overrides)
                    .map_err(anyhow::Error::from)
                    .and_then(serve),
            )
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => report(
            Config::load(Some(&file), &Overrides::default())
                .map(|c| print!("{}", c.describe()))
                .map_err(Into::into),
        ),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        if let Some(addr) = server.local_addr() {
            tracing::info!(%addr, "portcullis listening");
        }
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

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

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
