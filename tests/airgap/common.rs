//! The connected side (a Distribution upstream, its configuration and
//! exporting policy), the site (configuration, its own policy, a trap
//! standing where an upstream would be), and running the built binary.

pub use std::path::{Path, PathBuf};
pub use std::sync::Arc;
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::time::Duration;

pub use crate::support::admission::{ACCEPT, policy_dir, push_signed, write_policy};
pub use crate::support::binary::{Served, free_port};
pub use crate::support::client;
pub use crate::support::cosign::{
    COSIGN_SIGN_PREDICATE, SigningKey, push_bundle_referrer, push_bundle_signature, push_legacy_attestation,
    push_legacy_signature, tamper,
};
pub use crate::support::distribution::Distribution;
pub use crate::support::images::{Blob, Image, oci_image, oci_image_for, oci_index, read_dir_copy};
pub use portcullis::oci::Digest;

pub const LIMIT: Duration = Duration::from_secs(180);
/// The name both sides give the upstream registry.
pub const HOST: &str = "registry.test";

/// The exporting policy: key `a` for apps, `a` or `b` elsewhere (so an
/// image signed only by `b` leaves the connected side), and a SLSA
/// provenance check for the attested image.
pub const CONNECTED_RULES: &str = r#"
rules:
  - name: attested
    match: { repositories: ["apps/attested"] }
    require:
      signatures: { anyOf: [key-a] }
      attestations:
        - name: slsa
          predicateType: https://slsa.dev/provenance/v1
          authorities: [key-a]
          checks:
            - { path: /predicate/builder/id, startsWith: "https://ci.example/" }
  - name: apps
    match: { repositories: ["apps/**"] }
    require: { signatures: { anyOf: [key-a] } }
  - name: elsewhere
    match: { repositories: ["neg/**", "other/**"] }
    require: { signatures: { anyOf: [key-a, key-b] } }
"#;

/// The site's own policy: key `a` only, bundles only for `neg/bundle`,
/// nothing at all for `other/**` (no rule: denied), `vendor/**` admitted
/// by integrity (what a supplier's plain skopeo archive can carry).
pub const SITE_RULES: &str = r#"
rules:
  - name: attested
    match: { repositories: ["apps/attested"] }
    require:
      signatures: { anyOf: [key-a] }
      attestations:
        - name: slsa
          predicateType: https://slsa.dev/provenance/v1
          authorities: [key-a]
          checks:
            - { path: /predicate/builder/id, startsWith: "https://ci.example/" }
  - name: bundles
    match: { repositories: ["neg/bundle"] }
    formats: [bundle]
    require: { signatures: { anyOf: [key-a] } }
  - name: apps
    match: { repositories: ["apps/**", "neg/**"] }
    require: { signatures: { anyOf: [key-a] } }
  - name: vendor
    match: { repositories: ["vendor/**"] }
    static: allow
"#;

/// A TCP listener where the site's upstream would be: counts every
/// connection (and answers none), so a test can assert the site never
/// tried the network.
pub struct Trap {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    pub async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind trap");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Trap {
            port,
            connections,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Both sides: the upstream, the keys, the connected configuration and
/// policy, and a work directory for archives.
pub struct Connected {
    pub upstream: Distribution,
    pub a: SigningKey,
    pub b: SigningKey,
    /// The export station's key (PKCS#8 PEM) and its public key.
    pub station_key: PathBuf,
    pub station_pub: PathBuf,
    pub work: tempfile::TempDir,
    pub policies: tempfile::TempDir,
}

impl Connected {
    pub async fn start() -> Connected {
        let upstream = Distribution::start().await;
        let a = SigningKey::generate_p256();
        let b = SigningKey::generate_p256();
        let work = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "dataDir: {}\nupstreams:\n  - host: {HOST}\n    url: {}\n    insecurePlainHttp: true\n",
            work.path().join("connected-data").display(),
            upstream.url()
        );
        std::fs::write(work.path().join("connected.yaml"), config).expect("config");
        let policies = policy_dir(&[("a", &a), ("b", &b)], CONNECTED_RULES);
        let station_key = work.path().join("station.key");
        let station_pub = work.path().join("station.pub");
        write_station_key(&station_key, &station_pub);
        Connected {
            upstream,
            a,
            b,
            station_key,
            station_pub,
            work,
            policies,
        }
    }

