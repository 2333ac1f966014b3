//! Shared helpers for the integration test binaries.
//!
//! - `proxy`: run Portcullis in-process on a free loopback port.
//! - `binary`: run the built `portcullis serve` as a child process.
//! - `admission`: policies with fresh keys, signed images, pulls and their
//!   admission assertions (skopeo included).
//! - `client`: a minimal HTTP client for assertions on exact bytes/headers.
//! - `images`: build OCI/Docker images, indexes and blobs in memory.
//! - `fake`: an in-process upstream registry that misbehaves on purpose.
//! - `distribution`: the real CNCF Distribution registry (`docker-registry`).
//! - `containerd`: containerd on its own socket, driven with `ctr`.
//! - `s3`: a real S3 server (s3s-fs) in-process on a loopback port.
//! - `tls`: a CA and the certificates it signs (rcgen), as PEM files.
#![allow(dead_code)]

pub mod admission;
pub mod binary;
pub mod client;
pub mod containerd;
pub mod cosign;
pub mod distribution;
pub mod fake;
pub mod images;
pub mod proxy;
pub mod s3;
pub mod tls;

/// Fail with a clear message when a required external tool is missing;
/// tests never skip silently.
pub fn require_tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` is not installed; run scripts/test (it installs docker-registry, skopeo, containerd, podman)"
    );
}

/// `skopeo copy --all --preserve-digests` from `src` (a `docker://`
/// reference; TLS unverified, the test proxy speaks plain HTTP) to `dest`
/// (`dir:…` or `oci:…`): every platform, and a failure rather than a
/// conversion if a digest cannot be kept.
pub async fn skopeo_copy_exact(src: &str, dest: &str, limit: std::time::Duration) -> Result<String, String> {
    let args = [
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        src,
        dest,
    ];
    try_run("skopeo", &args, limit).await
}

/// Run a command with a time limit: stdout on success, a report (command,
/// status, stdout, stderr) otherwise.
pub async fn try_run(program: &str, args: &[&str], limit: std::time::Duration) -> Result<String, String> {
    let path = require_tool(program);
    let shown = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let started = std::time::Instant::now();
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("`{shown}`: {e}"))?,
        Err(_) => {
            return Err(format!("`{shown}` did not finish within {limit:?} (killed)"));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        eprintln!("`{shown}` took {:?}", started.elapsed());
        Ok(stdout)
    } else {
        Err(format!(
            "`{shown}` failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            output.status
        ))
    }
}

/// podman's global flags for a throwaway instance in `dir`: its own root,
/// run root and temp dir, vfs storage, no systemd (cgroups, events), so
/// tests run as root in a sandbox without touching the machine's podman.
pub fn isolated_podman_flags(dir: &std::path::Path) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let tmpdir = path("tmp");
    let _ = std::fs::create_dir_all(&tmpdir);
    [
        "--root".to_owned(),
        path("root"),
        "--runroot".to_owned(),
        path("run"),
        "--tmpdir".to_owned(),
        tmpdir,
    ]
    .into_iter()
    .chain(
        [
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]
        .map(str::to_owned),
    )
    .collect()
}
