//! Real clients through Portcullis, with the real CNCF Distribution registry
//! as the upstream: skopeo (every routing shape it can express), containerd's
//! `ctr` (the `?ns=` mirror shape, with no fallback to the upstream) and
//! podman. Every copied blob is re-hashed and compared with what was seeded.
//!
//! External commands run with bounded time and their output is shown when
//! they fail.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis::oci::Digest;
use serde_json::{Value, json};
use support::containerd::Containerd;
use support::distribution::Distribution;
use support::images::*;
use support::proxy::TestProxy;
use support::{skopeo_copy_exact, try_run};

const REPO: &str = "test/app";
/// Size of the large layer (the brief: at least 100 MiB).
const BIG: usize = 100 * 1024 * 1024 + 4099;
/// Time limit for one client command.
const COPY_LIMIT: Duration = Duration::from_secs(120);

/// The upstream's content.
struct Seeded {
    registry: Distribution,
    /// `test/app:v1`: an OCI index over two platforms.
    index: Blob,
    index_children: Vec<Image>,
    /// `test/app:list`: a Docker manifest list over two platforms.
    list: Blob,
    list_children: Vec<Image>,
    /// `test/app:big`: an OCI image with a >= 100 MiB layer.
    big: Image,
    /// `test/app:rootfs`: an OCI image with real tar layers for this
    /// machine's architecture (unpackable by containerd and podman).
    rootfs: Image,
}

/// One seeded image as a copy must reproduce it.
struct Expected<'a> {
    tag: &'static str,
    top: &'a Blob,
    /// Child manifests of an index or list.
    manifests: BTreeSet<Digest>,
    /// Configs and layers.
    blobs: BTreeSet<Digest>,
    /// Docker media types: an OCI layout can only hold them converted.
    docker: bool,
}

impl Expected<'_> {
    fn all(&self) -> BTreeSet<Digest> {
        let mut all = self.blobs.clone();
        all.extend(self.manifests.iter().cloned());
        all.insert(self.top.digest.clone());
        all
    }
}

impl Seeded {
    fn images(&self) -> Vec<Expected<'_>> {
        let expected = |tag, top, children: &[Image], docker| Expected {
            tag,
            top,
            manifests: children.iter().map(|c| c.manifest.digest.clone()).collect(),
            blobs: children
                .iter()
                .flat_map(|c| c.blobs())
                .map(|b| b.digest.clone())
                .collect(),
            docker,
        };
        vec![
            expected("v1", &self.index, &self.index_children, false),
            expected("list", &self.list, &self.list_children, true),
            Expected {
                tag: "big",
                top: &self.big.manifest,
                manifests: BTreeSet::new(),
                blobs: self.big.blobs().into_iter().map(|b| b.digest.clone()).collect(),
                docker: false,
            },
        ]
    }
}

async fn seed(with_big: bool) -> Seeded {
    let t = Instant::now();
    let registry = Distribution::start().await;
    let index_children = vec![
        oci_image_for("amd64", &[40_000, 3000], 11),
        oci_image_for("arm64", &[50_000], 12),
    ];
    let index = oci_index(&[(&index_children[0], "amd64"), (&index_children[1], "arm64")]);
    registry
        .push_index(REPO, "v1", &index, &[&index_children[0], &index_children[1]])
        .await;
    let list_children = vec![
        docker_image_for("amd64", &[60_000], 13),
        docker_image_for("arm64", &[70_000, 10], 14),
    ];
    let list = docker_list(&[(&list_children[0], "amd64"), (&list_children[1], "arm64")]);
    registry
        .push_list(REPO, "list", &list, &[&list_children[0], &list_children[1]])
        .await;
    let big = if with_big {
        oci_image(&[BIG, 1000], 15)
    } else {
        oci_image(&[1000], 15)
    };
    registry.push_image(REPO, "big", &big).await;
    let rootfs = rootfs_image();
    registry.push_image(REPO, "rootfs", &rootfs).await;
    eprintln!("seeded upstream in {:?}", t.elapsed());
    Seeded {
        registry,
        index,
        index_children,
        list,
        list_children,
        big,
        rootfs,
    }
}

