//! A repository glob expanded through the upstream's catalog: every
//! matching repository's tag is watched, others are not.

use crate::common::*;

#[tokio::test]
async fn a_repository_glob_watches_the_matching_repositories_of_the_catalog() {
    let registry = Distribution::start().await;
    let receiver = Receiver::start().await;
    let a = SigningKey::generate_p256();
    let policy = policy_dir(&[("a", &a)], APPS);
    let (one, two, other) = (small_image(1491), small_image(1492), small_image(1493));
    for (repo, image) in [("test/one", &one), ("test/two", &two), ("elsewhere/app", &other)] {
        push_legacy_signature(&registry, repo, &image.manifest, &[&a]).await;
        registry.push_image(repo, TAG, image).await;
    }
    let host = registry.host();
    let yaml = format!(
        r#"watch:
  interval: 200ms
  targets:
    - {{ registry: "{host}", repository: "test/*", maxRepositories: 10, tags: [{TAG}] }}
  sinks:
    - webhook: {{ url: "{ce}" }}
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
    let observations = |repo: &str| {
        proxy
            .data_dir
            .path()
            .join("watch/observations")
            .join(&host)
            .join(repo)
            .join("_watch.json")
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(observations("test/one").is_file() && observations("test/two").is_file()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "matching repositories not observed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!observations("elsewhere/app").exists(), "outside the glob");

    let moved = small_image(1494);
    registry.push_image("test/two", TAG, &moved).await;
    let got = receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let ce = got[0].json();
    assert_eq!(ce["subject"], format!("{host}/test/two:{TAG}"));
    let event = &ce["data"];
    assert_eq!(
        (&event["event"], &event["repository"]),
        (&"tag.moved".into(), &"test/two".into())
    );
    assert_eq!(event["verdict"], "denied");

    let metrics = String::from_utf8_lossy(&client::get(&proxy.admin_url("/metrics")).await.bytes()).into_owned();
    assert!(
        metrics.contains(&format!(
            "portcullis_watch_last_success_timestamp_seconds{{registry=\"{host}\",repository=\"test/*\"}}"
        )),
        "labelled by the configured glob, not by catalog names:\n{metrics}"
    );
}
