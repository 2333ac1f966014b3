//! Tag listing (order, `n`, `last`, `Link`) and referrers (tag-schema fallback, `artifactType` filtering, empty indexes).

use super::common::*;

/// Content discovery: tag listing in lexical order, `n`, `last`, and
/// `Link` pagination followed to the end.
#[tokio::test]
async fn tags_list() {
    let registry = Distribution::start().await;
    let repo = "conformance/tags";
    let all = seed_tags(&registry, repo).await;
    let proxy = TestProxy::with_default_upstream(&registry.url()).await;

    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_api_version(&r, "tags");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some(r.bytes().len().to_string().as_str()));
    assert_eq!(r.header("link"), None, "no Link without n");
    assert_eq!(r.json()["name"], json!(repo));
    assert_eq!(tags_of(&r), all, "all tags in lexical order");

    // `n` limits, `Link` continues; following the links yields every tag once.
    for n in [1, 2, 5, all.len() - 1] {
        let mut got = Vec::new();
        let mut path = format!("/v2/{repo}/tags/list?n={n}");
        let mut pages = 0;
        loop {
            let r = get(&proxy.url(&path)).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            let page = tags_of(&r);
            assert!(page.len() <= n, "{path}: {} tags > n={n}", page.len());
            pages += 1;
            got.extend(page.clone());
            match next_link(&r) {
                Some(next) => {
                    let last = page.last().expect("a page with a next link is not empty");
                    assert_eq!(next, format!("/v2/{repo}/tags/list?n={n}&last={last}"), "Link target");
                    path = next;
                }
                None => break,
            }
            assert!(pages <= all.len() + 1, "pagination does not end");
        }
        assert_eq!(got, all, "n={n}: pages concatenate to the full list");
    }

    // Conformance "GET number of tags should be limited by `n`".
    let half = all.len() / 2;
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={half}"))).await;
    assert_eq!(tags_of(&r), all[..half].to_vec());
    assert!(next_link(&r).is_some(), "more tags follow: Link header");
    // Conformance "GET start of tag is set by `last`".
    let last = &all[half - 1];
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={half}&last={last}"))).await;
    assert_eq!(tags_of(&r), all[half..(2 * half).min(all.len())].to_vec());
    // `last` alone: everything after it.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?last={last}"))).await;
    assert_eq!(tags_of(&r), all[half..].to_vec());
    assert_eq!(r.header("link"), None);
    // `last` past the end: empty list, no Link.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n=3&last=zzz"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(tags_of(&r), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    // `n` beyond the count: everything, no Link.
    let r = get(&proxy.url(&format!("/v2/{repo}/tags/list?n={}", all.len() + 10))).await;
    assert_eq!(tags_of(&r), all);
    assert_eq!(r.header("link"), None);

    // Unknown repository.
    let r = get(&proxy.url("/v2/conformance/nope/tags/list")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "NAME_UNKNOWN", "tags of unknown repo");
}

/// Content discovery: the referrers API, served from the referrers tag
/// schema since distribution 2.8 has no native API.
#[tokio::test]
async fn referrers() {
    let (s, proxy) = seeded_proxy().await;
    let subject = &s.oci.manifest.digest;
    let url = |q: &str| proxy.url(&format!("/v2/{REPO}/referrers/{subject}{q}"));

    let r = get(&url("")).await;
    let got = referrers_descriptors(&r, "all referrers");
    assert_eq!(
        got,
        vec![with_artifact_type(&s.sig, SIG), with_artifact_type(&s.sbom, SBOM)]
    );
    assert_eq!(r.header("oci-filters-applied"), None, "no filter requested");

    // Filtering by artifactType.
    for (wanted, expected) in [
        (SIG, vec![with_artifact_type(&s.sig, SIG)]),
        (SBOM, vec![with_artifact_type(&s.sbom, SBOM)]),
        ("application/vnd.example.none", vec![]),
    ] {
        let q = format!("?artifactType={}", wanted.replace('+', "%2B"));
        let r = get(&url(&q)).await;
        let got = referrers_descriptors(&r, &format!("artifactType={wanted}"));
        assert_eq!(got, expected, "artifactType={wanted}");
        assert_eq!(
            r.header("oci-filters-applied"),
            Some("artifactType"),
            "artifactType={wanted}"
        );
    }

    // Each listed referrer is pullable through the proxy and names the subject.
    for m in [&s.sig, &s.sbom] {
        let r = get(&proxy.url(&format!("/v2/{REPO}/manifests/{}", m.digest))).await;
        assert_manifest(&r, m, false, "referrer manifest");
        assert_eq!(r.json()["subject"]["digest"], json!(subject.to_string()));
    }

    // Subjects without referrers (existing or not): 200 and an empty index.
    for subject in [
        s.docker.manifest.digest.clone(),
        s.index.digest.clone(),
        unknown_digest(),
    ] {
        let r = get(&proxy.url(&format!("/v2/{REPO}/referrers/{subject}"))).await;
        assert_eq!(
            referrers_descriptors(&r, &format!("no referrers for {subject}")),
            Vec::<Value>::new()
        );
    }
    let r = get(&proxy.url(&format!("/v2/conformance/nope/referrers/{subject}"))).await;
    assert_eq!(referrers_descriptors(&r, "unknown repository"), Vec::<Value>::new());
}