    /// `portcullis export IMAGES -o archive` on the connected side, reading
    /// through its data directory, signed by the station: (code, stdout, stderr).
    pub async fn export(&self, images: &[&str], archive: &Path, extra: &[&str]) -> (i32, String, String) {
        let names: Vec<String> = images.iter().map(|i| format!("{HOST}/{i}")).collect();
        let mut args: Vec<String> = vec!["export".into()];
        args.extend(names);
        args.extend(["-o".into(), archive.display().to_string()]);
        args.extend([
            "--config".into(),
            self.work.path().join("connected.yaml").display().to_string(),
            "--policies".into(),
            self.policies.path().display().to_string(),
            "--data-dir".into(),
            self.work.path().join("connected-data").display().to_string(),
            "--sign-key".into(),
            self.station_key.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run(&args).await
    }
}

/// The disconnected site: its configuration (the upstream is offline and
/// stands on the trap's port), policy and data directory.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub policies: tempfile::TempDir,
    pub trap: Trap,
}

impl Site {
    pub async fn new(a: &SigningKey) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let trap = Trap::start().await;
        let config = format!(
            "dataDir: {}\ndefaultUpstream: {HOST}\nupstreams:\n  - host: {HOST}\n    url: http://127.0.0.1:{}\n    insecurePlainHttp: true\n    offline: true\n",
            dir.path().join("data").display(),
            trap.port
        );
        std::fs::write(dir.path().join("site.yaml"), config).expect("site config");
        let policies = policy_dir(&[("a", a)], SITE_RULES);
        Site { dir, policies, trap }
    }

    fn common_args(&self) -> Vec<String> {
        self.args_with("site.yaml")
    }

    fn args_with(&self, config: &str) -> Vec<String> {
        vec![
            "--config".into(),
            self.dir.path().join(config).display().to_string(),
            "--policies".into(),
            self.policies.path().display().to_string(),
        ]
    }

