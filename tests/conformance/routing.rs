//! The four routing shapes and refusal of hosts that are not allow-listed.

use super::common::*;

/// The four routing shapes over the plain HTTP API: default upstream,
/// host in path (portless and host:port), alias, and `?ns=` (echoed as
/// `OCI-Namespace`). Every shape serves the same bytes.
#[tokio::test]
async fn routing_shapes() {
    let s = seed().await;
    s.registry.push_manifest(REPO, "v2", &s.docker.manifest).await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let host = s.registry.host();
    let encoded_host = host.replace(':', "%3A");
    // (label, name prefix, query, expected OCI-Namespace, client-visible name)
    let shapes: Vec<(&str, String, String, Option<String>, String)> = vec![
        ("default", format!("/v2/{REPO}"), String::new(), None, REPO.to_owned()),
        (
            "host in path",
            format!("/v2/registry.test/{REPO}"),
            String::new(),
            None,
            format!("registry.test/{REPO}"),
        ),
        (
            "host:port in path",
            format!("/v2/{host}/{REPO}"),
            String::new(),
            None,
            format!("{host}/{REPO}"),
        ),
        (
            "alias",
            format!("/v2/local/{REPO}"),
            String::new(),
            None,
            format!("local/{REPO}"),
        ),
        (
            "ns host:port",
            format!("/v2/{REPO}"),
            format!("ns={host}"),
            Some(host.clone()),
            REPO.to_owned(),
        ),
        (
            "ns encoded",
            format!("/v2/{REPO}"),
            format!("ns={encoded_host}"),
            Some(host.clone()),
            REPO.to_owned(),
        ),
        (
            "ns host",
            format!("/v2/{REPO}"),
            "ns=registry.test".into(),
            Some("registry.test".into()),
            REPO.to_owned(),
        ),
    ];
    let layer = &s.oci.layers[0];
    for (label, prefix, query, namespace, client_name) in &shapes {
        let with = |path: &str, extra: &str| {
            let q: Vec<&str> = [extra, query.as_str()].into_iter().filter(|x| !x.is_empty()).collect();
            if q.is_empty() {
                proxy.url(&format!("{prefix}{path}"))
            } else {
                proxy.url(&format!("{prefix}{path}?{}", q.join("&")))
            }
        };
        let check_ns = |r: &Resp, what: &str| {
            assert_eq!(
                r.header("oci-namespace"),
                namespace.as_deref(),
                "{label} {what}: OCI-Namespace"
            );
        };
        let r = request(Method::GET, &with("/manifests/v1", ""), &[("accept", OCI_MANIFEST)]).await;
        assert_manifest(&r, &s.oci.manifest, false, &format!("{label}: GET manifest by tag"));
        check_ns(&r, "manifest");
        let r = head(&with(&format!("/manifests/{}", s.index.digest), "")).await;
        assert_manifest(&r, &s.index, true, &format!("{label}: HEAD index by digest"));
        check_ns(&r, "index");
        let r = get(&with(&format!("/blobs/{}", layer.digest), "")).await;
        assert_blob(&r, &layer.digest, &layer.bytes, false, &format!("{label}: GET blob"));
        check_ns(&r, "blob");
        let r = get(&with("/tags/list", "")).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: tags");
        check_ns(&r, "tags");
        assert_eq!(
            r.json()["name"],
            json!(client_name),
            "{label}: tag list names the repository as the client does"
        );
        let mut all = tags_of(&r);
        assert!(
            all.contains(&"v1".to_owned()) && all.contains(&"v2".to_owned()),
            "{label}: {all:?}"
        );
        // Pagination keeps the shape (including `ns`).
        let r = get(&with("/tags/list", "n=1")).await;
        let next = next_link(&r).unwrap_or_else(|| panic!("{label}: Link header"));
        assert!(
            next.starts_with(&format!("/v2/{client_name}/tags/list?")),
            "{label}: {next}"
        );
        if let Some(ns) = namespace {
            assert!(
                next.contains(&format!("ns={}", ns.replace(':', "%3A"))),
                "{label}: Link keeps ns: {next}"
            );
        }
        let mut paged = tags_of(&r);
        let r = get(&proxy.url(&next)).await;
        check_ns(&r, "tags page 2");
        paged.extend(tags_of(&r));
        all.truncate(2);
        assert_eq!(paged, all, "{label}: second page");
        let r = get(&with(&format!("/referrers/{}", s.oci.manifest.digest), "")).await;
        assert_eq!(referrers_descriptors(&r, label).len(), 2, "{label}: referrers");
        check_ns(&r, "referrers");
        let r = get(&with(
            &format!("/referrers/{}", s.oci.manifest.digest),
            &format!("artifactType={}", SIG.replace('+', "%2B")),
        ))
        .await;
        assert_eq!(
            referrers_descriptors(&r, label),
            vec![with_artifact_type(&s.sig, SIG)],
            "{label}: filtered"
        );
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
        let r = get(&with("/manifests/nonexistent", "")).await;
        assert_error(
            &r,
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("{label}: unknown tag"),
        );
    }
}

/// Hosts that are not allow-listed are refused with 403 `DENIED`, for every
/// endpoint and both the host-in-path and the `?ns=` shapes.
#[tokio::test]
async fn non_allow_listed_hosts_denied() {
    let s = seed().await;
    let proxy = TestProxy::start(&Distribution::routing_config(&s.registry)).await;
    let d = &s.oci.layers[0].digest;
    let m = &s.oci.manifest.digest;
    let cases = [
        format!("/v2/evil.example/{REPO}/manifests/v1"),
        format!("/v2/evil.example/{REPO}/manifests/{m}"),
        format!("/v2/evil.example/{REPO}/blobs/{d}"),
        format!("/v2/evil.example/{REPO}/tags/list"),
        format!("/v2/evil.example/{REPO}/referrers/{m}"),
        format!("/v2/127.0.0.1:1/{REPO}/manifests/v1"),
        format!("/v2/localhost/{REPO}/manifests/v1"),
        format!("/v2/localhost:{}/{REPO}/manifests/v1", s.registry.port),
        "/v2/docker.io/library/alpine/manifests/latest".to_owned(),
        format!("/v2/{REPO}/manifests/v1?ns=evil.example"),
        format!("/v2/{REPO}/blobs/{d}?ns=evil.example"),
        format!("/v2/{REPO}/tags/list?ns=docker.io"),
        format!("/v2/{REPO}/referrers/{m}?ns=127.0.0.1:1"),
        format!("/v2/{REPO}/manifests/v1?ns=localhost:{}", s.registry.port),
    ];
    for path in &cases {
        let r = get(&proxy.url(path)).await;
        assert_error(&r, StatusCode::FORBIDDEN, "DENIED", &format!("GET {path}"));
        if !path.contains("/tags/") && !path.contains("/referrers/") {
            let r = head(&proxy.url(path)).await;
            assert_error(&r, StatusCode::FORBIDDEN, "DENIED", &format!("HEAD {path}"));
        }
    }
    assert!(!proxy.has_blob(d));
}
