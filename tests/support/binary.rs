//! The built `portcullis` binary as a child process: `serve` on free
//! loopback ports (registry and admin), its log kept in a file, signals
//! sent with `kill`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long the binary gets to start listening.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running `portcullis serve`, killed when dropped.
pub struct Served {
    pub child: tokio::process::Child,
    /// `127.0.0.1:port` of the registry listener.
    pub listen: String,
    /// `127.0.0.1:port` of the admin listener.
    pub admin: String,
    pub data: tempfile::TempDir,
    /// Standard error (the log).
    pub log: PathBuf,
}

/// A port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `portcullis serve --default-upstream upstream` plus `extra`, once its
/// registry port accepts connections.
pub async fn serve(upstream: &str, extra: &[&str]) -> Served {
    let data = tempfile::tempdir().expect("data dir");
    let store = data.path().join("store");
    serve_in(upstream, data, &store, extra).await
}

/// Like [`serve`], with the store in `store` (kept across restarts); the
/// log goes to `data`.
pub async fn serve_in(upstream: &str, data: tempfile::TempDir, store: &std::path::Path, extra: &[&str]) -> Served {
    serve_with_env(upstream, data, store, extra, &[]).await
}

/// Like [`serve_in`], with environment variables set for the child (the
/// AWS credentials of a test S3 server).
pub async fn serve_with_env(
    upstream: &str,
    data: tempfile::TempDir,
    store: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Served {
    let listen = format!("127.0.0.1:{}", free_port());
    serve_at(&listen, upstream, data, store, extra, env).await
}

/// Like [`serve_with_env`], listening on `listen` (a port chosen before:
/// replicas that list each other in their configuration).
pub async fn serve_at(
    listen: &str,
    upstream: &str,
    data: tempfile::TempDir,
    store: &std::path::Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Served {
    let listen = listen.to_owned();
    let admin = format!("127.0.0.1:{}", free_port());
    let log = data.path().join(format!("portcullis-{}.log", free_port()));
    let stderr = std::fs::File::create(&log).expect("log file");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", &listen, "--admin-listen", &admin])
        .args(["--default-upstream", upstream])
        .arg("--data-dir")
        .arg(store)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("run portcullis serve");
    let deadline = Instant::now() + START_LIMIT;
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "portcullis did not start listening; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Served {
        child,
        listen,
        admin,
        data,
        log,
    }
}

impl Served {
    /// Send a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Run the built `portcullis` with `args` (in `cwd` when given) to its end
/// within `limit`: (exit code, stdout, stderr).
pub async fn run(args: &[&std::ffi::OsStr], cwd: Option<&std::path::Path>, limit: Duration) -> (i32, String, String) {
    run_with_env(args, cwd, limit, &[]).await
}

/// Like [`run`], with environment variables set for the child.
pub async fn run_with_env(
    args: &[&std::ffi::OsStr],
    cwd: Option<&std::path::Path>,
    limit: Duration,
    env: &[(&str, String)],
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd.spawn().expect("run portcullis");
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("portcullis {args:?} did not finish within {limit:?}"))
        .expect("portcullis output");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
