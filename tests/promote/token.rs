//! Promotion into a registry that requires bearer tokens: CNCF Distribution
//! configured with `auth.token`, and a token server run by the test that
//! signs JWTs (ES256, `x5c` naming a certificate Distribution trusts) for
//! exactly the scopes asked, and records what was asked. The push asks for
//! `pull,push` on the destination, and a cross-repository mount adds `pull`
//! on the source repository to the same token request.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::common::*;

const SERVICE: &str = "prod.registry";
const ISSUER: &str = "portcullis-test-token-server";

/// The test's token server: every token request's `scope` parameters.
struct TokenServer {
    url: String,
    scopes: Arc<Mutex<Vec<Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Signs tokens with `key` (PKCS#8) whose certificate is `cert_der`.
struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
}

impl Signer {
    /// A JWT granting `scopes` (`repository:<name>:<actions>`), as
    /// Distribution's token spec describes it.
    fn token(&self, scopes: &[String]) -> String {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect();
        let now = jiff::Timestamp::now().as_second();
        let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)] });
        let claims = json!({
            "iss": ISSUER, "sub": "promoter", "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{}", fastrand::u64(..)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

impl TokenServer {
    async fn start(signer: Signer) -> TokenServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let (signer, seen) = (Arc::new(signer), scopes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (signer, seen) = (signer.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let asked: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                            .filter(|(k, _)| k == "scope")
                            .map(|(_, v)| v.into_owned())
                            .collect();
                        let token = signer.token(&asked);
                        seen.lock().expect("scopes").push(asked);
                        let body = json!({ "token": token, "access_token": token, "expires_in": 300 });
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string())))) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenServer { url, scopes, task }
    }

    fn asked(&self) -> Vec<Vec<String>> {
        self.scopes.lock().expect("scopes").clone()
    }
}

/// A self-signed ECDSA P-256 certificate (Distribution's root bundle) and
/// its key, which signs the tokens.
fn token_signer(dir: &Path) -> (Signer, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let pkcs8 = key.serialize_der();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test token issuer");
    let cert = params.self_signed(&key).expect("certificate");
    let root = dir.join("token-root.pem");
    std::fs::write(&root, cert.pem()).expect("write root");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).expect("P-256 key");
    let signer = Signer {
        key,
        cert_der: cert.der().to_vec(),
    };
    (signer, root)
}

/// The built binary with `args` in `cwd`: (exit code, stdout, stderr).
async fn portcullis(cwd: std::path::PathBuf, args: Vec<String>) -> (i32, String, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    crate::support::binary::run(&args, Some(&cwd), LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_token_auth_registry_ask_pull_push_and_pull_on_the_mount_source() {
    let a = SigningKey::generate_p256();
    let work = tempfile::tempdir().expect("tempdir");
    let (signer, root) = token_signer(work.path());
    let tokens = TokenServer::start(signer).await;
    let staging = Distribution::start().await;
    let prod = Distribution::start_with_token_auth(&tokens.url, SERVICE, ISSUER, &root).await;
    let policies = policy_dir(
        &[("a", &a)],
        "rules:\n  - name: apps\n    match: { repositories: [\"**\"] }\n    require: { signatures: { anyOf: [key-a] } }\n",
    );
    let token_host = tokens.url.trim_start_matches("http://").trim_end_matches("/token");
    let config = work.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "dataDir: {}\nupstreams:\n  - host: staging.test\n    url: {}\n    insecurePlainHttp: true\n  - host: prod.test\n    url: {}\n    insecurePlainHttp: true\n    tokenRealms: [\"{token_host}\"]\n",
            work.path().join("data").display(),
            staging.url(),
            prod.url()
        ),
    )
    .expect("config");
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--config".to_owned(), config.display().to_string()]);
        all.extend(["--policies".to_owned(), policies.path().display().to_string()]);
        portcullis(work.path().to_owned(), all)
    };
    let promote = |src: &str, dst: &str| {
        let run = run(&["promote", src, dst, "--json"]);
        async move {
            let (code, stdout, stderr) = run.await;
            let report: serde_json::Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("not one JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"));
            (code, report)
        }
    };
    let image = small_image(491);
    push_signed(&staging, "apps/web", "v1", &image, &[&a]).await;

    // Into the token-auth registry: pull,push on the destination.
    let (code, report) = promote("staging.test/apps/web:v1", "prod.test/stage/web:v1").await;
    assert_eq!(code, 0, "{report}");
    assert!(copied(&report, "blobsUploaded") > 0, "{report}");
    let asked = tokens.asked();
    assert!(
        asked
            .iter()
            .any(|s| s == &["repository:stage/web:pull,push".to_owned()]),
        "{asked:?}"
    );

    // Within it: blobs mounted from stage/web, one token for both scopes.
    let (code, report) = promote("prod.test/stage/web:v1", "prod.test/live/web:stable").await;
    assert_eq!(code, 0, "{report}");
    assert!(copied(&report, "blobsMounted") > 0, "{report}");
    assert_eq!(copied(&report, "blobsUploaded"), 0, "{report}");
    let asked = tokens.asked();
    assert!(
        asked
            .iter()
            .any(|s| s.contains(&"repository:live/web:pull,push".to_owned())
                && s.contains(&"repository:stage/web:pull".to_owned())),
        "{asked:?}"
    );
    // Production serves it, through the same token flow, and it verifies.
    let (code, stdout, stderr) = run(&["verify", "prod.test/live/web:stable"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}
