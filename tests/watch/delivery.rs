//! Nothing lost: the receiver down (503) for several rounds, the proxy
//! restarted with events queued, then the receiver up: every event arrives,
//! in order, once per id; `/readyz` reports the queue past its bound.

use std::collections::HashSet;

use crate::common::*;

#[tokio::test]
async fn events_queued_while_the_receiver_is_down_survive_a_restart_and_arrive_in_order() {
    let v1 = small_image(1421);
    let mut s = Scenario::start(APPS, 2, &v1).await;
    s.receiver.answer(503);
    s.wait_observed(&v1.manifest.digest, "allowed").await;

    // Three moves while the receiver answers 503.
    let images = [small_image(1422), small_image(1423), small_image(1424)];
    for (i, image) in images.iter().enumerate() {
        let signers: Vec<&SigningKey> = if i % 2 == 0 { vec![] } else { vec![&s.a] };
        s.push(image, &signers).await;
        let verdict = if signers.is_empty() { "denied" } else { "allowed" };
        s.wait_observed(&image.manifest.digest, verdict).await;
    }
    let records = s.wait_records(3).await;
    // Retried, never accepted.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.receiver.all(CLOUDEVENTS).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no delivery attempts");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(s.receiver.accepted(CLOUDEVENTS).is_empty());

    // Three queued events > queueLimit 2: not ready, naming the sink.
    let ready = client::get(&s.proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, http::StatusCode::SERVICE_UNAVAILABLE);
    let reason = String::from_utf8_lossy(&ready.bytes()).into_owned();
    assert!(
        reason.contains("watch sink `soc` has 3 undelivered events (limit 2)"),
        "{reason}"
    );
    let metrics = String::from_utf8_lossy(&client::get(&s.proxy.admin_url("/metrics")).await.bytes()).into_owned();
    assert!(
        metrics.contains("portcullis_watch_queue_over_limit{sink=\"soc\"} 1"),
        "{metrics}"
    );

    // Restart with the events still queued (and, behind them, an entry the
    // disk damaged); one more move afterwards.
    let soc = std::path::PathBuf::from("watch/queues/soc");
    let damaged = soc.join(format!("{:020}.json", 3));
    s.restart_after(|data| {
        assert!(
            data.join(&soc).join(format!("{:020}.json", 2)).is_file(),
            "three events queued on disk"
        );
        std::fs::write(data.join(&damaged), b"{ not an event").expect("damage");
    })
    .await;
    let last = small_image(1425);
    s.push(&last, &[&s.a]).await;
    s.wait_observed(&last.manifest.digest, "allowed").await;
    // The audit log (same file across the restart) has all four.
    assert_eq!(records.len(), 3, "{records:#?}");
    let records = s.wait_records(4).await;
    assert_eq!(records.len(), 4, "{records:#?}");

    // Receiver up: all four, in order, each id accepted exactly once.
    s.receiver.answer(200);
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 4).await;
    let events: Vec<serde_json::Value> = got.iter().map(assert_cloudevent).collect();
    let ids: Vec<&serde_json::Value> = events.iter().map(|e| &e["id"]).collect();
    let emitted: Vec<&serde_json::Value> = records.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, emitted, "every emitted event, in order");
    let unique: HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(unique.len(), 4, "once per id");
    let new_digests: Vec<&serde_json::Value> = events.iter().map(|e| &e["newDigest"]).collect();
    let pushed: Vec<serde_json::Value> = images
        .iter()
        .chain([&last])
        .map(|i| i.manifest.digest.to_string().into())
        .collect();
    assert_eq!(new_digests, pushed.iter().collect::<Vec<_>>());
    s.receiver.wait_for(OCSF, WAIT, |r| r.len() >= 4).await;
    let aside = s
        .proxy
        .data_dir
        .path()
        .join(&soc)
        .join(format!("{:020}.json.unreadable", 3));
    assert!(aside.is_file(), "the damaged entry is set aside, not lost or sent");

    // Nothing more arrives for the same ids, and readiness comes back.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = client::get(&s.proxy.admin_url("/readyz")).await;
        if ready.status == http::StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {:?}",
            ready.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s.receiver.accepted(CLOUDEVENTS).len(), 4);
}

/// An upstream that cannot be reached: one `watch.failed` per outage (not
/// one per round), counted in the failures metric.
#[tokio::test]
async fn an_unreachable_upstream_is_reported_once_as_watch_failed() {
    let registry = Distribution::start().await;
    let receiver = Receiver::start().await;
    let a = SigningKey::generate_p256();
    let policy = policy_dir(&[("a", &a)], APPS);
    let dead = format!("127.0.0.1:{}", crate::support::distribution::free_port());
    let yaml = format!(
        r#"upstreams:
  - {{ host: "{dead}", url: "http://{dead}", insecurePlainHttp: true }}
upstreamDefaults: {{ retryAttempts: 2, retryBackoff: 10ms, connectTimeout: 1s }}
watch:
  interval: 200ms
  targets:
    - {{ registry: "{dead}", repository: {REPO}, tags: [{TAG}] }}
  sinks:
    - webhook: {{ name: soc, url: "{ce}" }}
"#,
        ce = receiver.url(CLOUDEVENTS)
    );
    let proxy = TestProxy::with_policies_and_yaml(
        &registry.url(),
        policy.path(),
        tempfile::tempdir().expect("tempdir"),
        &yaml,
    )
    .await;
    let got = receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let failed = got[0].json();
    assert_eq!(failed["type"], "dev.portcullis.watch.failed");
    assert_eq!(failed["subject"], format!("{dead}/{REPO}:{TAG}"));
    assert!(
        !failed["data"]["reasons"][0].as_str().unwrap_or("").is_empty(),
        "{failed}"
    );
    assert_eq!(
        got[0].header("x-portcullis-signature-256"),
        None,
        "no secret, no signature"
    );

    // Several more failing rounds: counted, not re-sent.
    let metric = format!("portcullis_watch_failures_total{{registry=\"{dead}\",repository=\"{REPO}\"}}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&client::get(&proxy.admin_url("/metrics")).await.bytes()).into_owned();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{metric} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if count >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "failures not counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.accepted(CLOUDEVENTS).len(), 1);
}
