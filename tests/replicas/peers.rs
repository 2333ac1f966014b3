//! `cluster.peers`: replicas that know each other stream a cold blob from
//! the replica leading its download while it arrives (without peers they
//! wait for the committed object), and share one upstream `HEAD` per tag.

use std::time::Duration;

use http::StatusCode;

use super::support;
use super::support::binary::{self, Served};
use super::support::client;
use super::support::fake::{FakeRegistry, Fault};
use super::support::images::{Blob, oci_image};
use super::support::s3::S3Server;
use super::support::tls::{Ca, write_pair};
use super::{ACCEPT, BUCKET, base, get_manifest};

/// Configuration beyond the bucket and the peer list.
#[derive(Default)]
pub struct Yaml {
    /// Top-level sections (`tls:`).
    top: String,
    /// Lines inside `cluster:` (indented by two).
    cluster: String,
}

/// `n` replicas on `prefix` of the bucket, listing each other in
/// `cluster.peers` when `peers` is set, with `extra` flags and `more`
/// configuration.
pub async fn cluster_with(
    n: usize,
    upstream: &str,
    s3: &S3Server,
    prefix: &str,
    peers: bool,
    extra: &[&str],
    more: &Yaml,
) -> (Vec<Served>, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("work dir");
    let listens: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", binary::free_port())).collect();
    let mut yaml = format!("{}{}", more.top, s3.storage_yaml(BUCKET, prefix, None));
    if peers {
        let key = work.path().join("cluster.key");
        std::fs::write(&key, "a-secret-the-replicas-share-0123456789\n").expect("key");
        yaml.push_str(&format!(
            "cluster:\n  peers: [{}]\n  keyFile: {}\n{}",
            listens.join(", "),
            key.display(),
            more.cluster
        ));
    }
    let config = work.path().join("config.yaml");
    std::fs::write(&config, yaml).expect("config");
    let config = config.to_string_lossy().into_owned();
    let mut flags = vec!["--config", config.as_str()];
    flags.extend_from_slice(extra);
    let mut out = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let logs = tempfile::tempdir().expect("logs");
        let data = work.path().join(format!("replica{i}"));
        out.push(binary::serve_at(listen, upstream, logs, &data, &flags, &s3.env()).await);
    }
    (out, work)
}

/// [`cluster_with`] in integrity-only mode.
async fn cluster(
    n: usize,
    upstream: &str,
    s3: &S3Server,
    prefix: &str,
    peers: bool,
) -> (Vec<Served>, tempfile::TempDir) {
    cluster_with(n, upstream, s3, prefix, peers, &["--integrity-only"], &Yaml::default()).await
}

/// The fake upstream with a one-layer image under `repo:v1` whose layer is
/// sent in 64 KiB frames `delay` apart, and an S3 server for the bucket.
async fn slow_layer(repo: &str, size: usize, seed: u64, delay: Duration) -> (FakeRegistry, Blob, S3Server) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[size], seed);
    fake.put_image(repo, "v1", &image);
    let layer = image.layers[0].clone();
    fake.set_fault(&layer.digest, Fault::SlowBody { delay });
    (fake, layer, S3Server::start(&[BUCKET]))
}

