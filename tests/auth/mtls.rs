//! Mutual TLS: a client certificate verified against `auth.clientCA` is the
//! identity `cert:<subject DN>` (or a SAN), matched by glob in the rules;
//! clients without one still connect and authenticate otherwise.

use std::time::Duration;

use crate::common::*;
use crate::support::containerd::Containerd;

struct TlsSetup {
    files: Files,
    client_ca: Ca,
}

fn tls_setup() -> TlsSetup {
    let files = Files::new();
    let server_ca = Ca::new("Portcullis test server CA");
    let client_ca = Ca::new("Portcullis test client CA");
    files.write("server-ca.pem", &server_ca.pem());
    files.write("client-ca.pem", &client_ca.pem());
    write_pair(
        files.dir.path(),
        "server",
        &server_ca.leaf("portcullis", &["127.0.0.1", "localhost"], false),
    );
    TlsSetup { files, client_ca }
}

fn tls_config(s: &TlsSetup, up: &Upstream) -> String {
    format!(
        "tls:\n  cert: {}\n  key: {}\n{}",
        s.files.path("server.pem").display(),
        s.files.path("server.key").display(),
        s.files.config(
            &up.registry,
            &format!("  clientCA: {}\n", s.files.path("client-ca.pem").display()),
            ""
        )
    )
}

