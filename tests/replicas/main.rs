//! Replicas on one bucket (issue 10): three instances of the built binary,
//! each with its own data directory and the same `storage.s3` (a real S3
//! server, s3s-fs, on a loopback port), behind no load balancer: each
//! client talks to one replica.
//!
//! - a manifest admitted on one replica lets clients fetch its blobs from
//!   the others (grants and verdicts live in the bucket), skopeo pulls
//!   through each replica with the same digests, and ctr through a third
//!   (replicas with `cluster.peers`);
//! - eight concurrent pulls of one cold image spread over three replicas
//!   cost exactly one upstream GET per blob (download leases);
//! - a replica killed (`kill -9`) mid-download: the pull retried on another
//!   replica completes, with at most one more upstream fetch;
//! - with `cluster.peers` (`peers.rs`): every replica streams a cold blob
//!   while the leading replica downloads it, and concurrent resolutions of
//!   a tag on all replicas share one upstream `HEAD`.
//!
//! Upstreams: the real CNCF Distribution registry (signed images, skopeo),
//! and the in-process fake registry where upstream GETs are counted.

#[path = "../support/mod.rs"]
mod support;

mod peers;

use std::time::Duration;

use http::StatusCode;

use support::admission::{ACCEPT, policy_dir, push_signed, small_image};
use support::binary::{self, Served};
use support::client;
use support::containerd::Containerd;
use support::cosign::SigningKey;
use support::distribution::Distribution;
use support::fake::{CHUNK, FakeRegistry, Fault};
use support::images::{Image, oci_image};
use support::s3::S3Server;

const BUCKET: &str = "portcullis";

/// A signature by `key-a` required for `test/**`.
const RULES: &str = r#"
rules:
  - name: apps
    match: { repositories: ["test/**"] }
    require: { signatures: { anyOf: [key-a] } }
"#;

/// `n` replicas of the binary on `bucket` of `s3`, with `yaml` before the
/// storage section and `extra` flags.
async fn replicas(
    n: usize,
    upstream: &str,
    s3: &S3Server,
    yaml: &str,
    extra: &[&str],
) -> (Vec<Served>, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("work dir");
    let config = work.path().join("config.yaml");
    std::fs::write(&config, format!("{yaml}{}", s3.storage_yaml(BUCKET, "cache/", None))).expect("config");
    let config = config.to_string_lossy().into_owned();
    let mut flags = vec!["--config", config.as_str()];
    flags.extend_from_slice(extra);
    let mut out = Vec::new();
    for i in 0..n {
        let logs = tempfile::tempdir().expect("logs");
        let data = work.path().join(format!("replica{i}"));
        out.push(binary::serve_with_env(upstream, logs, &data, &flags, &s3.env()).await);
    }
    (out, work)
}

fn base(r: &Served) -> String {
    format!("http://{}", r.listen)
}

