//! Request routing (`server::route::parse`: method, path, query) against the
//! built-in configuration with a default upstream, and the name parsers it
//! uses (`Reference`, `RepoName`, `Tag`, `Digest`, `RegistryHost`, legacy
//! cosign tags): never panic; whatever parses prints back to itself.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;
use std::sync::LazyLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, Overrides};
use portcullis::oci::{Digest, Reference, RegistryHost, RepoName, Tag, material};
use portcullis::server::route::{self, Endpoint, Route};
use portcullis::upstream::Registries;
use portcullis_fuzz::split;

static SETUP: LazyLock<(Config, Registries)> = LazyLock::new(|| {
    let overrides = Overrides {
        default_upstream: Some("http://127.0.0.1:5999".parse().expect("url")),
        ..Default::default()
    };
    let config = Config::load(None, &overrides).expect("built-in config");
    let registries = Registries::from_config(&config, &Default::default()).expect("registries");
    (config, registries)
});

const METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

/// Parses, and if it does, its text parses back to an equal value.
fn round_trip<T: FromStr + Display + PartialEq + std::fmt::Debug>(s: &str) {
    if let Ok(v) = s.parse::<T>() {
        let text = v.to_string();
        match text.parse::<T>() {
            Ok(again) => assert_eq!(again, v, "{s:?} printed as {text:?}"),
            Err(_) => panic!("{s:?} parsed but its text {text:?} does not"),
        }
    }
}

fn names(s: &str) {
    round_trip::<Reference>(s);
    round_trip::<RepoName>(s);
    round_trip::<Tag>(s);
    round_trip::<Digest>(s);
    round_trip::<RegistryHost>(s);
    if let Some((digest, _)) = material::legacy_tag(s) {
        round_trip::<Digest>(&digest.to_string());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, input)) = split(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    names(text);
    for segment in text.split(['/', '?', '&', '=']) {
        names(segment);
    }
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let method = &METHODS[selector % METHODS.len()];
    let (config, registries) = &*SETUP;
    match route::parse(method, path, query, config, registries) {
        Ok(Route::Repo { endpoint, target, .. }) => {
            assert!(
                matches!(*method, Method::GET | Method::HEAD),
                "{method} routed: {text:?}"
            );
            // What routing yields is itself valid.
            round_trip::<RepoName>(target.repo.as_str());
            assert!(target.repo.as_str().parse::<RepoName>().is_ok(), "{text:?}");
            match endpoint {
                Endpoint::Manifest(r) => assert_eq!(r.to_string().parse::<Reference>().ok(), Some(r)),
                Endpoint::Blob(d) | Endpoint::Referrers(d) => {
                    assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d))
                }
                Endpoint::TagsList => {}
            }
        }
        Ok(_) => {}
        Err(e) => {
            let status = e.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{status}: {text:?}"
            );
            let _ = (e.code(), e.message());
        }
    }
    let _ = route::query_param(query, "ns");
    let _ = route::query_param(query, "n");
    let _ = route::query_param(query, "last");
});
