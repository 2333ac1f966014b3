//! Replicas sharing one store: two watchers (two in-process proxies, each
//! with its own data directory for queues, on one in-memory bucket whose
//! conditional writes are atomic) watch the same tag, rounds running at
//! the same time. The tag moves once: exactly one of them reports it, and
//! the receiver gets exactly one `tag.moved`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::{Config, Overrides};
use portcullis::proxy::{Proxy, ProxyOptions};
use portcullis::store::backend::Backend;
use portcullis::store::backend::object::ObjectBackend;
use portcullis::telemetry::audit::AuditSink;
use portcullis::watch::Watcher;

use crate::common::*;
use crate::support::fake::FakeRegistry;

/// A replica: its own data directory (queues, audit log) on the shared bucket.
struct Replica {
    data: tempfile::TempDir,
    watcher: Arc<Watcher>,
}

impl Replica {
    fn start(bucket: &Arc<object_store::memory::InMemory>, fake: &FakeRegistry, receiver: &Receiver) -> Replica {
        let data = tempfile::tempdir().expect("tempdir");
        let tmp = data.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let secret = data.path().join("hook");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
        let backend: Arc<dyn Backend> =
            Arc::new(ObjectBackend::new(bucket.clone(), "cache", tmp, "memory".into()).expect("backend"));
        let yaml = format!(
            r#"upstreams:
  - {{ host: "{host}", url: "{url}", insecurePlainHttp: true }}
watch:
  interval: 200ms
  reverify: 1h
  targets:
    - {{ registry: "{host}", repository: {REPO}, tags: [{TAG}] }}
  sinks:
    - webhook: {{ name: soc, url: "{ce}", secretFile: "{secret}", format: cloudevents }}
"#,
            host = fake.host(),
            url = fake.url(),
            ce = receiver.url(CLOUDEVENTS),
            secret = secret.display(),
        );
        let overrides = Overrides {
            data_dir: Some(data.path().to_owned()),
            integrity_only: true,
            ..Default::default()
        };
        let config = Config::from_yaml(&yaml, "replica test", &overrides).expect("config");
        let audit = AuditSink::file(&data.path().join("audit.log")).expect("audit log");
        let options = ProxyOptions {
            backend: Some(backend),
            ..ProxyOptions::default()
        };
        let proxy = Proxy::with_options(Arc::new(config), audit, options).expect("proxy");
        let watcher = Watcher::new(proxy).expect("watcher").expect("watch configured");
        Replica { data, watcher }
    }

    /// The watch events this replica emitted (its audit log), by type.
    fn events(&self) -> Vec<String> {
        audit_events(self.data.path())
    }
}

fn audit_events(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["record"] == "watch")
        .filter_map(|v| v["event"].as_str().map(str::to_owned))
        .collect()
}

/// Both replicas run a round at the same time; both check every tag.
async fn rounds_together(a: &Replica, b: &Replica) {
    let (sa, sb) = tokio::join!(a.watcher.round(), b.watcher.round());
    assert_eq!((sa.tags, sa.failed), (1, 0), "replica a: {sa:?}");
    assert_eq!((sb.tags, sb.failed), (1, 0), "replica b: {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_bucket_report_a_move_once() {
    let fake = FakeRegistry::start().await;
    let receiver = Receiver::start().await;
    let (v1, v2) = (small_image(1491), small_image(1492));
    fake.put_image(REPO, TAG, &v1);
    let bucket = Arc::new(object_store::memory::InMemory::new());
    let a = Replica::start(&bucket, &fake, &receiver);
    let b = Replica::start(&bucket, &fake, &receiver);

    // The baseline, recorded once between them, reports nothing.
    rounds_together(&a, &b).await;
    assert_eq!((a.events(), b.events()), (vec![], vec![]), "the baseline emits nothing");

    // The tag moves: one replica's write wins and it alone reports.
    fake.put_image(REPO, TAG, &v2);
    rounds_together(&a, &b).await;
    let (ea, eb) = (a.events(), b.events());
    let all: Vec<&String> = ea.iter().chain(&eb).collect();
    assert_eq!(
        all,
        ["tag.moved"],
        "exactly one report between them: a {ea:?}, b {eb:?}"
    );

    // Later rounds, together and alone, see nothing new.
    rounds_together(&a, &b).await;
    b.watcher.round().await;
    a.watcher.round().await;
    assert_eq!((a.events(), b.events()), (ea, eb), "nothing reported twice");

    // Delivery (each replica delivers its own queue; rounds go on): the
    // receiver gets exactly one tag.moved, from v1 to v2.
    let runs = [
        tokio::spawn(a.watcher.clone().run()),
        tokio::spawn(b.watcher.clone().run()),
    ];
    let got = receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    // Several more rounds of both, racing on their own schedule.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_later = receiver.accepted(CLOUDEVENTS);
    for run in &runs {
        run.abort();
    }
    assert_eq!(got_later.len(), 1, "one delivery in all: {got_later:?}");
    let moved = assert_cloudevent(&got[0]);
    assert_eq!(moved["event"], "tag.moved");
    assert_eq!(moved["oldDigest"], v1.manifest.digest.to_string());
    assert_eq!(moved["newDigest"], v2.manifest.digest.to_string());
    assert_eq!(moved["verdict"], "allowed");
    assert_eq!(a.events().len() + b.events().len(), 1, "and no other event emitted");
}
