//! What a round costs: 1,000 watched tags against a local (in-process)
//! upstream. The first round resolves each tag with one `HEAD` and judges
//! each new digest (its manifest fetched once); a round where nothing moved
//! and no re-verification is due costs exactly one `HEAD` per tag and
//! nothing else. Time and memory are printed (not asserted); request
//! counts are asserted exactly. Tags are checked `watch.concurrency` at a
//! time (the release-mode figures: `bench/watch.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::{self, Config, Overrides};
use portcullis::proxy::Proxy;
use portcullis::telemetry::audit::AuditSink;
use portcullis::watch::Watcher;

use crate::common::*;
use crate::support::fake::{FakeRegistry, Fault};

const TAGS: usize = 1_000;
/// Distinct images the tags point to (each judged once per round 1).
const IMAGES: usize = 10;

fn requests_by_method(fake: &FakeRegistry) -> (usize, usize) {
    let log = fake.requests();
    let heads = log.iter().filter(|r| r.method == "HEAD").count();
    (heads, log.len() - heads)
}

/// Peak resident memory of this test process (Linux), for the printout.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A watcher over `tags` of `fake` (integrity-only), checking
/// `concurrency` tags at once.
fn watcher(fake: &FakeRegistry, data: &std::path::Path, tags: &[String], concurrency: usize) -> Arc<Watcher> {
    let target = format!(
        "{{ registry: \"{}\", repository: {REPO}, tags: [{}] }}",
        fake.host(),
        tags.join(", ")
    );
    watcher_of(fake, data, &[target], concurrency)
}

/// A watcher of the `targets` (YAML flow mappings) of `fake`.
fn watcher_of(fake: &FakeRegistry, data: &std::path::Path, targets: &[String], concurrency: usize) -> Arc<Watcher> {
    let yaml = format!(
        "upstreams:\n  - {{ host: \"{host}\", url: \"{url}\", insecurePlainHttp: true }}\nwatch:\n  concurrency: {concurrency}\n  targets:\n{targets}",
        host = fake.host(),
        url = fake.url(),
        targets = targets.iter().map(|t| format!("    - {t}\n")).collect::<String>(),
    );
    let overrides = Overrides {
        data_dir: Some(data.to_owned()),
        integrity_only: true,
        ..Default::default()
    };
    let config = Config::from_yaml(&yaml, "cost test", &overrides).expect("config");
    let proxy = Proxy::with_audit(Arc::new(config), AuditSink::memory()).expect("proxy");
    Watcher::new(proxy).expect("watcher").expect("watch configured")
}

/// The bound is per round, across targets: 8 targets of one tag each, every
/// `HEAD` taking 300 ms, take at least 2.4 s at concurrency 1 and well under
/// that at 8 (repositories are checked side by side too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_checked_side_by_side_within_the_rounds_bound() {
    const SLOW: Duration = Duration::from_millis(300);
    let fake = FakeRegistry::start().await;
    let image = small_image(1472);
    let mut targets = Vec::new();
    for i in 0..8 {
        let repo = format!("test/r{i}");
        fake.put_image(&repo, "stable", &image);
        targets.push(format!(
            "{{ registry: \"{}\", repository: {repo}, tags: [stable] }}",
            fake.host()
        ));
    }
    fake.set_fault("stable", Fault::SlowHeaders { delay: SLOW });
    let mut took = Vec::new();
    for concurrency in [1, 8] {
        let data = tempfile::tempdir().expect("tempdir");
        let w = watcher_of(&fake, data.path(), &targets, concurrency);
        let started = Instant::now();
        let stats = w.round().await;
        took.push(started.elapsed());
        assert_eq!((stats.tags, stats.failed), (8, 0));
    }
    assert!(took[0] >= SLOW * 8, "one at a time: {:?}", took[0]);
    assert!(took[1] < SLOW * 4, "eight at once: {:?}", took[1]);
}

/// Tags are checked `watch.concurrency` at once: with every `HEAD` taking
/// 300 ms, 8 tags take at least 2.4 s one after another and well under
/// that 8 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_checked_concurrently_up_to_the_configured_bound() {
    const SLOW: Duration = Duration::from_millis(300);
    let fake = FakeRegistry::start().await;
    let image = small_image(1471);
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    for name in &names {
        fake.put_image(REPO, name, &image);
        fake.set_fault(name, Fault::SlowHeaders { delay: SLOW });
    }
    let mut took = Vec::new();
    for concurrency in [1, 8] {
        let data = tempfile::tempdir().expect("tempdir");
        let w = watcher(&fake, data.path(), &names, concurrency);
        let started = Instant::now();
        w.round().await;
        took.push(started.elapsed());
    }
    assert!(took[0] >= SLOW * 8, "one at a time: {:?}", took[0]);
    assert!(took[1] < SLOW * 4, "eight at once: {:?}", took[1]);
    let (heads, _) = requests_by_method(&fake);
    assert_eq!(heads, 16, "one HEAD per tag per round");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_1000_tags_costs_one_head_each_when_nothing_changed() {
    let fake = FakeRegistry::start().await;
    let images: Vec<_> = (0..IMAGES).map(|i| small_image(1481 + i as u64)).collect();
    let names: Vec<String> = (0..TAGS).map(|i| format!("t{i:04}")).collect();
    for (i, name) in names.iter().enumerate() {
        fake.put_image(REPO, name, &images[i % IMAGES]);
    }
    let data = tempfile::tempdir().expect("tempdir");
    let watcher = watcher(&fake, data.path(), &names, config::watch::DEFAULT_CONCURRENCY);

    let started = Instant::now();
    watcher.round().await;
    let first = started.elapsed();
    let (heads, others) = requests_by_method(&fake);
    assert_eq!(heads, TAGS, "one HEAD per tag");
    assert_eq!(others, IMAGES, "each distinct digest's manifest fetched once");

    let started = Instant::now();
    watcher.round().await;
    let unchanged = started.elapsed();
    let (heads, others) = requests_by_method(&fake);
    assert_eq!(heads, 2 * TAGS, "an unchanged round: one HEAD per tag");
    assert_eq!(others, IMAGES, "and nothing else");

    eprintln!(
        "watch cost: {TAGS} tags, {IMAGES} digests: first round {first:?} ({TAGS} HEAD + {IMAGES} GET), \
         unchanged round {unchanged:?} ({TAGS} HEAD); peak RSS {} KiB",
        peak_rss_kib().map_or("?".to_owned(), |k| k.to_string())
    );
}
