//! `portcullis watch --once` (the built binary): one line per watched tag,
//! exit 0 when every tag is allowed, 1 when one points to a denied digest,
//! 2 when one cannot be judged (here: a tag that does not exist).

use std::process::Stdio;

use crate::common::*;

async fn watch_once(config: &std::path::Path, policies: &std::path::Path) -> (i32, String, String) {
    let args = [
        std::ffi::OsStr::new("watch"),
        std::ffi::OsStr::new("--once"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--policies"),
        policies.as_os_str(),
    ];
    crate::support::binary::run(&args, None, WAIT).await
}

async fn watch_rounds(config: &std::path::Path, policies: &std::path::Path, n: &str) -> (i32, String, String) {
    let args = [
        std::ffi::OsStr::new("watch"),
        std::ffi::OsStr::new("--rounds"),
        std::ffi::OsStr::new(n),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--policies"),
        policies.as_os_str(),
    ];
    crate::support::binary::run(&args, None, WAIT).await
}

fn config(dir: &std::path::Path, registry: &Distribution, tags: &[&str]) -> std::path::PathBuf {
    let host = registry.host();
    let yaml = format!(
        "dataDir: {data}\nupstreams:\n  - host: \"{host}\"\n    url: {url}\n    insecurePlainHttp: true\nwatch:\n  targets:\n    - {{ registry: \"{host}\", repository: {REPO}, tags: [{tags}] }}\n",
        data = dir.join("data").display(),
        url = registry.url(),
        tags = tags.join(", "),
    );
    let path = dir.join(format!("watch-{}.yaml", tags.join("-")));
    std::fs::write(&path, yaml).expect("config");
    path
}

#[tokio::test]
async fn watch_once_prints_one_line_per_tag_and_fails_on_a_denied_digest() {
    let registry = Distribution::start().await;
    let a = SigningKey::generate_p256();
    let policy = policy_dir(&[("a", &a)], APPS);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = small_image(1431);
    let bad = small_image(1432);
    push_signed(&registry, REPO, "good", &good, &[&a]).await;
    registry.push_image(REPO, "bad", &bad).await;
    let host = registry.host();

    let (code, stdout, stderr) = watch_once(&config(dir.path(), &registry, &["good"]), policy.path()).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "ALLOWED {host}/{REPO}:good {} rule=apps missing=[]",
            good.manifest.digest
        )),
        "{stdout}"
    );

    let (code, stdout, stderr) = watch_once(&config(dir.path(), &registry, &["good", "bad"]), policy.path()).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ALLOWED "), "{stdout}");
    assert!(
        lines[1].starts_with(&format!(
            "DENIED {host}/{REPO}:bad {} rule=apps missing=[key-a]",
            bad.manifest.digest
        )),
        "{stdout}"
    );

    let (code, stdout, stderr) = watch_once(&config(dir.path(), &registry, &["good", "absent"]), policy.path()).await;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("MISSING {host}/{REPO}:absent")), "{stdout}");
    assert!(
        !dir.path().join("data").exists(),
        "--once leaves the data directory alone"
    );
}

/// `portcullis watch` without `--once`: runs rounds and delivers until
/// SIGTERM, then exits 0.
#[tokio::test]
async fn watch_runs_until_sigterm_and_delivers() {
    let registry = Distribution::start().await;
    let receiver = Receiver::start().await;
    let a = SigningKey::generate_p256();
    let policy = policy_dir(&[("a", &a)], APPS);
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = small_image(1471);
    push_signed(&registry, REPO, TAG, &v1, &[&a]).await;
    let host = registry.host();
    let yaml = format!(
        "dataDir: {data}\nauditLog: {data}.audit.jsonl\nupstreams:\n  - host: \"{host}\"\n    url: {url}\n    insecurePlainHttp: true\nwatch:\n  interval: 200ms\n  targets:\n    - {{ registry: \"{host}\", repository: {REPO}, tags: [{TAG}] }}\n  sinks:\n    - webhook: {{ url: \"{hook}\" }}\n",
        data = dir.path().join("data").display(),
        url = registry.url(),
        hook = receiver.url(CLOUDEVENTS),
    );
    let config = dir.path().join("watch.yaml");
    std::fs::write(&config, yaml).expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["watch", "--config"])
        .arg(&config)
        .arg("--policies")
        .arg(policy.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run portcullis watch");
    let observations = dir
        .path()
        .join("data/watch/observations")
        .join(&host)
        .join(REPO)
        .join("_watch.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !observations.is_file() {
        assert!(tokio::time::Instant::now() < deadline, "no baseline recorded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v2 = small_image(1472);
    registry.push_image(REPO, TAG, &v2).await;
    let got = receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let moved = got[0].json();
    assert_eq!(moved["type"], "dev.portcullis.tag.moved");
    assert_eq!(moved["data"]["verdict"], "denied");

    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0));
}

/// `portcullis watch --rounds N`: N rounds on the data directory's state
/// (kept afterwards), one line each.
#[tokio::test]
async fn watch_rounds_runs_stateful_rounds_and_exits() {
    let registry = Distribution::start().await;
    let a = SigningKey::generate_p256();
    let policy = policy_dir(&[("a", &a)], APPS);
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = small_image(1481);
    push_signed(&registry, REPO, "good", &v1, &[&a]).await;
    let config = config(dir.path(), &registry, &["good", "absent"]);
    let run = |n| watch_rounds(&config, policy.path(), n);
    let (code, stdout, stderr) = run("2").await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The audit log (stdout unless `auditLog` names a file) is interleaved.
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        let prefix = format!("round {}: 2 tags checked in ", i + 1);
        assert!(line.starts_with(&prefix) && line.ends_with(" s, 0 failed"), "{line}");
    }
    let observations = dir.path().join("data/watch/observations");
    assert!(observations.is_dir(), "the rounds keep their state");
    let (code, _, stderr) = run("0").await;
    assert_eq!(code, 2, "--rounds 0 is refused: {stderr}");
}