/// Every replica asked for one cold layer at once: when did each client
/// get its first byte, and how long did the slowest take in all?
async fn first_bytes_of_a_cold_layer(peers: bool) -> (Vec<Duration>, Duration, usize) {
    // 64 frames of 64 KiB, 40 ms apart: about 2.6 s upstream.
    let (fake, layer, s3) = slow_layer(
        "test/relay",
        4 << 20,
        1040 + u64::from(peers),
        Duration::from_millis(40),
    )
    .await;
    let (rs, _work) = cluster(3, &fake.url(), &s3, "relay/", peers).await;
    let m = get_manifest(&rs[0], "test/relay", "v1").await;
    assert_eq!(m.status, StatusCode::OK, "{}", rs[0].log_text());

    let started = std::time::Instant::now();
    let pulls: Vec<_> = rs
        .iter()
        .map(|r| {
            let url = format!("{}/v2/test/relay/blobs/{}", base(r), layer.digest);
            tokio::spawn(async move { client::get_timed(&url).await })
        })
        .collect();
    let mut firsts = Vec::new();
    for (i, p) in pulls.into_iter().enumerate() {
        let (resp, first) = p.await.expect("pull");
        assert_eq!(resp.status, StatusCode::OK, "replica {i}: {}", rs[i].log_text());
        assert_eq!(resp.bytes(), layer.bytes, "replica {i}: the layer, byte for byte");
        firsts.push(first.expect("a first byte"));
    }
    let all = started.elapsed();
    (firsts, all, fake.blob_gets("test/relay", &layer.digest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_every_replica_streams_a_cold_blob_while_the_leader_downloads_it() {
    // Control: without peers, the replicas that do not hold the lease wait
    // for the committed object, so some client's first byte comes only
    // after the whole download.
    let (firsts, all, gets) = first_bytes_of_a_cold_layer(false).await;
    eprintln!("BENCH without peers: first byte per replica {firsts:?}, all done {all:?}, {gets} upstream GET(s)");
    assert_eq!(gets, 1, "the lease alone already fetches once");
    let latest = firsts.iter().max().copied().unwrap_or_default();
    assert!(
        latest > Duration::from_millis(2000),
        "without peers a follower should see nothing before the commit: {firsts:?}"
    );

    let (firsts, all, gets) = first_bytes_of_a_cold_layer(true).await;
    eprintln!("BENCH with cluster.peers: first byte per replica {firsts:?}, all done {all:?}, {gets} upstream GET(s)");
    assert_eq!(gets, 1, "one upstream GET across the three replicas");
    for (i, first) in firsts.iter().enumerate() {
        assert!(
            *first < Duration::from_millis(1200),
            "replica {i} streamed its first byte only after {first:?} (all done in {all:?}): {firsts:?}"
        );
    }
}

/// Nine concurrent resolutions of one tag, three per replica: how many
/// upstream `HEAD`s did they cost?
async fn heads_for_nine_resolutions(peers: bool) -> (usize, Vec<Served>, FakeRegistry, String, S3Server) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[1 << 10], 1050);
    fake.put_image("test/tags", "v1", &image);
    // The HEAD takes long enough that every resolution starts while it runs.
    fake.set_fault(
        "v1",
        Fault::SlowHeaders {
            delay: Duration::from_millis(800),
        },
    );
    let s3 = S3Server::start(&[BUCKET]);
    let (rs, _work) = cluster(3, &fake.url(), &s3, "tags/", peers).await;
    let asks: Vec<_> = (0..9)
        .map(|i| {
            let url = format!("{}/v2/test/tags/manifests/v1", base(&rs[i % 3]));
            tokio::spawn(async move { client::request(http::Method::GET, &url, &[("accept", ACCEPT)]).await })
        })
        .collect();
    for (i, a) in asks.into_iter().enumerate() {
        let resp = a.await.expect("resolution");
        assert_eq!(resp.status, StatusCode::OK, "ask {i}: {}", rs[i % 3].log_text());
        assert_eq!(resp.bytes(), image.manifest.bytes);
    }
    let heads = fake.manifest_requests("HEAD", "test/tags", "v1");
    (heads, rs, fake, image.layers[0].digest.to_string(), s3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_concurrent_tag_resolutions_share_one_upstream_head() {
    // Control: each replica shares its HEAD among its own requests only.
    let (heads, ..) = heads_for_nine_resolutions(false).await;
    assert_eq!(heads, 3, "without peers: one upstream HEAD per replica");

    let (heads, rs, fake, layer, _s3) = heads_for_nine_resolutions(true).await;
    assert_eq!(heads, 1, "nine resolutions over three replicas: one upstream HEAD");

    // The internal endpoints want the cluster key: without it, nothing.
    let peer_url = format!(
        "{}/_portcullis/cluster/v1/blob?upstream={}&repo=test/tags&digest={}",
        base(&rs[0]),
        fake.host(),
        layer
    );
    let refused = client::get(&peer_url).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{:?}", refused.body);
    let wrong = client::request(http::Method::GET, &peer_url, &[("authorization", "Bearer not-the-key")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

/// The index in `listens` of the replica leading `digest` (the ring over
/// the sorted peer list, as every replica computes it).
fn blob_leader(rs: &[Served], digest: &portcullis::oci::Digest) -> usize {
    let mut names: Vec<&str> = rs.iter().map(|r| r.listen.as_str()).collect();
    names.sort_unstable();
    let i = portcullis::cluster::ring::leader(&names, &portcullis::cluster::blob_key(digest)).expect("a leader");
    rs.iter().position(|r| r.listen == names[i]).expect("listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_a_leader_killed_mid_download_leaves_the_blob_to_a_follower() {
    // ~96 frames of 64 KiB, 40 ms apart: about 4 s for the whole layer.
    let (fake, layer, s3) = slow_layer("test/leader", 6 << 20, 1060, Duration::from_millis(40)).await;
    let (mut rs, _work) = cluster(3, &fake.url(), &s3, "leader/", true).await;
    let leader = blob_leader(&rs, &layer.digest);
    let follower = (leader + 1) % rs.len();
    let m = get_manifest(&rs[follower], "test/leader", "v1").await;
    assert_eq!(m.status, StatusCode::OK);

    let url = format!("{}/v2/test/leader/blobs/{}", base(&rs[follower]), layer.digest);
    let first_url = url.clone();
    let first = tokio::spawn(async move { client::get_timed(&first_url).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.blob_gets("test/leader", &layer.digest) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never fetched the layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rs[leader].child.kill().await.expect("kill -9 the leader");
    let (cut, streamed) = first.await.expect("first pull");
    assert!(
        streamed.is_some(),
        "the follower streamed from the leader before it died"
    );
    assert!(
        cut.body.is_err(),
        "the response relayed from a killed leader must not complete"
    );

    // The client retries on the same replica: the leader is gone, its lease
    // expires, and the follower fetches the layer itself.
    let started = std::time::Instant::now();
    let again = client::get(&url).await;
    assert_eq!(again.status, StatusCode::OK, "{}", rs[follower].log_text());
    assert_eq!(again.bytes(), layer.bytes);
    let gets = fake.blob_gets("test/leader", &layer.digest);
    assert!(
        gets <= 2,
        "{gets} upstream GETs: at most one more than the killed leader's"
    );
    eprintln!(
        "BENCH with cluster.peers, the leader killed mid-download: retry done in {:?}, {gets} upstream GETs",
        started.elapsed()
    );
}

/// Integrity-only replicas have no grants: a blob another replica is
/// fetching (or has committed) for one repository is served for another
/// only once the upstream confirms that repository has it too, whether the
/// bytes come from a relay or from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_a_blob_fetched_for_one_repository_is_not_served_for_another() {
    let (fake, layer, s3) = slow_layer("test/public", 2 << 20, 1070, Duration::from_millis(20)).await;
    let (rs, _work) = cluster(3, &fake.url(), &s3, "private/", true).await;
    let public = rs
        .iter()
        .map(|r| format!("{}/v2/test/public/blobs/{}", base(r), layer.digest))
        .collect::<Vec<_>>();
    let private = rs
        .iter()
        .map(|r| format!("{}/v2/test/private/blobs/{}", base(r), layer.digest))
        .collect::<Vec<_>>();
    // While replica 1 downloads it for test/public, every replica is asked
    // for it under test/private, where the upstream does not have it.
    let url = public[0].clone();
    let downloading = tokio::spawn(async move { client::get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, url) in private.iter().enumerate() {
        let got = client::get(url).await;
        assert_eq!(
            got.status,
            StatusCode::NOT_FOUND,
            "replica {i} during the download: {:?}",
            got.body
        );
    }
    let first = downloading.await.expect("public pull");
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.bytes(), layer.bytes);
    // And once it is committed in the bucket.
    for (i, url) in private.iter().enumerate() {
        let got = client::get(url).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "replica {i} after the commit");
    }
    // Control: the repository that has it is served by every replica.
    for (i, url) in public.iter().enumerate() {
        let got = client::get(url).await;
        assert_eq!(got.status, StatusCode::OK, "replica {i}: {}", rs[i].log_text());
        assert_eq!(got.bytes(), layer.bytes);
    }
}

/// A counter's value in a `/metrics` text (0 when absent).
async fn counter(r: &Served, series: &str) -> f64 {
    let text = client::get(&format!("http://{}/metrics", r.admin)).await.bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Replicas whose listeners speak TLS reach each other over TLS and check
/// the leader's certificate against `cluster.caFile`: trusted, the
/// follower relays the blob; untrusted (control), it refuses the leader
/// and falls back to the bucket's lease. One upstream GET either way, and
/// skopeo gets the image through both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_over_tls_the_follower_checks_the_leaders_certificate() {
    support::require_tool("skopeo");
    let ca = Ca::new("Portcullis replicas CA");
    let certs = tempfile::tempdir().expect("certs");
    let (cert, key) = write_pair(certs.path(), "replica", &ca.leaf("replica", &["127.0.0.1"], false));
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("ca");
    for (trusted, seed) in [(false, 1080), (true, 1081)] {
        let (fake, layer, s3) = slow_layer("test/tls", 2 << 20, seed, Duration::from_millis(20)).await;
        let yaml = Yaml {
            top: format!("tls:\n  cert: {}\n  key: {}\n", cert.display(), key.display()),
            cluster: if trusted {
                format!("  caFile: {}\n", ca_file.display())
            } else {
                String::new()
            },
        };
        let (rs, _work) = cluster_with(2, &fake.url(), &s3, "tls/", true, &["--integrity-only"], &yaml).await;
        let mut copied = Vec::new();
        let handles: Vec<_> = rs
            .iter()
            .map(|r| {
                let src = format!("docker://{}/test/tls:v1", r.listen);
                let hex = layer.digest.hex().to_owned();
                tokio::spawn(async move {
                    let dest = tempfile::tempdir().expect("dest");
                    let dir = format!("dir:{}", dest.path().display());
                    support::skopeo_copy_exact(&src, &dir, Duration::from_secs(120)).await?;
                    std::fs::read(dest.path().join(hex)).map_err(|e| e.to_string())
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let got = h
                .await
                .expect("skopeo task")
                .unwrap_or_else(|e| panic!("replica {i}: {e}\n{}", rs[i].log_text()));
            copied.push(got);
        }
        assert!(
            copied.iter().all(|c| *c == layer.bytes),
            "the layer, byte for byte, through both replicas"
        );
        assert_eq!(fake.blob_gets("test/tls", &layer.digest), 1, "trusted: {trusted}");
        let mut relayed = 0.0;
        let mut fallbacks = 0.0;
        for r in &rs {
            relayed += counter(r, "portcullis_cluster_peer_received_bytes_total").await;
            fallbacks += counter(r, "portcullis_cluster_peer_fallbacks_total").await;
        }
        if trusted {
            assert!(relayed >= layer.bytes.len() as f64, "relayed {relayed} bytes");
            assert_eq!(fallbacks, 0.0, "a trusted leader is always asked");
        } else {
            assert_eq!(relayed, 0.0, "an untrusted leader's bytes are never taken");
            assert!(fallbacks >= 1.0, "the follower fell back to the lease");
            let logs: String = rs.iter().map(Served::log_text).collect();
            assert!(
                logs.contains("leading replica unavailable") && logs.contains("UnknownIssuer"),
                "the log names the certificate the follower refused:\n{logs}"
            );
        }
    }
}