/// Only `127.0.0.1:<upstream port>` and no default upstream: a request
/// without `?ns=` names no registry, so containerd's pulls can only succeed
/// through the `ns` shape.
fn ns_only_config(registry: &Distribution) -> String {
    let port = registry.port;
    format!(
        "upstreams:
  - host: 127.0.0.1:{port}
    url: http://127.0.0.1:{port}
    insecurePlainHttp: true
"
    )
}

// ---------------------------------------------------------------- tar layers

/// An OCI image whose layers are real tar archives, for this machine.
fn rootfs_image() -> Image {
    let layers = vec![
        Blob::new(OCI_LAYER, tar(&[("hello.txt", b"hello from portcullis\n")])),
        Blob::new(
            OCI_LAYER,
            tar(&[("data.bin", &random_bytes(200_000, 21)), ("etc-release", b"ID=test\n")]),
        ),
    ];
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": { "Cmd": ["/hello.txt"] }
    });
    image_from(&config, layers)
}

// ------------------------------------------------------------- commands

/// Run a command with a time limit; panic with its output unless it succeeds.
async fn run(program: &str, args: &[&str], limit: Duration) -> String {
    let output = try_run(program, args, limit).await;
    match output {
        Ok(stdout) => stdout,
        Err(e) => panic!("{e}"),
    }
}

// ------------------------------------------------------------- verification

/// An OCI layout written by skopeo: the digest `tag` points at, and every
/// blob (each file's sha256 checked against its name).
fn read_oci_layout(dir: &Path, tag: &str) -> (Digest, BTreeSet<Digest>) {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
        .expect("index.json is JSON");
    let top = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == json!(tag))
        .unwrap_or_else(|| panic!("no `{tag}` in {index}"));
    let top: Digest = top["digest"].as_str().expect("digest").parse().expect("valid digest");
    let mut blobs = BTreeSet::new();
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).expect("blobs/sha256") {
        let path = entry.expect("entry").path();
        let hex = path.file_name().expect("name").to_string_lossy().into_owned();
        blobs.insert(support::images::checked_file_digest(&path, &hex));
    }
    (top, blobs)
}

/// The copy has the upstream's top-level manifest and every blob.
fn assert_complete_copy(
    what: &str,
    top: &Digest,
    got: &BTreeSet<Digest>,
    expected: &BTreeSet<Digest>,
    expected_top: &Digest,
) {
    assert_eq!(
        top, expected_top,
        "{what}: the copy's top-level manifest is not the upstream's"
    );
    let missing: Vec<&Digest> = expected.difference(got).collect();
    assert!(missing.is_empty(), "{what}: missing from the copy: {missing:?}");
}

// ------------------------------------------------------------- skopeo

