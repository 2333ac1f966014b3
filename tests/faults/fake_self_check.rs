//! The fake upstream misbehaves exactly as told (so a broken fake cannot pass the proxy tests).

use super::common::*;

// --- the fake itself ---------------------------------------------------------------

/// The proxy tests above are only as good as the faults: check that each one
/// really reaches the wire, talking to the fake directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_misbehaves_as_told() {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[3 * CHUNK], 29);
    fake.put_image(REPO, "v1", &image);
    let (m, layer) = (&image.manifest, &image.layers[0]);
    let url = |p: String| format!("{}/v2/{REPO}/{p}", fake.url());
    let digest_of = |r: &Resp| r.header("docker-content-digest").map(str::to_owned);

    let good = client::get(&url(format!("manifests/{}", m.digest))).await;
    assert_eq!(
        (good.bytes(), digest_of(&good)),
        (m.bytes.clone(), Some(m.digest.to_string()))
    );
    assert_eq!(good.header("content-type"), Some(m.media_type.as_str()));
    let head = client::head(&url("manifests/v1".into())).await;
    assert_eq!(head.header("content-length"), Some(m.bytes.len().to_string().as_str()));
    assert_eq!(digest_of(&head), Some(m.digest.to_string()));
    assert_eq!(
        client::get(&url(format!("blobs/{}", layer.digest))).await.bytes(),
        layer.bytes
    );
    let missing = client::get(&url("manifests/nope".into())).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");

    fake.set_fault(&m.digest, Fault::WrongManifestBytes);
    let r = client::get(&url(format!("manifests/{}", m.digest))).await;
    assert_ne!(r.bytes(), m.bytes);
    assert_eq!(digest_of(&r), Some(m.digest.to_string()));
    fake.clear_faults();

    fake.set_fault("v1", Fault::LyingDigestHeader);
    let r = client::get(&url("manifests/v1".into())).await;
    assert_eq!(r.bytes(), m.bytes);
    assert_ne!(digest_of(&r), Some(m.digest.to_string()));
    fake.clear_faults();

    fake.set_fault(&layer.digest, Fault::FlipByte { at: 7 });
    let r = client::get(&url(format!("blobs/{}", layer.digest))).await;
    let diff: Vec<usize> = (0..layer.bytes.len())
        .filter(|&i| r.bytes()[i] != layer.bytes[i])
        .collect();
    assert_eq!(diff, vec![7]);
    fake.clear_faults();

    for fault in [
        Fault::Truncate { at: CHUNK + 5 },
        Fault::DropMidBlob { after: CHUNK + 5 },
    ] {
        fake.set_fault(&layer.digest, fault);
        let cut = get_partial(&url(format!("blobs/{}", layer.digest)), &[]).await;
        assert_eq!(cut.status, StatusCode::OK);
        assert_eq!(cut.header("content-length"), Some((3 * CHUNK).to_string().as_str()));
        assert_eq!(cut.received, layer.bytes[..CHUNK + 5]);
        assert!(cut.end.is_err());
        fake.clear_faults();
    }

    fake.set_fault(
        &layer.digest,
        Fault::Status {
            code: 503,
            times: 2,
            retry_after: Some(3),
        },
    );
    let statuses: Vec<(u16, Option<String>)> = futures_util::future::join_all((0..3).map(|_| async {
        let r = client::head(&url(format!("blobs/{}", layer.digest))).await;
        (r.status.as_u16(), r.header("retry-after").map(str::to_owned))
    }))
    .await;
    let mut statuses = statuses;
    statuses.sort();
    assert_eq!(
        statuses,
        vec![(200, None), (503, Some("3".into())), (503, Some("3".into()))]
    );
    fake.clear_faults();

    fake.require_token();
    let r = client::get(&url("tags/list".into())).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let challenge = r.header("www-authenticate").expect("challenge");
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/token\",service=\"fake\",scope=\"repository:{REPO}:pull\"",
            fake.url()
        )
    );
    let token = client::get(&format!(
        "{}/token?service=fake&scope=repository:{REPO}:pull",
        fake.url()
    ))
    .await;
    assert_eq!(token.json()["expires_in"], 300);
    let bearer = format!("Bearer {}", token.json()["token"].as_str().expect("token"));
    let r = client::request(Method::GET, &url("tags/list".into()), &[("authorization", &bearer)]).await;
    assert_eq!(r.json(), serde_json::json!({ "name": REPO, "tags": ["v1"] }));
    assert_eq!(fake.authorizations().last(), Some(&Some(bearer)));
}
