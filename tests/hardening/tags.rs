//! `tags/list` parameters: `n` a decimal number, `last` a tag, otherwise
//! `400` with OCI error JSON and nothing asked upstream; valid values are
//! forwarded exactly.

use super::common::*;

#[tokio::test]
async fn invalid_tag_list_parameters_are_refused_before_the_upstream() {
    let (fake, image) = upstream_with_image(&[64], 31).await;
    for tag in ["v2", "v3", "v4"] {
        fake.tag(REPO, tag, &image.manifest);
    }
    let proxy = proxy_for(&fake, "").await;
    let list = format!("/v2/{REPO}/tags/list");
    let cases = [
        ("n=-1", "UNSUPPORTED"),
        ("n=%2B1", "UNSUPPORTED"),
        ("n=1e3", "UNSUPPORTED"),
        ("n=", "UNSUPPORTED"),
        ("n=0x10", "UNSUPPORTED"),
        ("last=%FF%FE", "NAME_INVALID"),
        ("last=..%2F..%2Fetc", "NAME_INVALID"),
        ("last=a%20b", "NAME_INVALID"),
        ("n=2&last=%00", "NAME_INVALID"),
    ];
    for (query, code) in cases {
        let r = get(&proxy.url(&format!("{list}?{query}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{query}");
        assert_eq!(r.error_code(), code, "{query}");
    }
    assert_eq!(fake.count("GET", &list), 0, "a refused query is never forwarded");

    // Valid values reach the upstream as the client wrote them; a huge `n`
    // is clamped, not refused and not overflowed.
    let r = get(&proxy.url(&format!("{list}?n=2&last=v1"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["tags"], serde_json::json!(["v2", "v3"]));
    let r = get(&proxy.url(&format!("{list}?n=99999999999999999999999999"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["tags"], serde_json::json!(["v1", "v2", "v3", "v4"]));
    let forwarded: Vec<Option<String>> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == list)
        .map(|r| r.query)
        .collect();
    assert_eq!(
        forwarded,
        vec![Some("n=2&last=v1".to_owned()), Some("n=10000".to_owned())]
    );
}
