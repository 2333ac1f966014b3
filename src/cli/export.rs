//! `portcullis export REF... -o FILE`: names → [`airgap::export::Request`]s
//! on the configured registries, a proxy reading through the given data
//! directory (or a temporary one), and the archive.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::{fail, runtime};

use crate::airgap::ImageName;
use crate::airgap::export::{self, ExportError, Exported, Platforms, Request};
use crate::config::{Config, Overrides};
use crate::promote::record::{PromoterKey, RecordError};
use crate::proxy::{self, Proxy, ProxyOptions};
use crate::telemetry::{self, LogFormat};

/// Options of `portcullis export`.
#[derive(Debug, Clone)]
pub struct Options {
    pub platforms: Platforms,
    pub zstd: bool,
    /// The export station's signing key (PKCS#8 PEM, ECDSA P-256).
    pub sign_key: Option<PathBuf>,
    /// Read through this proxy data directory (its store) instead of a
    /// temporary one.
    pub data_dir: Option<PathBuf>,
}

/// Why the command could not run an export (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("`{0}`: {1}")]
    BadReference(String, String),
    #[error("`{0}` must name a registry configured as an upstream")]
    NotConfigured(String),
    #[error("`{0}` is not os/arch")]
    BadPlatform(String),
    #[error(transparent)]
    Key(#[from] RecordError),
    #[error(transparent)]
    Start(#[from] proxy::StartError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

impl SetupError {
    /// 1: the policy denied an image; 2: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            SetupError::Export(e) => e.exit_code(),
            _ => 2,
        }
    }
}

/// `os/arch` → a platform filter.
pub fn platform(s: &str) -> Result<Platforms, SetupError> {
    match s.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => Ok(Platforms::Only {
            os: os.to_owned(),
            architecture: arch.to_owned(),
        }),
        _ => Err(SetupError::BadPlatform(s.to_owned())),
    }
}

/// The flags of `portcullis export` that become its [`Options`].
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--platform os/arch` (every platform without it).
    pub platform: Option<String>,
    /// `--zstd` (a `.zst` output name compresses too).
    pub zstd: bool,
    pub sign_key: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

/// Load the configuration, export `images` to `output` and print what went
/// into the archive (text, or one JSON object with `json`). Exit 1: the
/// policy denied an image, nothing written; 2: failed.
pub fn command(
    path: Option<&Path>,
    overrides: &Overrides,
    images: &[String],
    output: &Path,
    flags: Flags,
    json: bool,
) -> ExitCode {
    telemetry::init(LogFormat::Compact);
    let zstd = flags.zstd || output.extension().is_some_and(|e| e == "zst");
    let options = flags.platform.as_deref().map(platform).transpose().map(|p| Options {
        platforms: p.unwrap_or(Platforms::All),
        zstd,
        sign_key: flags.sign_key,
        data_dir: flags.data_dir,
    });
    match (Config::load(path, overrides), options) {
        (Ok(config), Ok(options)) => execute(config, images, output, options, json),
        (Err(e), _) => fail(&e, 2),
        (_, Err(e)) => fail(&e, 2),
    }
}

/// Run an export and print what went into the archive.
fn execute(config: Config, images: &[String], output: &Path, options: Options, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(run(config, images, output, options)) {
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

/// A temporary data directory, removed when the export ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Export `images` to `out`.
pub async fn run(mut config: Config, images: &[String], out: &Path, options: Options) -> Result<Exported, SetupError> {
    let key = match &options.sign_key {
        Some(path) => Some(Arc::new(PromoterKey::load(path)?)),
        None => None,
    };
    let _temp = match &options.data_dir {
        Some(dir) => {
            config.data_dir = dir.clone();
            None
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("portcullis-export-{}-{nanos}", std::process::id()));
            config.data_dir = dir.clone();
            Some(TempDir(dir))
        }
    };
    let audit = proxy::command_audit_sink(&config)?;
    let proxy = Proxy::with_options(
        Arc::new(config),
        audit,
        ProxyOptions {
            // A live server may share the data directory.
            clean_tmp: options.data_dir.is_none(),
            ..ProxyOptions::default()
        },
    )?;
    let mut requests = Vec::new();
    for image in images {
        requests.push(request(&proxy, image)?);
    }
    let opts = export::Options {
        platforms: options.platforms,
        zstd: options.zstd,
        sign_key: key,
        progress: true,
    };
    let exported = export::run(&proxy, &requests, &opts, out).await?;
    proxy.flush_usage().await;
    Ok(exported)
}

fn request(proxy: &Proxy, image: &str) -> Result<Request, SetupError> {
    let name: ImageName = image
        .parse()
        .map_err(|e: String| SetupError::BadReference(image.into(), e))?;
    let target = proxy
        .target(name.host.as_str(), &name.repo)
        .ok_or_else(|| SetupError::NotConfigured(image.into()))?;
    Ok(Request { target, name })
}