/// `curl` a manifest over TLS: (status, body file contents).
async fn curl(s: &TlsSetup, url: &str, cert: Option<&str>) -> (u16, String) {
    let out = s.files.path("curl-body");
    let ca = s.files.path("server-ca.pem").display().to_string();
    let out_s = out.display().to_string();
    let mut args = vec![
        "-sS",
        "--cacert",
        ca.as_str(),
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        "-o",
        out_s.as_str(),
        "-w",
        "%{http_code}",
    ];
    let (c, k);
    if let Some(name) = cert {
        c = s.files.path(&format!("{name}.pem")).display().to_string();
        k = s.files.path(&format!("{name}.key")).display().to_string();
        args.extend(["--cert", c.as_str(), "--key", k.as_str()]);
    }
    args.push(url);
    let status = crate::support::try_run("curl", &args, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let body = std::fs::read_to_string(&out).unwrap_or_default();
    (status.trim().parse().expect("status code"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_identities() {
    let up = upstream().await;
    let s = tls_setup();
    write_pair(
        s.files.dir.path(),
        "node",
        &s.client_ca.leaf("node-1", &["node-1.cluster.local"], true),
    );
    write_pair(s.files.dir.path(), "other", &s.client_ca.leaf("laptop-9", &[], true));
    // Signed by a CA the proxy does not trust.
    let stranger = Ca::new("someone else");
    write_pair(s.files.dir.path(), "stranger", &stranger.leaf("node-2", &[], true));
    let proxy = proxy(&tls_config(&s, &up)).await;
    let url = format!("https://127.0.0.1:{}/v2/apps/web/manifests/v1", proxy.addr.port());

    let (status, body) = curl(&s, &url, Some("node")).await;
    assert_eq!(status, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).expect("manifest JSON");
    assert_eq!(m["config"]["digest"], up.web.config.digest.to_string());
    let (status, body) = curl(&s, &url, None).await;
    assert_eq!(status, 401, "without a certificate: {body}");
    let (status, body) = curl(&s, &url, Some("other")).await;
    assert_eq!(status, 403, "cert:CN=laptop-9 has no rule: {body}");
    assert!(body.contains("cert:CN=laptop-9"), "{body}");
    // An untrusted certificate fails the handshake.
    let out = s.files.path("stranger-body").display().to_string();
    let (c, k, ca) = (
        s.files.path("stranger.pem").display().to_string(),
        s.files.path("stranger.key").display().to_string(),
        s.files.path("server-ca.pem").display().to_string(),
    );
    let r = crate::support::try_run(
        "curl",
        &["-sS", "--cacert", &ca, "--cert", &c, "--key", &k, "-o", &out, &url],
        Duration::from_secs(30),
    )
    .await;
    assert!(r.is_err(), "a certificate of another CA is refused: {r:?}");
    // Other methods still work over TLS without a certificate.
    let (status, _) = {
        let auth = format!("Authorization: {}", basic(ALICE.0, ALICE.1));
        let ca = s.files.path("server-ca.pem").display().to_string();
        let code = crate::support::try_run(
            "curl",
            &[
                "-sS",
                "--cacert",
                &ca,
                "-H",
                &auth,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        (code.trim().parse::<u16>().expect("code"), ())
    };
    assert_eq!(status, 200);
    let events = s.files.audit_events();
    assert!(events.iter().any(|e| e["identity"] == "cert:CN=node-1"), "{events:?}");
    assert_no_secrets(&[&s.files.audit_log()], &[]);
}

/// containerd with `client = [[cert, key]]` in hosts.toml, through the
/// `?ns=` mirror shape over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_with_a_client_certificate() {
    let up = upstream().await;
    let s = tls_setup();
    write_pair(s.files.dir.path(), "node", &s.client_ca.leaf("node-7", &[], true));
    let proxy = proxy(&tls_config(&s, &up)).await;
    let containerd = Containerd::start().await;
    let hosts = containerd.dir.path().join("hosts");
    let dir = hosts.join("registry.test");
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n\n[host.\"https://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n  client = [[\"{cert}\", \"{key}\"]]\n",
            port = proxy.addr.port(),
            ca = s.files.path("server-ca.pem").display(),
            cert = s.files.path("node.pem").display(),
            key = s.files.path("node.key").display(),
        ),
    )
    .expect("hosts.toml");
    let hosts = hosts.display().to_string();
    containerd
        .ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &hosts,
            "registry.test/apps/rootfs:v1",
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for b in up.rootfs.blobs() {
        assert!(
            proxy.stores_blob(&b.digest).await,
            "{} went through the proxy",
            b.digest
        );
    }
    let events = s.files.audit_events();
    assert!(events.iter().any(|e| e["identity"] == "cert:CN=node-7"), "{events:?}");
    // private/db is not allowed to node certificates.
    assert!(
        containerd
            .ctr(&["content", "fetch", "--hosts-dir", &hosts, "registry.test/private/db:v1"])
            .await
            .is_err()
    );
}

/// The client CA bundle follows its file like the server certificate: a CA
/// added to the bundle is trusted at the next handshake, one removed is no
/// longer, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ca_bundle_follows_its_file() {
    let up = upstream().await;
    let s = tls_setup();
    let rotated = Ca::new("Portcullis rotated client CA");
    write_pair(s.files.dir.path(), "old-node", &s.client_ca.leaf("node-1", &[], true));
    write_pair(s.files.dir.path(), "new-node", &rotated.leaf("node-3", &[], true));
    let proxy = proxy(&tls_config(&s, &up)).await;
    let url = format!("https://127.0.0.1:{}/v2/apps/web/manifests/v1", proxy.addr.port());
    assert_eq!(curl(&s, &url, Some("old-node")).await.0, 200);
    assert!(handshake_refused(&s, &url, "new-node").await, "not trusted yet");

    // Both CAs during the rotation, then only the new one.
    s.files
        .write("client-ca.pem", &format!("{}{}", s.client_ca.pem(), rotated.pem()));
    eventually_accepted(&s, &url, "new-node").await;
    assert_eq!(curl(&s, &url, Some("old-node")).await.0, 200, "both trusted");
    s.files.write("client-ca.pem", &rotated.pem());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !handshake_refused(&s, &url, "old-node").await {
        assert!(std::time::Instant::now() < deadline, "the removed CA is still trusted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(curl(&s, &url, Some("new-node")).await.0, 200);
}

/// Whether a TLS handshake with the `name` certificate fails.
async fn handshake_refused(s: &TlsSetup, url: &str, name: &str) -> bool {
    let (c, k, ca) = (
        s.files.path(&format!("{name}.pem")).display().to_string(),
        s.files.path(&format!("{name}.key")).display().to_string(),
        s.files.path("server-ca.pem").display().to_string(),
    );
    crate::support::try_run(
        "curl",
        &[
            "-sS",
            "--cacert",
            &ca,
            "--cert",
            &c,
            "--key",
            &k,
            "-o",
            "/dev/null",
            url,
        ],
        Duration::from_secs(30),
    )
    .await
    .is_err()
}

async fn eventually_accepted(s: &TlsSetup, url: &str, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if !handshake_refused(s, url, name).await {
            assert_eq!(curl(s, url, Some(name)).await.0, 200);
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the added CA is not trusted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
