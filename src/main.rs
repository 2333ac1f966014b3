//! The `portcullis` binary: parse the command line and start the command.
//! Each command (loading the configuration, running, printing, the exit
//! code) lives in the library's `cli` module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::cli;
use portcullis::config::{Overrides, UpstreamUrl};
use portcullis::telemetry::LogFormat;

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
            let overrides = Overrides {
                listen,
                admin_listen,
                data_dir,
                default_upstream,
                policies,
                integrity_only,
                offline,
            };
            cli::serve::command(config.as_deref(), &overrides, log_format)
        }
        Command::Verify {
            image,
            config,
            policies,
            default_upstream,
        } => {
            let overrides = Overrides {
                policies,
                default_upstream,
                ..Default::default()
            };
            cli::verify::command(config.as_deref(), &overrides, &image)
        }
        Command::Watch {
            once,
            rounds,
            config,
            policies,
            default_upstream,
        } => {
            let overrides = Overrides {
                policies,
                default_upstream,
                ..Default::default()
            };
            cli::watch::command(config.as_deref(), &overrides, once, rounds)
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
            let overrides = Overrides {
                policies,
                ..Default::default()
            };
            let options = cli::promote::Options {
                expect_current,
                dry_run,
                chunk_bytes,
                sign_key,
            };
            cli::promote::command(config.as_deref(), &overrides, &src, &dst, options, json)
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
            let overrides = Overrides {
                policies,
                ..Default::default()
            };
            let flags = cli::export::Flags {
                platform,
                zstd,
                sign_key,
                data_dir,
            };
            cli::export::command(config.as_deref(), &overrides, &images, &output, flags, json)
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
            let overrides = Overrides {
                policies,
                data_dir,
                ..Default::default()
            };
            let options = cli::import::Options {
                repository,
                all_or_nothing,
                export_key,
            };
            cli::import::command(config.as_deref(), &overrides, &archive, options, json)
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => cli::policy::check(&dir),
        Command::Store {
            command,
            config,
            data_dir,
        } => {
            let overrides = Overrides {
                data_dir,
                ..Default::default()
            };
            let action = match command {
                StoreCommand::Stats => cli::store::Action::Stats,
                StoreCommand::Verify => cli::store::Action::Verify,
                StoreCommand::Gc => cli::store::Action::Gc,
            };
            cli::store::command(config.as_deref(), &overrides, action)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => cli::config::check(&file),
    }
}
