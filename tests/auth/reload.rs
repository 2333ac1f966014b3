//! No restart needed: the server certificate and the credentials files are
//! re-read when their content changes; a bad new file is refused and the
//! old one stays in force.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::common::*;

/// The certificate a new TLS connection is served.
async fn served_cert(port: u16, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a certificate")
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM").to_vec()
}

/// Wait (up to 15 s: the files are polled every 2 s) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotates_without_restart() {
    capture_logs();
    let ca = Ca::new("rotation CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ca.leaf("portcullis-1", &["127.0.0.1"], false);
    let (cert, key) = write_pair(dir.path(), "server", &first);
    let yaml = format!(
        "tls:\n  cert: {}\n  key: {}\nupstreams:\n  - host: registry.test\n    url: http://127.0.0.1:9\n    insecurePlainHttp: true\n",
        cert.display(),
        key.display()
    );
    let proxy = proxy(&yaml).await;
    let port = proxy.addr.port();
    assert_eq!(served_cert(port, &ca.pem()).await, der(&first.0));

    // cert-manager writes a new pair in place.
    let second = ca.leaf("portcullis-2", &["127.0.0.1"], false);
    write_pair(dir.path(), "server", &second);
    eventually("the new certificate", || async {
        served_cert(port, &ca.pem()).await == der(&second.0)
    })
    .await;

    // A broken pair (the key of another certificate) is refused: the
    // second certificate stays in force.
    let third = ca.leaf("portcullis-3", &["127.0.0.1"], false);
    std::fs::write(&cert, &third.0).expect("cert");
    std::fs::write(&key, &first.1).expect("mismatched key");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(served_cert(port, &ca.pem()).await, der(&second.0));
    assert!(captured_log().contains("reload refused"), "the refusal is logged");
    // Fixed: the third certificate with its own key is taken.
    std::fs::write(&key, &third.1).expect("key");
    eventually("the repaired certificate", || async {
        served_cert(port, &ca.pem()).await == der(&third.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_changes_apply_and_bad_files_are_refused() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;
    let ok = |creds: (&'static str, &'static str)| {
        let proxy = &proxy;
        async move {
            get_manifest(proxy, "apps/web", Some(&basic(creds.0, creds.1)))
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(ok(ALICE).await, 200);
    const NEW: &str = "alice-N3w-pa55word-0a9b";
    files.write(
        "htpasswd",
        &format!("{}\n{}\n", htpasswd_line(ALICE.0, NEW), htpasswd_line(BOB.0, BOB.1)),
    );
    eventually("the new password", || async { ok((ALICE.0, NEW)).await == 200 }).await;
    assert_eq!(ok(ALICE).await, 401, "the old password no longer works");
    // An MD5 entry refuses the whole file; the previous one stays.
    files.write("htpasswd", "alice:$apr1$abc$def\n");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ok((ALICE.0, NEW)).await, 200);
    assert!(captured_log().contains("only bcrypt"), "the refusal names the reason");
    // Group membership changes too (once the htpasswd file is valid
    // again: the credentials are replaced as a whole): alice leaves `ci`.
    files.write(
        "htpasswd",
        &format!("{}\n{}\n", htpasswd_line(ALICE.0, NEW), htpasswd_line(BOB.0, BOB.1)),
    );
    files.write("groups", "ci: ci-robot\n");
    eventually("the group change", || async { ok((ALICE.0, NEW)).await == 403 }).await;
    assert_no_secrets(&[&files.audit_log()], &[NEW]);
}