    /// `portcullis import ARCHIVE --json` plus `extra`: (code, report).
    pub async fn import(&self, archive: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
        let mut args: Vec<String> = vec!["import".into(), archive.display().to_string(), "--json".into()];
        args.extend(self.common_args());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let (code, stdout, stderr) = run(&args).await;
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("import printed no JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
        (code, report)
    }

    /// `portcullis serve` on the site's configuration (offline).
    pub async fn serve(&self) -> Served {
        self.serve_with("site.yaml", &[]).await
    }

    /// The control: the same configuration without `offline: true` (and
    /// `extra` flags, such as `--offline`).
    pub async fn serve_online(&self, extra: &[&str]) -> Served {
        let offline = std::fs::read_to_string(self.dir.path().join("site.yaml")).expect("site config");
        let online = offline.replace("    offline: true\n", "");
        assert_ne!(online, offline);
        std::fs::write(self.dir.path().join("online.yaml"), online).expect("online config");
        self.serve_with("online.yaml", extra).await
    }

    /// Require exports signed by the station whose public key is `key`
    /// (`airgap.exportKey` in the site's configuration).
    pub fn require_export_key(&self, key: &Path) {
        let path = self.dir.path().join("site.yaml");
        let mut config = std::fs::read_to_string(&path).expect("site config");
        config.push_str(&format!("airgap:\n  exportKey: {}\n", key.display()));
        std::fs::write(path, config).expect("site config");
    }

    /// `portcullis store stats` on the site's data directory.
    pub async fn store_stats(&self) -> String {
        let mut args: Vec<String> = vec!["store".into(), "stats".into()];
        args.extend(self.args_with("site.yaml").into_iter().take(2));
        let (code, stdout, stderr) = run(&args).await;
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        stdout
    }

    async fn serve_with(&self, config: &str, extra: &[&str]) -> Served {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let logs = tempfile::tempdir().expect("log dir");
        let log = logs.path().join("site.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--listen", &listen, "--admin-listen", &admin])
            .args(self.args_with(config))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("run portcullis serve");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the site proxy did not start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Served {
            child,
            listen,
            admin,
            data: logs,
            log,
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// An export station key pair: PKCS#8 PEM private key and PEM public key.
pub fn write_station_key(private: &Path, public: &Path) {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let spki = pair.public_key().as_der().expect("SPKI");
    std::fs::write(private, pem("PRIVATE KEY", pkcs8.as_ref())).expect("write key");
    std::fs::write(public, pem("PUBLIC KEY", spki.as_ref())).expect("write pub");
}

/// Run the built binary to its end: (exit code, stdout, stderr).
pub async fn run(args: &[String]) -> (i32, String, String) {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    crate::support::binary::run(&os, None, LIMIT).await
}

/// The names of the imported images in an import report.
pub fn imported(report: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = report["imported"]
        .as_array()
        .unwrap_or_else(|| panic!("no `imported` in {report}"))
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// The refusal reason for `name`, if refused.
pub fn refusal<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    report["refused"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["reason"].as_str())
}

/// `GET` a path on a server with the manifest `Accept` list.
pub async fn get(server: &str, path: &str) -> client::Resp {
    client::request(
        http::Method::GET,
        &format!("http://{server}{path}"),
        &[("accept", ACCEPT)],
    )
    .await
}

/// The exact bytes `path` has on the upstream registry (bypassing every proxy).
pub async fn upstream_bytes(upstream: &Distribution, path: &str) -> Vec<u8> {
    let r = client::request(http::Method::GET, &upstream.url_for(path), &[("accept", ACCEPT)]).await;
    assert_eq!(r.status, http::StatusCode::OK, "upstream {path}");
    r.bytes().to_vec()
}

/// `skopeo copy --all` from the site into a dir: the copy's top manifest
/// and every digest it holds.
pub async fn skopeo_pull(site: &str, reference: &str) -> Result<(Digest, std::collections::BTreeSet<Digest>), String> {
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("copy");
    crate::support::skopeo_copy_exact(
        &format!("docker://{site}/{reference}"),
        &format!("dir:{}", dest.display()),
        LIMIT,
    )
    .await?;
    Ok(read_dir_copy(&dest))
}

/// Rewrite the tar `archive`, passing every entry's bytes through `edit`.
pub fn rewrite_archive(archive: &Path, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    use std::io::Read as _;
    let input = std::fs::read(archive).expect("read archive");
    let mut reader = tar::Archive::new(&input[..]);
    let mut out = tar::Builder::new(Vec::new());
    for entry in reader.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        let bytes = edit(&path, bytes);
        let mut header = entry.header().clone();
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        out.append(&header, &bytes[..]).expect("append");
    }
    std::fs::write(archive, out.into_inner().expect("finish")).expect("write archive");
}

/// The archive entry name of a blob.
pub fn entry(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The images on the upstream, each with its verification material.
pub struct Seeded {
    /// `apps/web:v1`: a legacy `.sig` by key a.
    pub web: Image,
    /// `apps/bundled:v1`: a Sigstore bundle referrer by key a (cosign v3).
    pub bundled: Image,
    /// `apps/multi:v1`: a two-platform index signed at the index.
    pub amd: Image,
    pub arm: Image,
    pub index: Blob,
    /// `apps/attested:v1`: signed, with a SLSA provenance attestation.
    pub attested: Image,
    /// `neg/otherkey:v1`: signed by key b only.
    pub otherkey: Image,
    /// `neg/bundle:v1`: a legacy `.sig` by key a (the exporter accepts it)
    /// and a bundle by key a whose statement names another digest.
    pub badbundle: Image,
    /// `other/tool:v1`: signed by key a; the site has no rule for it.
    pub other: Image,
    /// `neg/flipped:v1`: signed by key a; a byte of its layer is flipped in the archive.
    pub flipped: Image,
}

pub const ALL: [&str; 8] = [
    "apps/web:v1",
    "apps/bundled:v1",
    "apps/multi:v1",
    "apps/attested:v1",
    "neg/otherkey:v1",
    "neg/bundle:v1",
    "other/tool:v1",
    "neg/flipped:v1",
];

pub async fn seed(c: &Connected) -> Seeded {
    let up = &c.upstream;
    let web = oci_image(&[3000, 700], 1201);
    push_signed(up, "apps/web", "v1", &web, &[&c.a]).await;
    let bundled = oci_image(&[2500], 1202);
    up.push_image("apps/bundled", "v1", &bundled).await;
    push_bundle_signature(up, "apps/bundled", &bundled.manifest, &c.a).await;
    let amd = oci_image_for("amd64", &[1500], 1203);
    let arm = oci_image_for("arm64", &[1600], 1204);
    let index = oci_index(&[(&amd, "amd64"), (&arm, "arm64")]);
    up.push_index("apps/multi", "v1", &index, &[&amd, &arm]).await;
    push_legacy_signature(up, "apps/multi", &index, &[&c.a]).await;
    let attested = oci_image(&[1800], 1205);
    push_signed(up, "apps/attested", "v1", &attested, &[&c.a]).await;
    let provenance = serde_json::json!({ "builder": { "id": "https://ci.example/build" } });
    push_legacy_attestation(
        up,
        "apps/attested",
        &attested.manifest,
        &[&c.a],
        "https://slsa.dev/provenance/v1",
        &provenance,
    )
    .await;
    let otherkey = oci_image(&[1100], 1206);
    push_signed(up, "neg/otherkey", "v1", &otherkey, &[&c.b]).await;
    let badbundle = oci_image(&[1200], 1207);
    push_signed(up, "neg/bundle", "v1", &badbundle, &[&c.a]).await;
    let elsewhere = Digest::of(portcullis::oci::Algorithm::Sha256, b"another image");
    push_bundle_referrer(
        up,
        "neg/bundle",
        &badbundle.manifest,
        tamper::bundle_for_other_subject(&c.a, &elsewhere),
        COSIGN_SIGN_PREDICATE,
    )
    .await;
    let other = oci_image(&[1300], 1208);
    push_signed(up, "other/tool", "v1", &other, &[&c.a]).await;
    let flipped = oci_image(&[1400], 1209);
    push_signed(up, "neg/flipped", "v1", &flipped, &[&c.a]).await;
    Seeded {
        web,
        bundled,
        amd,
        arm,
        index,
        attested,
        otherkey,
        badbundle,
        other,
        flipped,
    }
}

/// Every digest a `skopeo copy --all` of `image` holds.
pub fn digests(image: &Image) -> std::collections::BTreeSet<Digest> {
    std::iter::once(&image.manifest)
        .chain(image.blobs())
        .map(|b| b.digest.clone())
        .collect()
}

/// `name` is served by neither tag nor digest, nor any of its blobs.
pub async fn not_served(site: &str, repo: &str, image: &Image) {
    let by_tag = get(site, &format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(by_tag.status.as_u16(), 404, "{repo}:v1 is served: {:?}", by_tag.body);
    let by_digest = get(site, &format!("/v2/{repo}/manifests/{}", image.manifest.digest)).await;
    assert_eq!(by_digest.status.as_u16(), 404, "{repo}@digest is served");
    for b in image.blobs() {
        let r = get(site, &format!("/v2/{repo}/blobs/{}", b.digest)).await;
        assert_ne!(r.status.as_u16(), 200, "{repo}: blob {} is served", b.digest);
    }
}