/// `skopeo copy --all` of every seeded image through one routing shape,
/// into `oci:` and `dir:`; every digest must be the upstream's.
async fn skopeo_through(shape: &str, name_prefix: &str) {
    let s = seed(true).await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let work = tempfile::tempdir().expect("tempdir");
    for e in s.images() {
        let tag = e.tag;
        let src = format!("docker://{}/{name_prefix}{REPO}:{tag}", proxy.addr);
        // Cold (through to the upstream) into oci:, then cached into dir:.
        let oci = work.path().join(format!("oci-{tag}"));
        let dest = format!("oci:{}:{tag}", oci.display());
        let t = Instant::now();
        if e.docker {
            // An OCI layout cannot hold Docker manifests, so skopeo converts
            // them; it also gzips the synthetic layers (random bytes that are
            // labelled gzip but are not), so no digest survives. What can be
            // checked: the copy succeeded and the layout is self-consistent
            // (every blob hashes to its name, every child is present). The
            // `dir:` copy below checks the exact upstream digests.
            run(
                "skopeo",
                &[
                    "--insecure-policy",
                    "copy",
                    "--all",
                    "--src-tls-verify=false",
                    &src,
                    &dest,
                ],
                COPY_LIMIT,
            )
            .await;
            let (got_top, got) = read_oci_layout(&oci, tag);
            assert_ne!(got_top, e.top.digest, "{shape} {tag}: converted to an OCI index");
            let index: Value =
                serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(got_top.hex())).expect("index"))
                    .expect("json");
            assert_eq!(index["mediaType"], json!(OCI_INDEX));
            let children = index["manifests"].as_array().expect("children");
            assert_eq!(
                children.len(),
                e.manifests.len(),
                "{shape} {tag}: every platform copied"
            );
            for c in children {
                let d: Digest = c["digest"].as_str().expect("digest").parse().expect("digest");
                assert!(got.contains(&d), "{shape} {tag}: child {d} missing from the layout");
            }
        } else {
            skopeo_copy_exact(&src, &dest, COPY_LIMIT)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (got_top, got) = read_oci_layout(&oci, tag);
            assert_complete_copy(&format!("{shape} {tag} oci:"), &got_top, &got, &e.all(), &e.top.digest);
        }
        eprintln!("{shape}: {tag} → oci: in {:?}", t.elapsed());

        let dir = work.path().join(format!("dir-{tag}"));
        let dest = format!("dir:{}", dir.display());
        skopeo_copy_exact(&src, &dest, COPY_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (got_top, got) = support::images::read_dir_copy(&dir);
        assert_complete_copy(&format!("{shape} {tag} dir:"), &got_top, &got, &e.all(), &e.top.digest);
        // Free the disk before the next image (the big one is 100 MiB).
        std::fs::remove_dir_all(&oci).expect("cleanup");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    // Everything went through (and is now cached in) the proxy.
    for e in s.images() {
        for d in &e.blobs {
            assert!(proxy.stores_blob(d).await, "{shape}: blob {d} not in the proxy's store");
        }
        for d in e.manifests.iter().chain([&e.top.digest]) {
            assert!(proxy.has_manifest(d), "{shape}: manifest {d} not in the proxy's store");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_default_upstream() {
    skopeo_through("default upstream", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_host_in_path() {
    skopeo_through("host in path", "registry.test/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_alias() {
    skopeo_through("alias", "local/").await;
}

// ------------------------------------------------------------- containerd

/// containerd's mirror shape: requests carry `?ns=127.0.0.1:<upstream port>`.
/// `content fetch --all-platforms` of the multi-arch index, the Docker list
/// and the 100 MiB image; every blob must have gone through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_content_fetch_through_ns_mirror() {
    let s = seed(true).await;
    let proxy = TestProxy::start(&ns_only_config(&s.registry)).await;
    let containerd = Containerd::start().await;
    let hosts = containerd.mirror_hosts_dir(&s.registry, &proxy);
    let hosts = hosts.to_str().expect("utf-8 path");
    // Without `ns` this proxy has no route for the name.
    let r = support::client::get(&proxy.url(&format!("/v2/{REPO}/manifests/v1"))).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (404, "NAME_UNKNOWN"));
    for e in s.images() {
        let image = format!("{}/{REPO}:{}", s.registry.host(), e.tag);
        let t = Instant::now();
        containerd
            .ctr(&["content", "fetch", "--all-platforms", "--hosts-dir", hosts, &image])
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        eprintln!("ctr content fetch {image}: {:?}", t.elapsed());
        for d in &e.blobs {
            assert!(
                proxy.stores_blob(d).await,
                "{image}: blob {d} did not go through the proxy"
            );
        }
        for d in e.manifests.iter().chain([&e.top.digest]) {
            assert!(
                proxy.has_manifest(d),
                "{image}: manifest {d} did not go through the proxy"
            );
        }
        // containerd holds exactly the upstream's digests (it verifies them).
        let listed = containerd
            .ctr(&["content", "ls", "-q"])
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let listed: BTreeSet<Digest> = listed.lines().map(|l| l.trim().parse().expect("digest")).collect();
        let missing: Vec<Digest> = e.all().into_iter().filter(|d| !listed.contains(d)).collect();
        assert!(missing.is_empty(), "{image}: containerd lacks {missing:?}");
    }
    // Control: with the proxy gone, containerd has nowhere to go (the
    // `server` is a closed port), so the fetch above cannot have bypassed it.
    drop(proxy);
    let image = format!("{}/{REPO}:rootfs", s.registry.host());
    let err = containerd
        .ctr(&["content", "fetch", "--hosts-dir", hosts, &image])
        .await;
    assert!(err.is_err(), "fetch without the proxy must fail: {err:?}");
}

/// A full `ctr images pull` with the native snapshotter (unpacks the real
/// tar layers) through the `?ns=` mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_images_pull_native_snapshotter() {
    let s = seed(false).await;
    let proxy = TestProxy::start(&ns_only_config(&s.registry)).await;
    let containerd = Containerd::start().await;
    let hosts = containerd.mirror_hosts_dir(&s.registry, &proxy);
    let hosts = hosts.to_str().expect("utf-8 path");
    let image = format!("{}/{REPO}:rootfs", s.registry.host());
    containerd
        .ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts,
            &image,
        ])
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    for b in s.rootfs.blobs() {
        assert!(
            proxy.stores_blob(&b.digest).await,
            "layer {} did not go through the proxy",
            b.digest
        );
    }
    assert!(proxy.has_manifest(&s.rootfs.manifest.digest));
    let images = containerd
        .ctr(&["images", "ls"])
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let line = images
        .lines()
        .find(|l| l.starts_with(&image))
        .unwrap_or_else(|| panic!("{image} not listed:\n{images}"));
    assert!(line.contains(&s.rootfs.manifest.digest.to_string()), "{line}");
    // The unpacked files are in the native snapshotter's directories.
    let snapshots = containerd
        .dir
        .path()
        .join("root/io.containerd.snapshotter.v1.native/snapshots");
    let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .expect("native snapshots")
        .map(|e| e.expect("entry").path().join("hello.txt"))
        .filter(|p| p.exists())
        .collect();
    assert!(
        !found.is_empty(),
        "hello.txt not unpacked under {}",
        snapshots.display()
    );
    assert_eq!(std::fs::read(&found[0]).expect("read"), b"hello from portcullis\n");
}

// ------------------------------------------------------------- podman

/// podman pulls by the proxy's own name (a registries.conf mirror would
/// silently fall back to the upstream), through the default and alias
/// shapes, into vfs storage in a temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pull_by_proxy_name() {
    let s = seed(false).await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let p = tempfile::tempdir().expect("tempdir");
    let podman = |args: Vec<String>| {
        let mut all = support::isolated_podman_flags(p.path());
        all.extend(args);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run("podman", &refs, COPY_LIMIT).await
        }
    };
    for prefix in ["", "local/", "registry.test/"] {
        let image = format!("{}/{prefix}{REPO}:rootfs", proxy.addr);
        podman(vec!["pull".into(), "--tls-verify=false".into(), image.clone()]).await;
        let digest = podman(vec![
            "image".into(),
            "inspect".into(),
            "--format".into(),
            "{{.Digest}}".into(),
            image.clone(),
        ])
        .await;
        assert_eq!(digest.trim(), s.rootfs.manifest.digest.to_string(), "{image}");
    }
    for b in s.rootfs.blobs() {
        assert!(
            proxy.stores_blob(&b.digest).await,
            "layer {} did not go through the proxy",
            b.digest
        );
    }
}
