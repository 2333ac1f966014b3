//! A hostile upstream: token realms on other hosts, realms and redirects at
//! link-local (cloud metadata) addresses or odd schemes, and error bodies that
//! must not turn the proxy into a port scanner.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use super::common::*;

/// Another loopback address: "another host" as far as the proxy can tell.
const OTHER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const USERNAME: &str = "bob";
const PASSWORD: &str = "hunter2-secret";

/// The `Authorization` a realm would see if it were given the credentials.
fn basic_credentials() -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"));
    format!("Basic {encoded}")
}

/// A proxy in front of `fake` whose upstream entry also has `extra` lines
/// (credentials, `tokenRealms`, ...), each indented under the entry.
async fn proxy_with(fake: &FakeRegistry, extra: &[&str]) -> TestProxy {
    let host = fake.host();
    let mut yaml = format!(
        "defaultUpstream: {host}\nupstreams:\n  - host: {host}\n    url: {url}\n    insecurePlainHttp: true\n",
        url = fake.url()
    );
    for line in extra {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml.push_str("upstreamDefaults:\n");
    yaml.push_str(FAST);
    TestProxy::start(&yaml).await
}

fn credentials_line() -> String {
    format!("credentials: {{ username: {USERNAME}, password: {PASSWORD} }}")
}

/// A 502 whose message is exactly the refused-destination class.
fn assert_refused_destination(resp: &Resp) {
    assert_error(resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    assert_eq!(
        resp.json()["errors"][0]["message"],
        "upstream sent the proxy to a refused destination",
        "{resp:?}"
    );
}

/// A hostile origin names a realm on another host. The proxy holds
/// credentials for the origin: they must never reach that realm, so the
/// challenge is refused and the realm is never contacted. The control: with
/// the realm allow-listed (`tokenRealms`), the same realm does get them,
/// which shows the assertions above would catch a leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_a_realm_on_another_host() {
    let origin = FakeRegistry::start().await;
    let realm = FakeRegistry::start_on(OTHER_HOST).await;
    let image = oci_image(&[1000], 90);
    origin.put_image(REPO, "v1", &image);
    origin.require_token();
    origin.set_token_realm(&format!("{}/token", realm.url()));

    let proxy = proxy_with(&origin, &[&credentials_line()]).await;
    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_refused_destination(&resp);
    assert_eq!(realm.total_requests(), 0, "an off-list realm is never contacted");
    assert!(
        origin.authorizations().iter().all(Option::is_none),
        "nothing was answered: {:?}",
        origin.authorizations()
    );
    assert!(!proxy.has_manifest(&image.manifest.digest));
    let body = String::from_utf8_lossy(&resp.bytes()).into_owned();
    assert!(
        !body.contains(&realm.host()),
        "the realm is not named to clients: {body}"
    );

    let realm_entry = format!("tokenRealms: [\"{}\"]", realm.host());
    let trusting = proxy_with(&origin, &[&credentials_line(), &realm_entry]).await;
    assert_good_manifest(&trusting, "v1", &image.manifest).await;
    let seen = realm.authorizations();
    assert!(!seen.is_empty(), "the allow-listed realm issues the token");
    assert!(
        seen.iter().all(|a| a.as_deref() == Some(basic_credentials().as_str())),
        "{seen:?}"
    );
}

/// Without credentials there is nothing to leak: a realm on another host is
/// answered anonymously, and the token it issues goes only to the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_upstream_answers_a_foreign_realm_without_credentials() {
    let origin = FakeRegistry::start().await;
    let realm = FakeRegistry::start_on(OTHER_HOST).await;
    let image = oci_image(&[1000], 91);
    origin.put_image(REPO, "v1", &image);
    origin.require_token();
    origin.set_token_realm(&format!("{}/token", realm.url()));

    let proxy = proxy_with(&origin, &[]).await;
    assert_good_manifest(&proxy, "v1", &image.manifest).await;
    assert_eq!(realm.token_requests(), 1);
    assert!(realm.authorizations().iter().all(Option::is_none));
}

/// Realms at link-local literals (the cloud metadata service) are refused
/// before any connection, in every spelling; the pull fails closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_at_a_link_local_address_is_never_contacted() {
    for realm in [
        "http://169.254.169.254/latest/meta-data/token",
        "http://[::ffff:169.254.169.254]/token",
        "http://[fe80::1]:8080/token",
        "http://10.0.0.5:22/token",
    ] {
        let origin = FakeRegistry::start().await;
        let image = oci_image(&[1000], 92);
        origin.put_image(REPO, "v1", &image);
        origin.require_token();
        origin.set_token_realm(realm);
        let proxy = proxy_with(&origin, &[]).await;

        let started = Instant::now();
        let resp = client::get(&manifest_url(&proxy, "v1")).await;
        assert_refused_destination(&resp);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{realm}: refused without trying to connect"
        );
        assert!(!proxy.has_manifest(&image.manifest.digest), "{realm}");
        let body = String::from_utf8_lossy(&resp.bytes()).into_owned();
        assert!(!body.contains("169.254") && !body.contains("10.0.0.5"), "{body}");
    }
}

