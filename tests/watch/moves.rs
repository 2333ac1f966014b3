//! Tag moves judged by the gate: unsigned, signed by the wrong key, signed
//! properly; a lost signature; a deleted tag; `mutable: deny` pinning.

use crate::common::*;
use crate::support::admission::{assert_manifest, get_manifest};

/// The event of each accepted CloudEvents request (checked), in order.
fn cloudevents(s: &Scenario) -> Vec<serde_json::Value> {
    s.receiver.accepted(CLOUDEVENTS).iter().map(assert_cloudevent).collect()
}

#[tokio::test]
async fn moves_lost_signatures_and_deletions_are_judged_and_delivered_to_both_sinks() {
    let v1 = small_image(1401);
    let s = Scenario::start(APPS, 10_000, &v1).await;
    s.wait_observed(&v1.manifest.digest, "allowed").await;
    assert!(s.receiver.all(CLOUDEVENTS).is_empty(), "the baseline emits nothing");

    // Unsigned: denied, naming the authority that is missing.
    let v2 = small_image(1402);
    s.push(&v2, &[]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let moved = assert_cloudevent(&got[0]);
    assert_eq!(moved["event"], "tag.moved");
    assert_eq!(moved["oldDigest"], v1.manifest.digest.to_string());
    assert_eq!(moved["newDigest"], v2.manifest.digest.to_string());
    assert_eq!(moved["verdict"], "denied");
    assert_eq!(moved["rule"], "apps");
    assert_eq!(
        moved["policyRevision"],
        crate::support::admission::revision(s.policy.path())
    );
    assert_eq!(moved["authoritiesSatisfied"], serde_json::json!([]));
    assert_eq!(moved["authoritiesMissing"], serde_json::json!(["key-a"]));
    assert!(!moved["reasons"].as_array().expect("reasons").is_empty(), "{moved}");

    // Signed by a key the rule does not accept: denied, key-a missing.
    let v3 = small_image(1403);
    s.push(&v3, &[&s.b]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 2).await;
    let moved = assert_cloudevent(&got[1]);
    assert_eq!(
        (&moved["event"], &moved["verdict"]),
        (&"tag.moved".into(), &"denied".into())
    );
    assert_eq!(moved["oldDigest"], v2.manifest.digest.to_string());
    assert_eq!(moved["authoritiesMissing"], serde_json::json!(["key-a"]));

    // Properly signed: allowed, key-a satisfied.
    let v4 = small_image(1404);
    s.push(&v4, &[&s.a]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 3).await;
    let moved = assert_cloudevent(&got[2]);
    assert_eq!(moved["verdict"], "allowed");
    assert_eq!(moved["newDigest"], v4.manifest.digest.to_string());
    assert_eq!(moved["authoritiesSatisfied"], serde_json::json!(["key-a"]));
    assert_eq!(moved["authoritiesMissing"], serde_json::json!([]));

    // The signature of the current digest disappears: signature.lost.
    let sig = s.signature_digest(&v4.manifest.digest).await;
    s.delete_manifest(&sig).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 4).await;
    let lost = assert_cloudevent(&got[3]);
    assert_eq!(lost["event"], "signature.lost");
    assert_eq!(lost["newDigest"], v4.manifest.digest.to_string());
    assert_eq!(lost["verdict"], "denied");
    assert_eq!(lost["authoritiesMissing"], serde_json::json!(["key-a"]));

    // The tag goes away: tag.deleted with the digest it pointed to.
    s.delete_manifest(&v4.manifest.digest).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 5).await;
    let deleted = assert_cloudevent(&got[4]);
    assert_eq!(deleted["event"], "tag.deleted");
    assert_eq!(deleted["oldDigest"], v4.manifest.digest.to_string());
    assert_eq!(deleted["newDigest"], serde_json::Value::Null);

    // Exactly these five, once each, in order, on both sinks and in the
    // audit log; the OCSF rendering has what its class requires.
    let expected = ["tag.moved", "tag.moved", "tag.moved", "signature.lost", "tag.deleted"];
    let ce = cloudevents(&s);
    let kinds: Vec<&str> = ce.iter().map(|e| e["event"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, expected);
    let ocsf = s.receiver.wait_for(OCSF, WAIT, |r| r.len() >= 5).await;
    let findings: Vec<serde_json::Value> = ocsf.iter().map(assert_ocsf).collect();
    assert_eq!(findings, ce, "the OCSF sink got the same events in the same order");
    assert_eq!(ocsf[0].json()["severity_id"], 4, "a denied move is High");
    assert_eq!(ocsf[2].json()["severity_id"], 1, "an allowed move is Informational");
    let audited: Vec<serde_json::Value> = s.wait_records(5).await;
    let audited_ids: Vec<&serde_json::Value> = audited.iter().map(|r| &r["id"]).collect();
    let ids: Vec<&serde_json::Value> = ce.iter().map(|e| &e["id"]).collect();
    assert_eq!(audited_ids, ids);

    let metrics = client::get(&s.proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.bytes()).into_owned();
    let host = s.registry.host();
    for series in [
        format!("portcullis_watch_events_total{{registry=\"{host}\",event=\"tag.moved\",verdict=\"denied\"}} 2"),
        format!("portcullis_watch_events_total{{registry=\"{host}\",event=\"tag.moved\",verdict=\"allowed\"}} 1"),
        format!("portcullis_watch_events_total{{registry=\"{host}\",event=\"signature.lost\",verdict=\"denied\"}} 1"),
        "portcullis_watch_queue_depth{sink=\"soc\"} 0".to_owned(),
    ] {
        assert!(text.contains(&series), "missing `{series}` in:\n{text}");
    }
    // Watch verdicts are audited but are not client admissions.
    assert!(!text.contains("portcullis_admissions_total{"), "{text}");
    assert!(
        text.contains(&format!(
            "portcullis_watch_last_success_timestamp_seconds{{registry=\"{host}\",repository=\"{REPO}\"}}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn mutable_deny_says_the_pinned_digest_stays_served_and_a_pull_confirms_it() {
    let v1 = small_image(1411);
    let s = Scenario::start(PINNED, 10_000, &v1).await;
    // A pull through the proxy pins v1.
    let first = get_manifest(&s.proxy, REPO, TAG).await;
    assert_manifest(&first, &v1.manifest, "first pull");
    s.wait_observed(&v1.manifest.digest, "allowed").await;

    let v2 = small_image(1412);
    s.push(&v2, &[&s.a]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 2).await;
    let moved = assert_cloudevent(&got[0]);
    assert_eq!(
        (&moved["event"], &moved["verdict"]),
        (&"tag.moved".into(), &"allowed".into())
    );
    let pinned = assert_cloudevent(&got[1]);
    assert_eq!(pinned["event"], "tag.pinned");
    assert_eq!(
        pinned["oldDigest"],
        v1.manifest.digest.to_string(),
        "the digest still served"
    );
    assert_eq!(pinned["newDigest"], v2.manifest.digest.to_string(), "the refused move");
    assert_eq!(pinned["rule"], "apps");

    let after = get_manifest(&s.proxy, REPO, TAG).await;
    assert_manifest(&after, &v1.manifest, "pull after the move");
}

#[tokio::test]
async fn a_tag_that_appears_is_reported_created_with_its_verdict() {
    let v1 = small_image(1441);
    let s = Scenario::start(APPS, 10_000, &v1).await;
    s.wait_observed(&v1.manifest.digest, "allowed").await;
    s.delete_manifest(&v1.manifest.digest).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    assert_eq!(assert_cloudevent(&got[0])["event"], "tag.deleted");

    let v2 = small_image(1442);
    s.push(&v2, &[]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 2).await;
    let created = assert_cloudevent(&got[1]);
    assert_eq!(created["event"], "tag.created");
    assert_eq!(created["oldDigest"], serde_json::Value::Null);
    assert_eq!(created["newDigest"], v2.manifest.digest.to_string());
    assert_eq!(created["verdict"], "denied");
}

/// `allTags`: every listed tag is watched (cosign's `.sig` tags are not);
/// a new tag is `tag.created`, a removed one `tag.deleted`.
#[tokio::test]
async fn all_tags_watches_new_tags_and_deleted_ones_but_not_signature_tags() {
    let v1 = small_image(1451);
    let s = Scenario::start_selecting(APPS, 10_000, &v1, "allTags: true, maxTags: 10").await;
    s.wait_observed(&v1.manifest.digest, "allowed").await;

    let v2 = small_image(1452);
    push_signed_first(&s.registry, "other", &v2, &[&s.a]).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let created = assert_cloudevent(&got[0]);
    assert_eq!(created["event"], "tag.created");
    assert_eq!(created["tag"], "other");
    assert_eq!(created["verdict"], "allowed");

    s.delete_manifest(&v2.manifest.digest).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 2).await;
    let deleted = assert_cloudevent(&got[1]);
    assert_eq!(
        (&deleted["event"], &deleted["tag"]),
        (&"tag.deleted".into(), &"other".into())
    );

    // Only real tags are observed: no `.sig` tag; the deleted one is
    // dropped once its round is written. No other event.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let observed = s.observations();
        if observed.keys().eq([TAG]) {
            break;
        }
        assert!(observed.keys().all(|k| k == TAG || k == "other"), "{observed:?}");
        assert!(tokio::time::Instant::now() < deadline, "{observed:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s.receiver.accepted(CLOUDEVENTS).len(), 2);
}

/// A move whose signature cannot be fetched is reported `undecided` (no
/// verdict is not a denial); once the signature can be read, the unmoved
/// digest is judged again and `verdict.decided` follows with the verdict.
#[tokio::test]
async fn an_undecided_move_is_followed_by_the_decision() {
    let v1 = small_image(1411);
    let s = Scenario::start(APPS, 10_000, &v1).await;
    s.wait_observed(&v1.manifest.digest, "allowed").await;

    let v2 = small_image(1412);
    let sig = push_legacy_signature(&s.registry, REPO, &v2.manifest, &[&s.a]).await;
    // The signature's layer goes missing upstream (404 on its GET) before
    // the tag moves, and comes back later.
    let hex = sig.layers[0].blob.digest.hex();
    let data = s
        .registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let aside = data.with_extension("aside");
    std::fs::rename(&data, &aside).expect("move the layer aside");
    s.registry.push_image(REPO, TAG, &v2).await;
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| !r.is_empty()).await;
    let moved = assert_cloudevent(&got[0]);
    assert_eq!(
        (&moved["event"], &moved["verdict"]),
        (&"tag.moved".into(), &"undecided".into()),
        "{moved}"
    );
    assert_eq!(moved["newDigest"], v2.manifest.digest.to_string());

    std::fs::rename(&aside, &data).expect("restore the layer");
    let got = s.receiver.wait_for(CLOUDEVENTS, WAIT, |r| r.len() >= 2).await;
    let decided = assert_cloudevent(&got[1]);
    assert_eq!(decided["event"], "verdict.decided");
    assert_eq!(decided["verdict"], "allowed");
    assert_eq!(decided["newDigest"], v2.manifest.digest.to_string());
    assert_eq!(decided["authoritiesSatisfied"], serde_json::json!(["key-a"]));
    s.wait_observed(&v2.manifest.digest, "allowed").await;
    // Decided once: later rounds are quiet.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(s.receiver.all(CLOUDEVENTS).len(), 2, "no further events");
}
