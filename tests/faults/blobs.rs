//! Blobs with wrong, truncated or dropped bodies, ranges on cold blobs, single flight.

use super::common::*;

// --- blobs -----------------------------------------------------------------------

/// A cold 1 MiB blob fetched while the upstream misbehaves with `fault`: the
/// response is aborted (or refused with `early`) and nothing is stored; once
/// the upstream behaves, one more GET fetches it and later requests are
/// served from the store.
async fn aborted_and_not_stored_then_recovers(seed: u64, fault: Fault, early: Early) {
    let (fake, proxy, image) = setup(&[1 << 20], seed).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, fault);

    let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
    assert_aborted_blob(&resp, layer, early);
    assert_blob_not_stored(&proxy, &layer.digest).await;

    fake.clear_faults();
    assert_good_blob(&proxy, layer).await;
    assert_served_from_cache(&fake, &proxy, layer).await;
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_with_flipped_byte_is_aborted_and_not_stored() {
    aborted_and_not_stored_then_recovers(6, Fault::FlipByte { at: 1000 }, INTEGRITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_is_aborted_and_not_stored() {
    aborted_and_not_stored_then_recovers(7, Fault::Truncate { at: 600_000 }, BROKEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_blob_is_aborted_and_not_stored() {
    aborted_and_not_stored_then_recovers(8, Fault::DropMidBlob { after: 5 * CHUNK }, BROKEN).await;
}

/// Holdback: a client that does not verify digests never receives a
/// complete wrong blob, whatever its size and wherever the bad byte is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_blob_never_delivers_its_final_byte() {
    let fake = FakeRegistry::start().await;
    let proxy = proxy_for(&fake, FAST).await;
    let cases = [(100, 99), (100, 0), (3 * CHUNK + 17, 3 * CHUNK + 16), (2 << 20, 5)];
    for (i, (len, flip)) in cases.into_iter().enumerate() {
        let blob = Blob::new(OCI_LAYER, random_bytes(len, 100 + i as u64));
        fake.put_blob(REPO, &blob);
        fake.set_fault(&blob.digest, Fault::FlipByte { at: flip });
        get_partial(&blob_url(&proxy, &blob.digest), &[])
            .await
            .assert_withheld(StatusCode::OK, len, INTEGRITY);
        assert_blob_not_stored(&proxy, &blob.digest).await;
    }
}

/// A Range on a cold blob whose bytes are wrong: the slice is aborted too,
/// even though the corrupt byte lies outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_of_wrong_blob_is_aborted() {
    let (fake, proxy, image) = setup(&[1 << 20], 9).await;
    let layer = &image.layers[0];
    fake.set_fault(&layer.digest, Fault::FlipByte { at: (1 << 20) - 1 });

    let range = get_partial(&blob_url(&proxy, &layer.digest), &[("range", "bytes=0-99")]).await;
    range.assert_withheld(StatusCode::PARTIAL_CONTENT, 100, INTEGRITY);
    if range.status == StatusCode::PARTIAL_CONTENT {
        assert_eq!(range.header("content-range"), Some("bytes 0-99/1048576"));
    }
    assert_blob_not_stored(&proxy, &layer.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_cold_blob_is_206_with_the_right_slice() {
    let (fake, proxy, image) = setup(&[1 << 20], 10).await;
    let layer = &image.layers[0];

    let resp = client::request(
        Method::GET,
        &blob_url(&proxy, &layer.digest),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.header("content-range"), Some("bytes 1000-1999/1048576"));
    assert_eq!(resp.header("content-length"), Some("1000"));
    assert_eq!(resp.bytes(), layer.bytes.slice(1000..2000));

    // The whole blob was fetched once, verified and stored.
    assert!(proxy.stores_blob(&layer.digest).await, "the blob is stored");
    assert_eq!(fake.blob_gets(REPO, &layer.digest), 1);
    let before = fake.total_requests();
    let resp = client::request(Method::GET, &blob_url(&proxy, &layer.digest), &[("range", "bytes=-10")]).await;
    assert_eq!(resp.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes(), layer.bytes.slice((1 << 20) - 10..));
    assert_eq!(fake.total_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_upstream_download() {
    let (fake, proxy, image) = setup(&[4 << 20], 11).await;
    let layer = image.layers[0].clone();
    fake.set_fault(
        &layer.digest,
        Fault::SlowBody {
            delay: Duration::from_millis(10),
        },
    );

    let url = blob_url(&proxy, &layer.digest);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::get(&url).await })
        })
        .collect();
    for c in clients {
        let resp = c.await.expect("client task");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.bytes(), layer.bytes);
    }
    assert_eq!(
        fake.blob_gets(REPO, &layer.digest),
        1,
        "single flight: one upstream GET for 8 clients"
    );
    assert!(proxy.stores_blob(&layer.digest).await, "committed after the last byte");
}