/// Blob redirects to a metadata address or a non-HTTP scheme are refused;
/// nothing is stored, and the upstream behaving again still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_metadata_addresses_and_odd_schemes_are_refused() {
    let (origin, proxy, image) = setup(&[5000], 93).await;
    let layer = &image.layers[0];
    for target in [
        "http://169.254.169.254",
        "http://[fd00:ec2::254]",
        "http://100.100.100.200",
        "ftp://127.0.0.1:21",
        "file://",
    ] {
        origin.clear_faults();
        origin.set_fault(&layer.digest, Fault::RedirectTo(target.to_owned()));
        let resp = client::get(&blob_url(&proxy, &layer.digest)).await;
        assert_refused_destination(&resp);
        assert_blob_not_stored(&proxy, &layer.digest).await;
    }
    origin.clear_faults();
    assert_good_blob(&proxy, layer).await;
}

/// An upstream that cannot be reached: the client learns the failure class,
/// never the address, the port or the operating system's error text (which
/// would make the proxy an oracle for scanning the network behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_error_names_only_the_class() {
    let (mut fake, proxy, image) = setup(&[1000], 94).await;
    let port = fake.host().rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    fake.stop().await;

    for url in [manifest_url(&proxy, "v1"), blob_url(&proxy, &image.layers[0].digest)] {
        let resp = client::get(&url).await;
        assert_error(&resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
        assert_eq!(resp.json()["errors"][0]["message"], "upstream unreachable", "{resp:?}");
        let body = String::from_utf8_lossy(&resp.bytes()).to_lowercase();
        for leak in [port.as_str(), "127.0.0.1", "refused", "os error", "tcp", "connect"] {
            assert!(!body.contains(leak), "`{leak}` leaked in {body}");
        }
    }
}

/// An upstream configured as HTTPS that does not speak TLS: the client is
/// told "upstream TLS failure", not the TLS library's alert text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failure_is_named_by_its_class() {
    let fake = FakeRegistry::start().await;
    let host = fake.host();
    let yaml = format!(
        "defaultUpstream: {host}\nupstreams:\n  - host: {host}\n    url: https://{host}\nupstreamDefaults:\n{FAST}"
    );
    let proxy = TestProxy::start(&yaml).await;

    let resp = client::get(&manifest_url(&proxy, "v1")).await;
    assert_error(&resp, StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    assert_eq!(resp.json()["errors"][0]["message"], "upstream TLS failure", "{resp:?}");
    assert_eq!(fake.total_requests(), 0, "no request got through without TLS");
}

/// Names are checked on the addresses they resolve to: with the upstream
/// configured by name (`localhost`, so its own address class is unknown),
/// redirects to other spellings of a loopback address that only the resolver
/// understands (`127.1`, `2130706433`) are refused before connecting. The
/// control: the named weakening switch lets the same redirect through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_addresses_are_checked_for_names_too() {
    let origin = FakeRegistry::start().await;
    let cdn = FakeRegistry::start().await;
    let image = oci_image(&[5000], 95);
    let layer = &image.layers[0];
    origin.put_image(REPO, "v1", &image);
    cdn.put_blob(REPO, layer);
    let port = |fake: &FakeRegistry| fake.host().rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    let (origin_port, cdn_port) = (port(&origin), port(&cdn));
    let config = |extra: &str| {
        format!(
            "defaultUpstream: localhost:{origin_port}\nupstreams:\n  - host: localhost:{origin_port}\n    url: http://localhost:{origin_port}\n    insecurePlainHttp: true\n{extra}upstreamDefaults:\n{FAST}"
        )
    };
    let strict = TestProxy::start(&config("")).await;
    let switched = TestProxy::start(&config("    insecureAllowPrivateAddresses: true\n")).await;

    for target in [
        format!("http://127.1:{cdn_port}"),
        format!("http://2130706433:{cdn_port}"),
    ] {
        origin.clear_faults();
        origin.set_fault(&layer.digest, Fault::RedirectTo(target.clone()));
        let resp = client::get(&blob_url(&strict, &layer.digest)).await;
        assert_refused_destination(&resp);
        assert_eq!(cdn.total_requests(), 0, "{target}: never connected");
        assert_blob_not_stored(&strict, &layer.digest).await;
    }
    assert_good_blob(&switched, layer).await;
    assert_eq!(cdn.blob_gets(REPO, &layer.digest), 1, "the switch allows the redirect");
}
