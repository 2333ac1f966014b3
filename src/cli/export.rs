//! `portcullis export REF... -o FILE`: names → [`airgap::export::Request`]s
//! on the configured registries, a proxy reading through the given data
//! directory (or a temporary one), and the archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::airgap::ImageName;
use crate::airgap::export::{self, ExportError, Exported, Platforms, Request};
use crate::config::Config;
use crate::promote::record::{PromoterKey, RecordError};
use crate::proxy::{self, Proxy, ProxyOptions};

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
