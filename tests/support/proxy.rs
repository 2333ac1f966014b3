//! Portcullis in-process on a free loopback port, stopped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis::config::{Config, Overrides};
use portcullis::oci::Digest;
use portcullis::server::Server;
use tokio::sync::oneshot;

pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestProxy {
    /// Start with a YAML configuration (its `listen`/`dataDir` are replaced
    /// by a free port and a temp dir).
    pub async fn start(yaml: &str) -> TestProxy {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data_dir.path().to_owned()),
            default_upstream: None,
            policies: None,
            integrity_only: true,
            offline: false,
        };
        let config = Config::from_yaml(yaml, "test config", &overrides).expect("valid test config");
        Self::start_config(config, data_dir).await
    }

    /// Start with a YAML configuration (upstreams, default upstream) and the
    /// policies in `dir` (enforced, not integrity-only).
    pub async fn with_config_and_policies(yaml: &str, dir: &std::path::Path) -> TestProxy {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data_dir.path().to_owned()),
            default_upstream: None,
            policies: Some(dir.to_owned()),
            integrity_only: false,
            offline: false,
        };
        let config = Config::from_yaml(yaml, "test config", &overrides).expect("valid test config");
        Self::start_config(config, data_dir).await
    }

    /// Start with the built-in defaults plus `--default-upstream url`.
    pub async fn with_default_upstream(url: &str) -> TestProxy {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data_dir.path().to_owned()),
            default_upstream: Some(url.parse().expect("upstream url")),
            policies: None,
            integrity_only: true,
            offline: false,
        };
        let config = Config::load(None, &overrides).expect("config");
        Self::start_config(config, data_dir).await
    }

    /// Start with `--default-upstream url` and the policies in `dir`;
    /// audit events go to `audit.jsonl` in the data directory.
    pub async fn with_policies(url: &str, dir: &std::path::Path) -> TestProxy {
        Self::with_policies_in(url, dir, tempfile::tempdir().expect("tempdir")).await
    }

    /// Stop this proxy and start a new one with the policies in `dir` on the
    /// same data directory (store, persisted verdicts and audit log carry
    /// over; the port changes).
    pub async fn restart_with_policies(mut self, url: &str, dir: &std::path::Path) -> TestProxy {
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        Self::with_policies_in(url, dir, data_dir).await
    }

    /// Stop this proxy and hand back its data directory (store, persisted
    /// verdicts, audit log), e.g. to change files before
    /// [`with_policies_in`](Self::with_policies_in) starts a new one on it.
    pub fn stop(mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Start with `--default-upstream url` and the policies in `dir` on an
    /// existing data directory.
    pub async fn with_policies_in(url: &str, dir: &std::path::Path, data_dir: tempfile::TempDir) -> TestProxy {
        Self::with_policies_and_yaml(url, dir, data_dir, "").await
    }

    /// [`with_policies_in`](Self::with_policies_in) with `extra` YAML
    /// appended to the configuration (e.g. a `watch:` section).
    pub async fn with_policies_and_yaml(
        url: &str,
        dir: &std::path::Path,
        data_dir: tempfile::TempDir,
        extra: &str,
    ) -> TestProxy {
        let yaml = format!("auditLog: {}\n{extra}", data_dir.path().join("audit.jsonl").display());
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data_dir.path().to_owned()),
            default_upstream: Some(url.parse().expect("upstream url")),
            policies: Some(dir.to_owned()),
            integrity_only: false,
            offline: false,
        };
        let config = Config::from_yaml(&yaml, "test config", &overrides).expect("config");
        Self::start_config(config, data_dir).await
    }

    /// The audit events written so far.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.data_dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn start_config(config: Config, data_dir: tempfile::TempDir) -> TestProxy {
        let server = Server::bind(config).await.expect("proxy binds");
        let addr = server.local_addr().expect("addr");
        let admin = server.admin_addr().expect("admin addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin,
            data_dir,
            shutdown: Some(tx),
        }
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://<admin listener>` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Where a committed blob would be.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.data_dir
            .path()
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// Whether `digest` is stored within 15 s: a verified blob is committed
    /// (fsync, rename) just after its last byte is released to clients.
    pub async fn stores_blob(&self, digest: &Digest) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !self.has_blob(digest) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Where a stored manifest would be.
    pub fn has_manifest(&self, digest: &Digest) -> bool {
        let hex = digest.hex();
        self.data_dir
            .path()
            .join("manifests")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
            .exists()
    }

    /// Partial downloads left in `tmp/` (must be none after a failure).
    pub fn temp_files(&self) -> usize {
        std::fs::read_dir(self.data_dir.path().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
