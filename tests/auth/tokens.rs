//! The token flow at the HTTP level: challenges, scopes, expiry, tampering,
//! 401 versus 403, static tokens, Basic on every request.

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::*;
use crate::support::client::request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scope_expiry_tampering_and_denials() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;

    // A token for apps/web only, though alice may pull all of apps/**.
    let (t_web, claims) = token(&proxy, ALICE, &["apps/web", "private/db"]).await;
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["aud"], "portcullis");
    assert_eq!(
        claims["access"],
        serde_json::json!([{ "type": "repository", "name": "apps/web", "actions": ["pull"] }]),
        "private/db is not allowed to alice, so it is left out"
    );
    let bearer = format!("Bearer {t_web}");
    let r = get_manifest(&proxy, "apps/web", Some(&bearer)).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert_eq!(r.bytes(), up.web.manifest.bytes);

    // Repository B, allowed to alice but not in the token: a new token is needed.
    let r = get_manifest(&proxy, "apps/rootfs", Some(&bearer)).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    let challenge = r.header("www-authenticate").expect("challenge").to_owned();
    assert!(
        challenge.contains("scope=\"repository:apps/rootfs:pull\""),
        "{challenge}"
    );
    // Repository C, not allowed to alice at all: 403.
    let r = get_manifest(&proxy, "private/db", Some(&bearer)).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (403, "DENIED"));
    assert!(r.error_message().contains("user:alice"), "{}", r.error_message());

    // Expired: signed with the right (shared) key, past its expiry.
    let key = std::fs::read(files.path("token.key")).expect("key");
    let mut old = claims.clone();
    old["iat"] = serde_json::json!(claims["iat"].as_u64().unwrap_or(0) - 7200);
    old["nbf"] = old["iat"].clone();
    old["exp"] = serde_json::json!(claims["iat"].as_u64().unwrap_or(0) - 3600);
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &old,
        &EncodingKey::from_secret(key.trim_ascii_end()).expect("key"),
    )
    .expect("sign");
    let r = get_manifest(&proxy, "apps/web", Some(&format!("Bearer {expired}"))).await;
    assert_eq!((r.status.as_u16(), r.error_message().as_str()), (401, "token expired"));

    // Tampered: the payload rewritten to claim private/db, signature kept.
    let mut forged = claims.clone();
    forged["access"][0]["name"] = "private/db".into();
    let parts: Vec<&str> = t_web.split('.').collect();
    let payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&forged).expect("json"),
    );
    let tampered = format!("Bearer {}.{payload}.{}", parts[0], parts[2]);
    let r = get_manifest(&proxy, "private/db", Some(&tampered)).await;
    assert_eq!((r.status.as_u16(), r.error_message().as_str()), (401, "invalid token"));
    // Signed with another key (another deployment).
    let foreign = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&[9u8; 32]).expect("key"),
    )
    .expect("sign");
    let r = get_manifest(&proxy, "apps/web", Some(&format!("Bearer {foreign}"))).await;
    assert_eq!(r.status.as_u16(), 401);

    // Basic credentials straight on the registry API (curl-style).
    let r = get_manifest(&proxy, "apps/web", Some(&basic(ALICE.0, ALICE.1))).await;
    assert_eq!(r.status.as_u16(), 200);
    let r = get_manifest(&proxy, "apps/web", Some(&basic(ALICE.0, "wrong-password"))).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    let r = get_manifest(&proxy, "apps/web", Some(&basic("mallory", "x"))).await;
    assert_eq!(r.status.as_u16(), 401);
    // bob is authenticated but only has bob/**.
    let r = get_manifest(&proxy, "apps/web", Some(&basic(BOB.0, BOB.1))).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (403, "DENIED"));
    let r = get_manifest(&proxy, "bob/tool", Some(&basic(BOB.0, BOB.1))).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.bytes(), up.bobs.manifest.bytes);
    // The rule for bob names registry.test only: the same repository under
    // the upstream's other name is not his.
    let other = format!("{}/bob/tool", up.registry.host());
    let r = get_manifest(&proxy, &other, Some(&basic(BOB.0, BOB.1))).await;
    assert_eq!(r.status.as_u16(), 403);

    // A static token, as a bearer and as a Basic password (docker login).
    let r = get_manifest(&proxy, "apps/web", Some(&format!("Bearer {}", ROBOT.1))).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    let r = get_manifest(&proxy, "apps/web", Some("Bearer not-a-known-token-at-all")).await;
    assert_eq!((r.status.as_u16(), r.error_message().as_str()), (401, "invalid token"));
    let (t_robot, claims) = token(&proxy, ROBOT, &["apps/web"]).await;
    assert_eq!(claims["sub"], "user:ci-robot");
    let r = get_manifest(&proxy, "apps/web", Some(&format!("Bearer {t_robot}"))).await;
    assert_eq!(r.status.as_u16(), 200);

    // The OAuth2 password grant (containerd).
    let form = format!(
        "grant_type=password&username={}&password={}&scope=repository%3Aapps%2Fweb%3Apull&service=portcullis&client_id=containerd-client",
        ALICE.0, ALICE.1
    );
    let r = post_form(&proxy, &form).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    let access = r.json()["access_token"].as_str().expect("access_token").to_owned();
    assert_eq!(claims_of(&access)["access"][0]["name"], "apps/web");
    let r = post_form(&proxy, "grant_type=password&username=alice&password=nope&scope=").await;
    assert_eq!(r.status.as_u16(), 401);
    let r = post_form(&proxy, "grant_type=refresh_token&refresh_token=x").await;
    assert_eq!(r.status.as_u16(), 400);
    // Wrong credentials at /token: 401 with a Basic challenge.
    let r = request(
        Method::GET,
        &proxy.url("/token?service=portcullis&scope=repository:apps/web:pull"),
        &[("authorization", &basic(ALICE.0, "wrong"))],
    )
    .await;
    assert_eq!(r.status.as_u16(), 401);
    assert!(r.header("www-authenticate").is_some_and(|c| c.starts_with("Basic")));

    // Audit events and access lines name the identity.
    let events = files.audit_events();
    assert!(
        events
            .iter()
            .any(|e| e["identity"] == "user:alice" && e["repository"] == "apps/web"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["identity"] == "user:ci-robot"), "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")))
    );
    let log = captured_log();
    assert!(log.contains("identity=user:bob"), "the access log names the identity");
    assert!(log.contains("reason=\"bad_password\"") || log.contains("reason=bad_password"));
    assert_no_secrets(&[&files.audit_log()], &[&t_web, &t_robot, &access]);

    // Each failure is counted once, by reason, on the admin listener.
    let before = (
        auth_failures(&proxy, "bad_password").await,
        auth_failures(&proxy, "unknown_user").await,
    );
    let r = get_manifest(&proxy, "apps/web", Some(&basic(ALICE.0, "wrong-again"))).await;
    assert_eq!(r.status.as_u16(), 401);
    let r = get_manifest(&proxy, "apps/web", Some(&basic("eve", "x"))).await;
    assert_eq!(r.status.as_u16(), 401);
    let after = (
        auth_failures(&proxy, "bad_password").await,
        auth_failures(&proxy, "unknown_user").await,
    );
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
}

