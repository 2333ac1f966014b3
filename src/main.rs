//! The `portcullis` binary: parse the command line, load the configuration,
//! run. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::{Config, Overrides, UpstreamUrl};
use portcullis::server::Server;
use portcullis::telemetry::{self, LogFormat};

/// A cold blob arrives in 256 KiB receive buffers, a few thousand per
/// 512 MiB, each freed once hashed, written and sent. glibc's malloc hands
/// such freed buffers back to the kernel and faults fresh zeroed pages in for
/// the next ones (20–35k page faults per 512 MiB); mimalloc reuses them
/// (about a hundred), which took ~8% off the proxy's CPU per cold byte.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Address of the admin listener: /metrics, /healthz, /readyz
        /// (overrides `admin.listen`; default 127.0.0.1:5001).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Cache directory (overrides the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Upstream for paths that name no registry, e.g. http://127.0.0.1:5002 (the admin listener takes 5001)
        /// (http:// means plain HTTP; its host is allow-listed).
        #[arg(long)]
        default_upstream: Option<UpstreamUrl>,
        /// Signature policy directory (overrides the file; default ./policies).
        #[arg(long, env = "PORTCULLIS_POLICIES")]
        policies: Option<PathBuf>,
        /// Serve whatever matches its digests, with no signature policy.
        #[arg(long)]
        integrity_only: bool,
        /// Serve every upstream from the store only (imported or earlier
        /// admitted content): no request ever leaves for the network.
        #[arg(long)]
        offline: bool,
        #[arg(long, value_enum, default_value = "compact")]
        log_format: LogFormat,
    },
    /// Write admitted images and all their verification material into one
    /// OCI image layout archive for an air-gapped site (exit 1: the policy
    /// denied an image, nothing written; 2: failed).
    Export {
        /// `registry/repository:tag` on configured upstreams.
        #[arg(required = true)]
        images: Vec<String>,
        /// The archive to write (`.tar`, or zstd-compressed with --zstd or a `.zst` name).
        #[arg(short = 'o', long)]
        output: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "PORTCULLIS_POLICIES")]
        policies: Option<PathBuf>,
        /// Read through this proxy data directory (no second download of what is cached).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only this platform of each index (`os/arch`); the index itself travels whole.
        #[arg(long, conflicts_with = "all_platforms")]
        platform: Option<String>,
        /// Every platform of each index (the default).
        #[arg(long)]
        all_platforms: bool,
        #[arg(long)]
        zstd: bool,
        /// Sign the export record with this PKCS#8 PEM ECDSA P-256 key.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify an export archive against this site's own policy and admit
    /// what passes into the store, pinned (exit 1: something was refused).
    Import {
        archive: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "PORTCULLIS_POLICIES")]
        policies: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `registry/repository` for entries named only by a tag (skopeo's oci-archive:FILE:TAG).
        #[arg(long)]
        repository: Option<String>,
        /// Import nothing unless every image passes.
        #[arg(long)]
        all_or_nothing: bool,
        /// Require an export record signed by this export station public key (PEM;
        /// overrides `airgap.exportKey`).
        #[arg(long)]
        export_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify one image reference the way the proxy would (exit 0 allow, 1 deny).
    Verify {
        /// `[registry/]repository[:tag][@digest]`
        image: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Upstream for references that name no registry (as for `serve`).
        #[arg(long)]
        default_upstream: Option<UpstreamUrl>,
    },
    /// Watch the tags of the configuration's `watch:` section (exit codes
    /// with --once: 0 all allowed, 1 a tag points to a denied digest, 2 some
    /// tag could not be judged).
    Watch {
        /// Judge every watched tag now, print one line per tag, and exit.
        #[arg(long, conflicts_with = "rounds")]
        once: bool,
        /// Run N rounds back to back with the data directory's state (as
        /// the watch does), print each round's time, and exit. Events are
        /// queued for the sinks, delivered by the next `watch` or `serve`.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        rounds: Option<u32>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "PORTCULLIS_POLICIES")]
        policies: Option<PathBuf>,
        /// Upstream for references that name no registry (as for `serve`).
        #[arg(long)]
        default_upstream: Option<UpstreamUrl>,
    },
    /// Copy a verified image to another registry and move its tag last.
    ///
    /// Resolves SRC once, admits that digest through the proxy's gate, copies
    /// blobs, manifests and verification material to DST, admits the copy
    /// again at DST, and only then moves DST's tag (if it still names what it
    /// named at the start, or --expect-current).
    ///
    /// Exit codes: 0 promoted (or would be, with --dry-run); 1 denied by
    /// policy (source or destination); 2 failed to complete (unreachable,
    /// corrupt source, destination tag changed concurrently, bad arguments):
    /// the destination tag is untouched and a rerun copies only what is missing.
    Promote {
        /// `registry/repository[:tag][@digest]` on a configured upstream.
        src: String,
        /// `registry/repository:tag` on a configured upstream with push credentials.
        dst: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The digest DST's tag must name before it moves, or `none` (must not exist).
        #[arg(long)]
        expect_current: Option<portcullis::promote::Expected>,
        /// Resolve, admit and check the destination tag; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Copy every platform an index lists, with each child's
        /// verification material: what a promotion always does (the index's
        /// digest names all of them); accepted for scripts that say so.
        #[arg(long)]
        all_platforms: bool,
        /// One JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Sign a promotion record (in-toto SLSA Verification Summary in a
        /// key-based Sigstore bundle) with this PKCS#8 PEM ECDSA P-256 key and
        /// attach it at DST as a referrer of the promoted digest.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// Blobs larger than this are uploaded in chunks of this size.
        #[arg(long, default_value_t = portcullis::promote::DEFAULT_CHUNK_BYTES, hide = true)]
        chunk_bytes: usize,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The cache on disk: stats, verify (re-hash, quarantine), gc (evict to the cap).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Cache directory (overrides the file).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum StoreCommand {
    /// Size, counts, pins, hit ratio.
    Stats,
    /// Re-hash every blob and manifest; move mismatches to quarantine/ (exit 1 if any).
    Verify,
    /// Evict least recently served blobs down to storage.maxBytes now.
    Gc,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate the policies in a directory and warn about shadowed rules.
    Check { dir: PathBuf },
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
            admin_listen,
            data_dir,
            default_upstream,
            policies,
            integrity_only,
            offline,
            log_format,
        } => {
            telemetry::init(log_format);
            let overrides = Overrides {
                listen,
                admin_listen,
                data_dir,
                default_upstream,
                policies,
                integrity_only,
                offline,
            };
            report(
                Config::load(config.as_deref(), &overrides)
                    .map_err(anyhow::Error::from)
                    .and_then(serve),
            )
        }
        Command::Verify {
            image,
            config,
            policies,
            default_upstream,
        } => {
            telemetry::init(LogFormat::Compact);
            let overrides = Overrides {
                policies,
                default_upstream,
                ..Default::default()
            };
            let outcome = Config::load(config.as_deref(), &overrides)
                .map_err(anyhow::Error::from)
                .and_then(|c| verify(c, &image));
            match outcome {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Watch {
            once,
            rounds,
            config,
            policies,
            default_upstream,
        } => {
            telemetry::init(LogFormat::Compact);
            let overrides = Overrides {
                policies,
                default_upstream,
                ..Default::default()
            };
            Config::load(config.as_deref(), &overrides)
                .map_err(anyhow::Error::from)
                .and_then(|c| watch(c, once, rounds))
                .unwrap_or_else(|e| {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::from(2)
                })
        }
        Command::Promote {
            src,
            dst,
            config,
            policies,
            expect_current,
            dry_run,
            all_platforms: _,
            json,
            chunk_bytes,
            sign_key,
        } => {
            telemetry::init(LogFormat::Compact);
            let overrides = Overrides {
                policies,
                ..Default::default()
            };
            let options = portcullis::cli::promote::Options {
                expect_current,
                dry_run,
                chunk_bytes,
                sign_key,
            };
            match Config::load(config.as_deref(), &overrides).map_err(anyhow::Error::from) {
                Ok(config) => promote(config, &src, &dst, options, json),
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::from(portcullis::cli::promote::EXIT_FAILED)
                }
            }
        }
        Command::Export {
            images,
            output,
            config,
            policies,
            data_dir,
            platform,
            all_platforms: _,
            zstd,
            sign_key,
            json,
        } => {
            telemetry::init(LogFormat::Compact);
            let overrides = Overrides {
                policies,
                ..Default::default()
            };
            let zstd = zstd || output.extension().is_some_and(|e| e == "zst");
            let options = platform
                .as_deref()
                .map(portcullis::cli::export::platform)
                .transpose()
                .map(|p| portcullis::cli::export::Options {
                    platforms: p.unwrap_or(portcullis::airgap::export::Platforms::All),
                    zstd,
                    sign_key,
                    data_dir,
                });
            match (Config::load(config.as_deref(), &overrides), options) {
                (Ok(config), Ok(options)) => export(config, &images, &output, options, json),
                (Err(e), _) => fail(&e, 2),
                (_, Err(e)) => fail(&e, 2),
            }
        }
        Command::Import {
            archive,
            config,
            policies,
            data_dir,
            repository,
            all_or_nothing,
            export_key,
            json,
        } => {
            telemetry::init(LogFormat::Compact);
            let overrides = Overrides {
                policies,
                data_dir,
                ..Default::default()
            };
            let options = portcullis::cli::import::Options {
                repository,
                all_or_nothing,
                export_key,
            };
            match Config::load(config.as_deref(), &overrides) {
                Ok(config) => import(config, &archive, options, json),
                Err(e) => fail(&e, 2),
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => report(policy_check(&dir)),
        Command::Store {
            command,
            config,
            data_dir,
        } => {
            let overrides = Overrides {
                data_dir,
                ..Default::default()
            };
            match Config::load(config.as_deref(), &overrides).map_err(anyhow::Error::from) {
                Ok(config) => store(command, &config),
                Err(e) => report(Err(e)),
            }
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
        server.log_startup();
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Print the verdict with its reasons; `Ok(true)` when allowed.
fn verify(config: Config, image: &str) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(portcullis::cli::verify::run(config, image))?;
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

/// Run a promotion and print its outcome; the exit code says which.
fn promote(config: Config, src: &str, dst: &str, options: portcullis::cli::promote::Options, json: bool) -> ExitCode {
    use portcullis::cli::promote::{self, EXIT_FAILED};
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| Ok(rt.block_on(promote::run(config, src, dst, options))?));
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

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("portcullis: {e:#}");
    ExitCode::from(code)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Run an export and print what went into the archive.
fn export(
    config: Config,
    images: &[String],
    output: &std::path::Path,
    options: portcullis::cli::export::Options,
    json: bool,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(portcullis::cli::export::run(config, images, output, options)) {
        Ok(done) => {
            if json {
                println!("{}", serde_json::to_string(&done).unwrap_or_default());
            } else {
                for i in &done.images {
                    println!("EXPORTED {} {} ({} material)", i.reference, i.digest, i.material.len());
                }
                println!(
                    "{}: {} blobs, {} bytes{}",
                    output.display(),
                    done.blobs,
                    done.bytes,
                    if done.signed { ", signed export record" } else { "" }
                );
                for w in &done.warnings {
                    println!("warning: {w}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            let verdict = if code == 1 { "DENIED" } else { "FAILED" };
            println!("{verdict}: {e}");
            ExitCode::from(code)
        }
    }
}

/// Run an import and print one line per image.
fn import(
    config: Config,
    archive: &std::path::Path,
    options: portcullis::cli::import::Options,
    json: bool,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(portcullis::cli::import::run(config, archive, options)) {
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

fn store(command: StoreCommand, config: &Config) -> ExitCode {
    use portcullis::cli::store;
    let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
    let outcome = match command {
        StoreCommand::Stats => store::stats(config).map(|s| {
            println!("store: {}", s.location);
            println!("blobs: {} ({})", s.usage.blobs, size(s.usage.bytes));
            match s.max_bytes {
                Some(cap) => println!(
                    "cap: {} ({:.1}% used)",
                    size(cap),
                    s.usage.bytes as f64 * 100.0 / cap.max(1) as f64
                ),
                None => println!("cap: none"),
            }
            println!("pinned: {} ({})", s.usage.pinned, size(s.usage.pinned_bytes));
            match s.hit_ratio() {
                Some(r) => println!(
                    "hit ratio: {:.1}% ({} served from the store, {} downloaded)",
                    r * 100.0,
                    s.usage.hits,
                    s.usage.downloads
                ),
                None => println!("hit ratio: - (nothing served yet)"),
            }
            ExitCode::SUCCESS
        }),
        StoreCommand::Verify => store::verify(config).map(|r| {
            println!("checked: {} files", r.checked);
            for path in &r.quarantined {
                println!("MISMATCH: moved to {}", path.display());
            }
            if r.quarantined.is_empty() {
                println!("ok: every file hashes to its digest");
                ExitCode::SUCCESS
            } else {
                println!("{} files did not match their digest", r.quarantined.len());
                ExitCode::from(1)
            }
        }),
        StoreCommand::Gc => store::gc(config).map(|(evicted, left)| {
            println!(
                "evicted: {} blobs ({}); held now: {}",
                evicted.blobs.len(),
                size(evicted.bytes),
                size(left)
            );
            ExitCode::SUCCESS
        }),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("portcullis: {e}");
        ExitCode::FAILURE
    })
}

/// `watch --once`: one line per tag and its exit status; `--rounds N`:
/// one line per round; otherwise run until a shutdown signal.
fn watch(config: Config, once: bool, rounds: Option<u32>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if let Some(n) = rounds {
            let failed = portcullis::cli::watch::rounds(config, n, |line| println!("{line}")).await?;
            return Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
        if !once {
            portcullis::cli::watch::run(config, shutdown_signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let reports = portcullis::cli::watch::once(config).await?;
        for r in &reports {
            println!("{}", r.line());
        }
        Ok(ExitCode::from(portcullis::cli::watch::exit_code(&reports)))
    })
}

fn policy_check(dir: &std::path::Path) -> anyhow::Result<()> {
    let p = portcullis::policy::load_dir(dir)?;
    println!("policy in {}: valid, revision {}", dir.display(), p.revision);
    println!(
        "  authorities: {}",
        p.authorities.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for r in &p.rules {
        let registry = r
            .registry
            .as_ref()
            .map_or("any registry".to_owned(), |g| g.as_str().to_owned());
        let repos: Vec<&str> = r.repositories.iter().map(|g| g.as_str()).collect();
        println!(
            "  rule {} ({:?}): {registry}, repositories {}",
            r.name,
            r.mode,
            repos.join(", ")
        );
    }
    println!("  no match: {:?}", p.no_match);
    if let Some(promoter) = &p.promoter {
        println!("  promotion: the promoter's authority {promoter} never satisfies a promoted source");
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
    Ok(())
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
