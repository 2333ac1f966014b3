//! `anonymous: true`: clients without credentials are the identity
//! `anonymous`, allowed only what a rule naming `anonymous` allows.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pulls_only_what_a_rule_allows() {
    let up = upstream().await;
    let files = Files::new();
    let yaml = files.config(
        &up.registry,
        "  anonymous: true\n",
        "    - identities: [anonymous]\n      match: { repositories: [\"apps/web\"] }\n",
    );
    let proxy = proxy(&yaml).await;

    // /v2/ challenges a client without credentials even here (a 200 would
    // let `podman login` succeed without checking the password); the
    // repository a rule names for anonymous is open.
    let r = crate::support::client::get(&proxy.url("/v2/")).await;
    assert_eq!(r.status.as_u16(), 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm="))
    );
    let r = get_manifest(&proxy, "apps/web", None).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert_eq!(r.bytes(), up.web.manifest.bytes);
    // skopeo without credentials: challenged at /v2/, it fetches an
    // anonymous token and pulls with it.
    let work = tempfile::tempdir().expect("tempdir");
    let dest = format!("dir:{}", work.path().join("web").display());
    crate::support::skopeo_copy_exact(
        &format!("docker://{}/apps/web:v1", proxy.addr),
        &dest,
        std::time::Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A login checks the password although anonymous pulls are allowed.
    let authfile = work.path().join("auth.json").display().to_string();
    let login = |password: &'static str| {
        let (authfile, host) = (authfile.clone(), proxy.addr.to_string());
        async move {
            let args = [
                "login",
                "--tls-verify=false",
                "--authfile",
                authfile.as_str(),
                "-u",
                ALICE.0,
                "-p",
                password,
                host.as_str(),
            ];
            crate::support::try_run("skopeo", &args, std::time::Duration::from_secs(60)).await
        }
    };
    assert!(login("wrong").await.is_err(), "a wrong password must not log in");
    login(ALICE.1).await.unwrap_or_else(|e| panic!("login: {e}"));
    // Another repository: anonymous is asked to log in (401), not denied.
    let r = get_manifest(&proxy, "apps/rootfs", None).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("scope=\"repository:apps/rootfs:pull\"")),
        "{:?}",
        r.headers
    );
    // ... and with credentials it may.
    let r = get_manifest(&proxy, "apps/rootfs", Some(&basic(ALICE.0, ALICE.1))).await;
    assert_eq!(r.status.as_u16(), 200);
    // Bad credentials are not silently downgraded to anonymous.
    let r = get_manifest(&proxy, "apps/web", Some(&basic(ALICE.0, "wrong"))).await;
    assert_eq!(r.status.as_u16(), 401);
    // An anonymous token covers only what anonymous may pull.
    let r = crate::support::client::get(
        &proxy.url("/token?service=portcullis&scope=repository:apps/web:pull&scope=repository:private/db:pull"),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let claims = claims_of(r.json()["token"].as_str().expect("token"));
    assert_eq!(claims["sub"], "anonymous");
    assert_eq!(claims["access"].as_array().map(Vec::len), Some(1), "{claims}");
    assert_eq!(claims["access"][0]["name"], "apps/web");

    let events = files.audit_events();
    assert!(
        events
            .iter()
            .any(|e| e["identity"] == "anonymous" && e["repository"] == "apps/web"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["identity"] == "user:alice"), "{events:?}");
    assert_no_secrets(&[&files.audit_log()], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_everything_stays_anonymous() {
    let up = upstream().await;
    let proxy = proxy(&crate::support::distribution::Distribution::routing_config(
        &up.registry,
    ))
    .await;
    let r = get_manifest(&proxy, "private/db", None).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.bytes(), up.private.manifest.bytes);
    let r = crate::support::client::get(&proxy.url("/token")).await;
    assert_eq!(r.status.as_u16(), 404, "no token endpoint without auth");
}
