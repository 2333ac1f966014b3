//! Request path → [`Route`]. One parser splits `/v2/<name>/<endpoint>` from
//! the right (names have any depth), then picks the upstream by the four
//! routing shapes, in this order:
//!
//! 1. containerd's `?ns=<host>` (echoed as `OCI-Namespace`);
//! 2. a configured alias as first segment (`/v2/hub/library/alpine/...`);
//! 3. an allow-listed registry host as first segment (`/v2/ghcr.io/org/app/...`);
//! 4. otherwise the default upstream (Docker's `registry-mirrors`).
//!
//! Hosts that are not allow-listed are refused: never an open proxy.

use http::Method;

use super::error::ApiError;
use crate::config::Config;
use crate::oci::{Digest, Reference, RegistryHost, RepoName};
use crate::proxy::Target;
use crate::telemetry::metrics::RouteKind;
use crate::upstream::Registries;

/// Which pull-API endpoint a request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(Reference),
    Blob(Digest),
    TagsList,
    Referrers(Digest),
}

impl Endpoint {
    /// The route as metrics and the access log name it.
    pub fn kind(&self) -> RouteKind {
        match self {
            Endpoint::Manifest(_) => RouteKind::Manifest,
            Endpoint::Blob(_) => RouteKind::Blob,
            Endpoint::TagsList => RouteKind::Tags,
            Endpoint::Referrers(_) => RouteKind::Referrers,
        }
    }
}

/// A parsed request.
#[derive(Debug)]
pub enum Route {
    /// `GET /v2/`: API version check.
    Base,
    /// `/token`: the registry token endpoint (with `auth:`).
    Token,
    /// `/_portcullis/cluster/v1/…`: another replica asks this one.
    Peer(PeerRequest),
    /// A repository endpoint with its resolved upstream.
    Repo {
        endpoint: Endpoint,
        target: Target,
        /// Set for `?ns=` requests: the namespace to echo.
        namespace: Option<RegistryHost>,
    },
}

/// A replica's request to the one leading a blob or a tag. Names are the
/// upstream's (the asking replica already mapped them).
#[derive(Debug, PartialEq, Eq)]
pub enum PeerRequest {
    Blob {
        upstream: RegistryHost,
        repo: RepoName,
        digest: Digest,
    },
    Tag {
        upstream: RegistryHost,
        repo: RepoName,
        tag: crate::oci::Tag,
    },
}

fn peer_request(method: &Method, path: &str, query: Option<&str>) -> Result<Option<PeerRequest>, ApiError> {
    use crate::cluster::client::{BLOB_PATH, TAG_PATH};
    if path != BLOB_PATH && path != TAG_PATH {
        return Ok(None);
    }
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(method));
    }
    let param = |key: &str| {
        query_param(query, key).ok_or_else(|| ApiError::unsupported(&format!("peer request without `{key}`")))
    };
    let upstream: RegistryHost = param("upstream")?.parse().map_err(ApiError::bad_name)?;
    let repo: RepoName = param("repo")?.parse().map_err(ApiError::bad_name)?;
    Ok(Some(if path == BLOB_PATH {
        PeerRequest::Blob {
            upstream,
            repo,
            digest: param("digest")?.parse().map_err(ApiError::bad_digest)?,
        }
    } else {
        PeerRequest::Tag {
            upstream,
            repo,
            tag: param("tag")?.parse().map_err(ApiError::bad_name)?,
        }
    }))
}

/// The raw pieces of a `/v2/<name>/...` path, before routing.
#[derive(Debug, PartialEq, Eq)]
struct PathParts<'a> {
    name: &'a str,
    endpoint: RawEndpoint<'a>,
}

#[derive(Debug, PartialEq, Eq)]
enum RawEndpoint<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Upload,
    TagsList,
    Referrers(&'a str),
}

/// Split the path after `/v2/` from the right.
fn split_path(rest: &str) -> Option<PathParts<'_>> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(PathParts {
            name,
            endpoint: RawEndpoint::TagsList,
        });
    }
    if let Some(i) = rest.find("/blobs/uploads") {
        let after = &rest[i + "/blobs/uploads".len()..];
        if after.is_empty() || after.starts_with('/') {
            return Some(PathParts {
                name: &rest[..i],
                endpoint: RawEndpoint::Upload,
            });
        }
    }
    let (name, kind, reference) = ["/manifests/", "/blobs/", "/referrers/"]
        .iter()
        .filter_map(|sep| rest.rfind(sep).map(|i| (i, *sep)))
        .max_by_key(|(i, _)| *i)
        .map(|(i, sep)| (&rest[..i], sep, &rest[i + sep.len()..]))?;
    if reference.is_empty() || reference.contains('/') {
        return None;
    }
    let endpoint = match kind {
        "/manifests/" => RawEndpoint::Manifest(reference),
        "/blobs/" => RawEndpoint::Blob(reference),
        _ => RawEndpoint::Referrers(reference),
    };
    Some(PathParts { name, endpoint })
}