/// `portcullis_auth_failures_total{reason}` from the admin listener.
async fn auth_failures(proxy: &crate::support::proxy::TestProxy, reason: &str) -> u64 {
    let text =
        String::from_utf8_lossy(&request(Method::GET, &proxy.admin_url("/metrics"), &[]).await.bytes()).into_owned();
    let series = format!("portcullis_auth_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

async fn post_form(proxy: &crate::support::proxy::TestProxy, form: &str) -> crate::support::client::Resp {
    crate::support::client::request_with_body(
        Method::POST,
        &proxy.url("/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        bytes::Bytes::from(form.to_owned()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_get_a_challenge() {
    let up = upstream().await;
    let files = Files::new();
    let proxy = proxy(&files.config(&up.registry, "", "")).await;
    let realm = format!("http://{}/token", proxy.addr);

    let r = crate::support::client::get(&proxy.url("/v2/")).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"portcullis\"").as_str())
    );
    let r = crate::support::client::get(&proxy.url("/v2/")).await;
    assert_eq!(r.status.as_u16(), 401);
    let r = request(
        Method::GET,
        &proxy.url("/v2/"),
        &[("authorization", &basic(ALICE.0, ALICE.1))],
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "/v2/ with credentials");

    let r = get_manifest(&proxy, "apps/web", None).await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"portcullis\",scope=\"repository:apps/web:pull\"").as_str())
    );
    // HEAD too (no body, but the header).
    let r = request(Method::HEAD, &proxy.url("/v2/apps/web/manifests/v1"), &[]).await;
    assert_eq!(r.status.as_u16(), 401);
    assert!(r.header("www-authenticate").is_some());
    // containerd's namespace travels in the realm.
    let ns = up.registry.host();
    let r = request(
        Method::GET,
        &proxy.url(&format!("/v2/apps/web/manifests/v1?ns={ns}")),
        &[],
    )
    .await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!("Bearer realm=\"{realm}?ns={ns}\",service=\"portcullis\",scope=\"repository:apps/web:pull\"")
                .as_str()
        )
    );
    // A blob without credentials: refused before anything is fetched.
    let blob = &up.web.layers[0].digest;
    let r = request(Method::GET, &proxy.url(&format!("/v2/apps/web/blobs/{blob}")), &[]).await;
    assert_eq!(r.status.as_u16(), 401);
    assert!(!proxy.has_blob(blob));
    // No anonymous token either.
    let r = crate::support::client::get(&proxy.url("/token?service=portcullis&scope=repository:apps/web:pull")).await;
    assert_eq!(r.status.as_u16(), 401);
    assert_no_secrets(&[&files.audit_log()], &[]);
}
