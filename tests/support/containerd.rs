//! containerd (1.6, Debian's) on its own socket with its root and state in a
//! temp dir, driven with `ctr`: the Go client that pulls as the CRI does.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::distribution::Distribution;
use super::proxy::TestProxy;
use super::try_run;

/// Time limit for one `ctr` command.
pub const CTR_LIMIT: Duration = Duration::from_secs(120);

/// containerd 1.6 on its own socket, root and state in a temp dir (CRI
/// disabled), in its own session; killed and reaped on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Containerd {
    pub async fn start() -> Containerd {
        let binary = super::require_tool("containerd");
        super::require_tool("ctr");
        let setsid = super::require_tool("setsid");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            ttrpc = d.join("containerd-ttrpc.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        // `setsid` execs containerd in place (the child is not a process
        // group leader), so the PID kept here is containerd's.
        let child = std::process::Command::new(setsid)
            .arg(binary)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited with {status}:\n{}", c.log());
            }
            if try_run("ctr", &["--address", &c.socket(), "version"], Duration::from_secs(10))
                .await
                .is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready within 30 s:\n{}",
                c.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn socket(&self) -> String {
        self.dir.path().join("containerd.sock").display().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address <sock> -n t <args>`.
    pub async fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let sock = self.socket();
        let mut all = vec!["--address", sock.as_str(), "-n", "t"];
        all.extend_from_slice(args);
        try_run("ctr", &all, CTR_LIMIT)
            .await
            .map_err(|e| format!("{e}\n--- containerd log (tail) ---\n{}", tail(&self.log(), 4000)))
    }

    /// A hosts directory for `registry` whose only `[host]` is the proxy and
    /// whose `server` is a closed port: no fallback can hide a failing proxy.
    pub fn mirror_hosts_dir(&self, registry: &Distribution, proxy: &TestProxy) -> PathBuf {
        let hosts = self.dir.path().join("hosts");
        let dir = hosts.join(registry.host());
        std::fs::create_dir_all(&dir).expect("hosts dir");
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:9\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                proxy.addr
            ),
        )
        .expect("hosts.toml");
        hosts
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