/// The value of one query parameter (percent-decoded).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Every value of a repeated query parameter (percent-decoded).
pub fn query_params(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Parse method, path and query into a route, or the OCI error to send.
pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    config: &Config,
    registries: &Registries,
) -> Result<Route, ApiError> {
    if path == "/token" {
        return Ok(Route::Token);
    }
    if let Some(peer) = peer_request(method, path, query)? {
        return Ok(Route::Peer(peer));
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(ApiError::not_found_route(path));
    };
    if rest.is_empty() || rest == "/" {
        return read_only(method).map(|()| Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or_else(|| ApiError::not_found_route(path))?;
    if rest == "_catalog" {
        return Err(ApiError::unsupported("the catalog API is not offered by this proxy"));
    }
    let parts = split_path(rest).ok_or_else(|| ApiError::not_found_route(path))?;
    if parts.endpoint == RawEndpoint::Upload {
        return Err(ApiError::push_refused());
    }
    read_only(method)?;
    let endpoint = match parts.endpoint {
        RawEndpoint::Manifest(r) => Endpoint::Manifest(r.parse().map_err(ApiError::bad_reference)?),
        RawEndpoint::Blob(d) => Endpoint::Blob(d.parse().map_err(ApiError::bad_digest)?),
        RawEndpoint::Referrers(d) => Endpoint::Referrers(d.parse().map_err(ApiError::bad_digest)?),
        RawEndpoint::TagsList => Endpoint::TagsList,
        RawEndpoint::Upload => return Err(ApiError::push_refused()),
    };
    if matches!(endpoint, Endpoint::TagsList | Endpoint::Referrers(_)) && method != Method::GET {
        return Err(ApiError::method_not_allowed(method));
    }
    let ns = query_param(query, "ns");
    let (target, namespace) = resolve_target(parts.name, ns.as_deref(), config, registries)?;
    Ok(Route::Repo {
        endpoint,
        target,
        namespace,
    })
}

/// Only GET and HEAD are served; every write is refused with `UNSUPPORTED`.
fn read_only(method: &Method) -> Result<(), ApiError> {
    match *method {
        Method::GET | Method::HEAD => Ok(()),
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE => Err(ApiError::push_refused()),
        _ => Err(ApiError::method_not_allowed(method)),
    }
}

pub(super) fn resolve_target(
    name: &str,
    ns: Option<&str>,
    config: &Config,
    registries: &Registries,
) -> Result<(Target, Option<RegistryHost>), ApiError> {
    let target = |upstream: &std::sync::Arc<crate::config::Upstream>, repo: &str| -> Result<Target, ApiError> {
        let repo: RepoName = repo.parse().map_err(ApiError::bad_name)?;
        let registry = registries
            .get(&upstream.host)
            .ok_or_else(|| ApiError::internal(format!("no client for upstream {}", upstream.host)))?;
        Ok(Target {
            registry: registry.clone(),
            repo: upstream.upstream_repo(&repo),
            client_name: name.to_owned(),
        })
    };
    if let Some(ns) = ns {
        let host: RegistryHost = ns.parse().map_err(ApiError::bad_name)?;
        let upstream = config
            .upstream_by_host(host.as_str())
            .ok_or_else(|| ApiError::not_allow_listed(&host))?;
        return Ok((target(upstream, name)?, Some(host)));
    }
    if let Some((first, rest)) = name.split_once('/') {
        if let Some(upstream) = config.upstream_by_alias(first) {
            return Ok((target(upstream, rest)?, None));
        }
        if RegistryHost::looks_like_host(first) {
            let host: RegistryHost = first.parse().map_err(ApiError::bad_name)?;
            let upstream = config
                .upstream_by_host(host.as_str())
                .ok_or_else(|| ApiError::not_allow_listed(&host))?;
            return Ok((target(upstream, rest)?, None));
        }
    }
    let upstream = config.default_upstream.as_ref().ok_or_else(|| {
        ApiError::name_unknown(format!(
            "`{name}` names no registry and no default upstream is configured"
        ))
    })?;
    Ok((target(upstream, name)?, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn setup() -> (Config, Registries) {
        let ov = Overrides {
            default_upstream: Some("http://127.0.0.1:5999".parse().expect("url")),
            ..Default::default()
        };
        let config = Config::load(None, &ov).expect("config");
        let registries = Registries::from_config(&config, &Default::default()).expect("registries");
        (config, registries)
    }

    fn route(path_and_query: &str) -> Result<Route, ApiError> {
        route_m(&Method::GET, path_and_query)
    }

    fn route_m(method: &Method, path_and_query: &str) -> Result<Route, ApiError> {
        let (config, registries) = setup();
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        parse(method, path, query, &config, &registries)
    }

    fn target_of(r: Result<Route, ApiError>) -> (String, String, Option<String>) {
        match r {
            Ok(Route::Repo { target, namespace, .. }) => (
                target.registry.host().to_string(),
                target.repo.to_string(),
                namespace.map(|n| n.to_string()),
            ),
            other => panic!("not a repo route: {other:?}"),
        }
    }

    #[test]
    fn splits_from_the_right() {
        assert_eq!(
            split_path("a/manifests/b/manifests/v1"),
            Some(PathParts {
                name: "a/manifests/b",
                endpoint: RawEndpoint::Manifest("v1")
            })
        );
        assert_eq!(split_path("a/b/c/tags/list").map(|p| p.name), Some("a/b/c"));
        assert_eq!(
            split_path("a/blobs/uploads/").map(|p| p.endpoint),
            Some(RawEndpoint::Upload)
        );
        assert_eq!(split_path("a/blobs/x/y"), None);
        assert_eq!(split_path("a/blobs/"), None);
    }

    #[test]
    fn four_routing_shapes_in_order() {
        // 1. ?ns= (containerd); docker.io gets library/
        assert_eq!(
            target_of(route("/v2/alpine/manifests/latest?ns=docker.io")),
            ("docker.io".into(), "library/alpine".into(), Some("docker.io".into()))
        );
        // 2. alias
        assert_eq!(
            target_of(route("/v2/ghcr/org/app/manifests/v1")),
            ("ghcr.io".into(), "org/app".into(), None)
        );
        // 3. host in path, any depth
        assert_eq!(
            target_of(route(
                "/v2/quay.io/a/b/c/d/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )),
            ("quay.io".into(), "a/b/c/d".into(), None)
        );
        assert_eq!(
            target_of(route("/v2/127.0.0.1:5999/test/app/manifests/v1")),
            ("127.0.0.1:5999".into(), "test/app".into(), None)
        );
        // 4. default upstream
        assert_eq!(
            target_of(route("/v2/test/app/manifests/v1")),
            ("127.0.0.1:5999".into(), "test/app".into(), None)
        );
        // docker.io library/ via host-in-path
        assert_eq!(
            target_of(route("/v2/docker.io/nginx/manifests/v1")),
            ("docker.io".into(), "library/nginx".into(), None)
        );
    }

    #[test]
    fn refusals() {
        let code = |r: Result<Route, ApiError>| r.err().map(|e| e.code());
        assert_eq!(code(route("/v2/evil.example/x/manifests/v1")), Some("DENIED"));
        assert_eq!(code(route("/v2/x/manifests/v1?ns=evil.example")), Some("DENIED"));
        assert_eq!(code(route("/v2/UPPER/manifests/v1")), Some("NAME_INVALID"));
        assert_eq!(
            code(route("/v2/a/manifests/sha256:baddigeststring")),
            Some("DIGEST_INVALID")
        );
        assert_eq!(code(route("/v2/a/blobs/sha256:abc")), Some("DIGEST_INVALID"));
        assert_eq!(code(route("/v2/a/manifests/-bad")), Some("NAME_INVALID"));
        assert_eq!(code(route("/nope")), Some("UNSUPPORTED"));
        assert_eq!(route("/nope").err().map(|e| e.status().as_u16()), Some(404));
        assert_eq!(code(route("/v2/_catalog")), Some("UNSUPPORTED"));
        assert_eq!(code(route_m(&Method::PUT, "/v2/a/manifests/v1")), Some("UNSUPPORTED"));
        assert_eq!(
            code(route_m(&Method::POST, "/v2/a/blobs/uploads/")),
            Some("UNSUPPORTED")
        );
        assert_eq!(
            code(route_m(&Method::PATCH, "/v2/a/blobs/uploads/1234")),
            Some("UNSUPPORTED")
        );
        assert_eq!(
            code(route_m(
                &Method::DELETE,
                "/v2/a/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )),
            Some("UNSUPPORTED")
        );
    }
}
