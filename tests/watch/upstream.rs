//! The watcher against an upstream that rate-limits: a `429` with
//! `Retry-After` is waited out, not reported as a failure.

use crate::common::*;
use crate::support::fake::{FakeRegistry, Fault};

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_the_tag_still_checked() {
    let fake = FakeRegistry::start().await;
    let image = small_image(1461);
    fake.put_image(REPO, TAG, &image);
    fake.set_fault(
        TAG,
        Fault::Status {
            code: 429,
            times: 1,
            retry_after: Some(1),
        },
    );
    let data = tempfile::tempdir().expect("tempdir");
    let audit = data.path().join("watch-audit.jsonl");
    let yaml = format!(
        r#"auditLog: {audit}
upstreams:
  - {{ host: "{host}", url: "{url}", insecurePlainHttp: true }}
watch:
  interval: 200ms
  targets:
    - {{ registry: "{host}", repository: {REPO}, tags: [{TAG}] }}
"#,
        audit = audit.display(),
        host = fake.host(),
        url = fake.url(),
    );
    let proxy = TestProxy::start(&yaml).await;
    let path = proxy
        .data_dir
        .path()
        .join("watch/observations")
        .join(fake.host())
        .join(REPO)
        .join("_watch.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    let observed = loop {
        if let Some(o) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        {
            break o;
        }
        assert!(tokio::time::Instant::now() < deadline, "no observation recorded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(observed[TAG]["digest"], image.manifest.digest.to_string());
    assert!(
        fake.manifest_requests("HEAD", REPO, TAG) >= 2,
        "asked again after the 429"
    );
    let failures: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("watch.failed"))
        .map(str::to_owned)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}