async fn get_manifest(r: &Served, repo: &str, reference: &str) -> client::Resp {
    client::request(
        http::Method::GET,
        &format!("{}/v2/{repo}/manifests/{reference}", base(r)),
        &[("accept", ACCEPT)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_admitted_on_one_replica_serves_its_blobs_on_the_others_and_skopeo_agrees() {
    support::require_tool("skopeo");
    let registry = Distribution::start().await;
    let key = SigningKey::generate_p256();
    let image = small_image(1010);
    push_signed(&registry, "test/app", "v1", &image, &[&key]).await;
    let policy = policy_dir(&[("a", &key)], RULES);
    let s3 = S3Server::start(&[BUCKET]);
    let policies = policy.path().to_string_lossy().into_owned();
    // The replicas know each other: blobs not led by the replica asked are
    // streamed from their leader (`peers.rs` compares with and without).
    let (rs, _work) = peers::cluster_with(
        3,
        &registry.url(),
        &s3,
        "cache/",
        true,
        &["--policies", &policies],
        &peers::Yaml::default(),
    )
    .await;

    // Control: before any replica admitted the manifest, no grant exists
    // in the bucket and another replica refuses its blobs.
    let first = &image.blobs()[0].digest;
    let early = client::get(&format!("{}/v2/test/app/blobs/{first}", base(&rs[1]))).await;
    assert_eq!(
        early.status,
        StatusCode::FORBIDDEN,
        "no grant yet: {}",
        rs[1].log_text()
    );

    let m = get_manifest(&rs[0], "test/app", "v1").await;
    assert_eq!(m.status, StatusCode::OK, "replica 1 admits the manifest");
    assert_eq!(m.bytes(), image.manifest.bytes);
    for (i, blob) in image.blobs().iter().enumerate() {
        // Neither replica 2 nor 3 has seen the manifest: the grant is in
        // the bucket.
        let r = &rs[1 + i % 2];
        let got = client::get(&format!("{}/v2/test/app/blobs/{}", base(r), blob.digest)).await;
        assert_eq!(got.status, StatusCode::OK, "{}: {}", blob.digest, r.log_text());
        assert_eq!(got.bytes(), blob.bytes);
    }
    // A shared grant is for its repository only: the same digest under
    // another repository is not served by another replica.
    let other = client::get(&format!("{}/v2/test/other/blobs/{first}", base(&rs[2]))).await;
    assert_eq!(
        other.status,
        StatusCode::FORBIDDEN,
        "the grant of test/app must not serve test/other"
    );

    let mut digests = Vec::new();
    for r in &rs {
        let dest = tempfile::tempdir().expect("dest");
        let dir = format!("dir:{}", dest.path().display());
        support::skopeo_copy_exact(
            &format!("docker://{}/test/app:v1", r.listen),
            &dir,
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("skopeo through {}: {e}\n{}", r.listen, r.log_text()));
        let manifest = std::fs::read(dest.path().join("manifest.json")).expect("manifest");
        digests.push(portcullis::oci::Digest::of(
            portcullis::oci::Algorithm::Sha256,
            &manifest,
        ));
        for blob in image.blobs() {
            let copied = std::fs::read(dest.path().join(blob.digest.hex())).expect("blob file");
            assert_eq!(copied, blob.bytes, "{}", blob.digest);
        }
    }
    assert!(
        digests.iter().all(|d| d == &image.manifest.digest),
        "{digests:?} vs {}",
        image.manifest.digest
    );

    // containerd through replica 3 only (`?ns=` mirror; the `server` is a
    // closed port, so nothing can bypass the replica).
    support::require_tool("ctr");
    let containerd = Containerd::start().await;
    let hosts = tempfile::tempdir().expect("hosts");
    let dir = hosts.path().join(registry.host());
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            rs[2].listen
        ),
    )
    .expect("hosts.toml");
    let reference = format!("{}/test/app:v1", registry.host());
    let hosts_dir = hosts.path().to_string_lossy().into_owned();
    containerd
        .ctr(&["content", "fetch", "--hosts-dir", &hosts_dir, &reference])
        .await
        .unwrap_or_else(|e| panic!("ctr through replica 3: {e}\n{}", rs[2].log_text()));
    let listed = containerd.ctr(&["content", "ls", "-q"]).await.expect("ctr content ls");
    for d in image.blobs().iter().map(|b| b.digest.to_string()) {
        assert!(listed.lines().any(|l| l.trim() == d), "containerd lacks {d}: {listed}");
    }
}

/// Pull `image` (`repo:v1`) through `r`, checking every byte.
async fn pull(r: String, repo: String, image: Image) {
    let m = client::request(
        http::Method::GET,
        &format!("{r}/v2/{repo}/manifests/v1"),
        &[("accept", ACCEPT)],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK, "manifest via {r}");
    for blob in image.blobs() {
        let got = client::get(&format!("{r}/v2/{repo}/blobs/{}", blob.digest)).await;
        assert_eq!(got.status, StatusCode::OK, "{} via {r}", blob.digest);
        assert_eq!(got.bytes(), blob.bytes, "{} via {r}", blob.digest);
    }
}

/// Eight clients pull one cold image spread over three replicas (with or
/// without `cluster.peers`): each blob must be fetched upstream once.
async fn eight_cold_pulls_over_three_replicas(peers: bool) {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[3 << 20, 2 << 20, 1 << 20], 1020);
    fake.put_image("test/cold", "v1", &image);
    // Slow enough that every pull starts while the downloads run.
    fake.set_fault(
        support::fake::EVERYWHERE,
        Fault::SlowBody {
            delay: Duration::from_millis(15),
        },
    );
    let s3 = S3Server::start(&[BUCKET]);
    let (rs, _work) = if peers {
        peers::cluster_with(
            3,
            &fake.url(),
            &s3,
            "",
            true,
            &["--integrity-only"],
            &peers::Yaml::default(),
        )
        .await
    } else {
        replicas(3, &fake.url(), &s3, "", &["--integrity-only"]).await
    };

    let pulls: Vec<_> = (0..8)
        .map(|i| tokio::spawn(pull(base(&rs[i % 3]), "test/cold".into(), image.clone())))
        .collect();
    let started = std::time::Instant::now();
    for p in pulls {
        p.await.expect("pull");
    }
    let gets: Vec<usize> = image
        .blobs()
        .iter()
        .map(|b| fake.blob_gets("test/cold", &b.digest))
        .collect();
    // One line for bench/replicas.sh.
    eprintln!(
        "BENCH upstream GETs per blob, 8 clients over 3 replicas{}: {gets:?} ({} blobs, {:.2} s)",
        if peers { " with cluster.peers" } else { "" },
        gets.len(),
        started.elapsed().as_secs_f64()
    );
    for blob in image.blobs() {
        assert_eq!(
            fake.blob_gets("test/cold", &blob.digest),
            1,
            "{} ({} bytes): upstream GETs across 3 replicas",
            blob.digest,
            blob.bytes.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_cold_pulls_over_three_replicas_fetch_each_blob_once() {
    eight_cold_pulls_over_three_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_cold_pulls_over_three_replicas_with_peers_fetch_each_blob_once() {
    eight_cold_pulls_over_three_replicas(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_download_leaves_the_blob_to_another() {
    let fake = FakeRegistry::start().await;
    let image = oci_image(&[6 << 20], 1030);
    fake.put_image("test/killed", "v1", &image);
    let layer = image.layers[0].clone();
    // ~96 frames of 64 KiB, 40 ms apart: about 4 s for the whole layer.
    fake.set_fault(
        &layer.digest,
        Fault::SlowBody {
            delay: Duration::from_millis(40),
        },
    );
    assert!(layer.bytes.len() / CHUNK > 50);
    let s3 = S3Server::start(&[BUCKET]);
    let (mut rs, work) = replicas(2, &fake.url(), &s3, "", &["--integrity-only"]).await;

    let m = get_manifest(&rs[0], "test/killed", "v1").await;
    assert_eq!(m.status, StatusCode::OK);
    let url = format!("{}/v2/test/killed/blobs/{}", base(&rs[0]), layer.digest);
    let first = tokio::spawn(async move { client::get(&url).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.blob_gets("test/killed", &layer.digest) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica 1 never fetched the layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rs[0].child.kill().await.expect("kill -9 replica 1");
    let _ = first.await;

    let started = std::time::Instant::now();
    pull(base(&rs[1]), "test/killed".into(), image.clone()).await;
    let gets = fake.blob_gets("test/killed", &layer.digest);
    assert!(
        gets <= 2,
        "{gets} upstream GETs of the layer: at most one more than the killed one"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the dead replica's lease held the blob for {:?}",
        started.elapsed()
    );
    eprintln!(
        "pull on replica 2 after the kill: {:?}, {gets} upstream GETs",
        started.elapsed()
    );

    // Nothing partial became visible in the bucket: `store verify` on it,
    // and `store stats` counts each blob once.
    let config = work.path().join("config.yaml");
    let store_command = |command: &'static str| -> Vec<std::ffi::OsString> {
        vec![
            "store".into(),
            command.into(),
            "--config".into(),
            config.clone().into_os_string(),
            "--data-dir".into(),
            work.path().join("cli").into_os_string(),
        ]
    };
    let verify = store_command("verify");
    let args: Vec<&std::ffi::OsStr> = verify.iter().map(|a| a.as_os_str()).collect();
    let (code, out, err) = binary::run_with_env(&args, None, Duration::from_secs(60), &s3.env()).await;
    assert_eq!(code, 0, "store verify on the bucket: {out}\n{err}");
    assert!(out.contains("ok: every file hashes to its digest"), "{out}");
    // The commit follows the response's last byte: wait for it.
    let stats = store_command("stats");
    let args: Vec<&std::ffi::OsStr> = stats.iter().map(|a| a.as_os_str()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = binary::run_with_env(&args, None, Duration::from_secs(60), &s3.env()).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("store: s3://portcullis/cache/"), "{out}");
        if out.contains("blobs: 2 (") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the layer and the config, once each: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
