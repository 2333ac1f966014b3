//! Upstream authentication: the `WWW-Authenticate` challenge, the anonymous
//! or credentialed bearer-token flow (distribution `token.md`), Basic, and a
//! token cache keyed by (realm, service, scope) that expires tokens before
//! the registry does.
//!
//! Credentials go only to realms on the upstream's [`RealmAllowList`]. A
//! challenge naming another realm is refused when the upstream has
//! credentials (the operator expects them to be used, and a silent anonymous
//! fallback would hide a misconfiguration or an attack behind confusing
//! 401s; the log names `tokenRealms`), and answered anonymously when it has
//! none (there is nothing to leak, as with a redirect to a CDN). Either way
//! the connector refuses realms at private or metadata addresses.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method, Uri};

use super::realms::RealmAllowList;
use super::{Error, Registry, client};
use crate::config::{Credentials, Secret, Upstream};

/// Registries default to 60 s when `expires_in` is absent, and never less.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Bearer { realm: String, service: Option<String> },
    Basic,
}

#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    lifetime: Duration,
}

/// What a token was issued for. A token is only ever reused for the same
/// realm, service and scope: a challenge naming another realm or service
/// never receives a token another one issued.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: Option<String>,
    scope: String,
}

impl TokenKey {
    fn new(realm: &str, service: Option<&str>, scope: &str) -> TokenKey {
        TokenKey {
            realm: realm.to_owned(),
            service: service.map(str::to_owned),
            scope: scope.to_owned(),
        }
    }
}

struct TokenExpiry;

impl moka::Expiry<TokenKey, CachedToken> for TokenExpiry {
    fn expire_after_create(&self, _key: &TokenKey, value: &CachedToken, _now: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Per-upstream authentication state.
pub(super) struct Auth {
    credentials: Option<Credentials>,
    realms: RealmAllowList,
    /// The scheme the upstream asked for last, so later requests can
    /// authenticate up front instead of collecting a 401 first.
    challenge: Mutex<Option<Challenge>>,
    tokens: moka::future::Cache<TokenKey, CachedToken>,
}

impl Auth {
    pub(super) fn new(upstream: &Upstream) -> Auth {
        Auth {
            credentials: upstream.credentials.clone(),
            realms: RealmAllowList::for_upstream(upstream),
            challenge: Mutex::new(None),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    fn known_challenge(&self) -> Option<Challenge> {
        self.challenge.lock().ok().and_then(|c| c.clone())
    }

    /// The `Authorization` to send before any challenge, if one is known.
    pub(super) async fn preemptive(&self, reg: &Registry, scope: &str) -> Result<Option<HeaderValue>, Error> {
        if let Some(Credentials::Bearer(token)) = &self.credentials {
            return Ok(Some(bearer(reg, token.expose_secret())?));
        }
        match self.known_challenge() {
            Some(Challenge::Basic) => self.basic_header(reg).map(Some),
            Some(c @ Challenge::Bearer { .. }) => self.token(reg, &c, scope).await.map(Some),
            None => Ok(None),
        }
    }

    /// After a 401: answer the challenge it carried.
    pub(super) async fn answer(
        &self,
        reg: &Registry,
        www_authenticate: &HeaderValue,
        scope: &str,
    ) -> Result<HeaderValue, Error> {
        let value = www_authenticate.to_str().unwrap_or("");
        let (challenge, challenge_scope) = parse_challenge(value).ok_or_else(|| Error::Unauthorized {
            host: reg.host().to_string(),
            message: format!("unsupported WWW-Authenticate challenge `{value}`"),
        })?;
        let header = match &challenge {
            Challenge::Basic => self.basic_header(reg)?,
            Challenge::Bearer { realm, service } => {
                let scope = challenge_scope.as_deref().unwrap_or(scope);
                // A rejected cached token must not be reused.
                self.tokens
                    .invalidate(&TokenKey::new(realm, service.as_deref(), scope))
                    .await;
                self.token(reg, &challenge, scope).await?
            }
        };
        // Remembered only once answered: a refused challenge must not make
        // every later request fail before it reaches the upstream.
        if let Ok(mut c) = self.challenge.lock() {
            *c = Some(challenge);
        }
        Ok(header)
    }

    fn basic_header(&self, reg: &Registry) -> Result<HeaderValue, Error> {
        match &self.credentials {
            Some(Credentials::Basic { username, password }) => basic(username, password),
            _ => Err(Error::Unauthorized {
                host: reg.host().to_string(),
                message: "the upstream asks for Basic credentials and none are configured".into(),
            }),
        }
    }

    /// A bearer token for `scope` from `challenge`'s realm, from the cache
    /// or the token endpoint; concurrent requests for one key share one
    /// token fetch.
    async fn token(&self, reg: &Registry, challenge: &Challenge, scope: &str) -> Result<HeaderValue, Error> {
        let Challenge::Bearer { realm, service } = challenge else {
            return self.basic_header(reg);
        };
        let key = TokenKey::new(realm, service.as_deref(), scope);
        let fetched = self
            .tokens
            .try_get_with(key, self.fetch_token(reg, realm, service.as_deref(), scope))
            .await;
        fetched.map(|t| t.header).map_err(|e| (*e).clone())
    }

    /// Ask `realm` for a token: checked URL, credentials only if allowed.
    async fn fetch_token(
        &self,
        reg: &Registry,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken, Error> {
        let realm_uri = checked_realm(reg, realm)?;
        let authorization = self.realm_authorization(reg, &realm_uri)?;
        request_token(reg, realm, service, scope, authorization).await
    }

    /// The `Authorization` for the token request to `realm`: Basic when the
    /// realm may receive the credentials, none for an anonymous upstream, and
    /// a refusal when the upstream has credentials the realm may not have.
    fn realm_authorization(&self, reg: &Registry, realm: &Uri) -> Result<Option<HeaderValue>, Error> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if !self.realms.permits(realm) {
            return Err(Error::RefusedDestination {
                host: reg.host().to_string(),
                message: format!(
                    "token realm `{}` may not receive this upstream's credentials (allowed: {}); \
                     add its host to `tokenRealms` if it is the registry's token service",
                    realm.authority().map_or("", |a| a.as_str()),
                    self.realms.describe()
                ),
            });
        }
        match credentials {
            Credentials::Basic { username, password } => basic(username, password).map(Some),
            // A static token is for the registry, not for a token service.
            Credentials::Bearer(_) => Ok(None),
        }
    }
}

fn bearer(reg: &Registry, token: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::Unauthorized {
        host: reg.host().to_string(),
        message: "token is not a valid header value".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn basic(username: &str, password: &Secret) -> Result<HeaderValue, Error> {
    let raw = format!("{username}:{}", password.expose_secret());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| Error::Unauthorized {
        host: String::new(),
        message: "credentials are not a valid header value".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The realm as a URL the proxy may ask: absolute, http(s), and HTTPS when
/// the upstream is HTTPS (no downgrade of the token exchange).
fn checked_realm(reg: &Registry, realm: &str) -> Result<Uri, Error> {
    let refused = |message: String| Error::RefusedDestination {
        host: reg.host().to_string(),
        message,
    };
    let realm_uri: Uri = realm
        .parse()
        .map_err(|_| refused(format!("token realm `{realm}` is not a URL")))?;
    let scheme_ok = match realm_uri.scheme_str() {
        Some("https") => true,
        Some("http") => !reg.upstream().url.https,
        _ => false,
    };
    if !scheme_ok || realm_uri.host().is_none() {
        return Err(refused(format!(
            "token realm `{realm}` must be an http(s) URL, and HTTPS for an HTTPS upstream"
        )));
    }
    Ok(realm_uri)
}

async fn request_token(
    reg: &Registry,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    authorization: Option<HeaderValue>,
) -> Result<CachedToken, Error> {
    let host = reg.host().to_string();
    let unauthorized = |message: String| Error::Unauthorized {
        host: host.clone(),
        message,
    };
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        // Several scopes (a push with a cross-repository mount source) are
        // separate `scope` parameters (distribution's token spec).
        for scope in scope.split(' ').filter(|s| !s.is_empty()) {
            q.append_pair("scope", scope);
        }
        q.finish()
    };
    let sep = if realm.contains('?') { '&' } else { '?' };
    let url: Uri = format!("{realm}{sep}{query}")
        .parse()
        .map_err(|_| unauthorized(format!("cannot build a token URL from realm `{realm}`")))?;
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let mut policy = reg.policy;
    policy.response_header_timeout = policy.token_timeout;
    // The token endpoint is often another host (auth.docker.io); the
    // credentials go to the realm's authority only, never across a redirect.
    let Some(http) = &reg.http else {
        return Err(Error::Offline {
            host,
            what: "a token request",
        });
    };
    let resp = client::send(
        http,
        &host,
        &policy,
        &Method::GET,
        url,
        &headers,
        authorization.as_ref(),
        &Bytes::new(),
    )
    .await?;
    if !resp.status().is_success() {
        return Err(unauthorized(format!("token endpoint answered {}", resp.status())));
    }
    let body = super::fetch::read_body(&host, resp.into_body(), MAX_TOKEN_RESPONSE, policy.token_timeout).await?;
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| unauthorized(format!("token response is not JSON: {e}")))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("token response has no token".into()))?;
    let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60)).max(MIN_TOKEN_LIFETIME);
    Ok(CachedToken {
        header: bearer(reg, &token)?,
        // Refresh early so a token never expires in flight.
        lifetime: lifetime.mul_f32(0.9),
    })
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
/// Returns the challenge and the scope it named, if any.
fn parse_challenge(value: &str) -> Option<(Challenge, Option<String>)> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let params = parse_params(params);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some((Challenge::Basic, None));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some((
        Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
        },
        get("scope"),
    ))
}

/// `key="value", key=value` pairs; quoted values may contain commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let (c, scope) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .expect("parses");
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(scope.as_deref(), Some("repository:library/nginx:pull"));
    }

    #[test]
    fn scopes_with_commas_and_basic() {
        let (_, scope) = parse_challenge(
            r#"Bearer realm="https://r/t", scope="repository:a:pull,push", error="insufficient_scope""#,
        )
        .expect("parses");
        assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#).map(|c| c.0),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    fn registry(entry: &str) -> Registry {
        let yaml = format!("upstreams:\n{entry}");
        let config = crate::config::Config::from_yaml(&yaml, "t.yaml", &Default::default()).expect("config");
        Registry::new(config.upstreams[0].clone(), config.upstream_policy, Default::default()).expect("registry")
    }

    fn realm_authorization(reg: &Registry, realm: &str) -> Result<Option<HeaderValue>, Error> {
        let uri = checked_realm(reg, realm)?;
        reg.auth.realm_authorization(reg, &uri)
    }

    const HUB_WITH_CREDENTIALS: &str = "  - host: docker.io\n    url: https://registry-1.docker.io\n    credentials: { username: bob, password: hunter2 }\n";

    #[test]
    fn credentials_go_only_to_allowed_realms() {
        let hub = registry(HUB_WITH_CREDENTIALS);
        let sent = realm_authorization(&hub, "https://auth.docker.io/token").expect("allowed realm");
        assert_eq!(sent, Some(basic("bob", &Secret::new("hunter2")).expect("header")));
        for foreign in [
            "https://evil.example/token",
            "https://auth.docker.io.evil.example/token",
        ] {
            let refused = realm_authorization(&hub, foreign).expect_err(foreign);
            assert!(matches!(refused, Error::RefusedDestination { .. }), "{refused:?}");
            let detail = refused.to_string();
            assert!(
                detail.contains("tokenRealms") && !detail.contains("hunter2"),
                "{detail}"
            );
        }
    }

    #[test]
    fn anonymous_upstreams_ask_any_realm_without_credentials() {
        let ghcr = registry("  - host: ghcr.io\n    url: https://ghcr.io\n");
        assert_eq!(
            realm_authorization(&ghcr, "https://elsewhere.example/token").ok(),
            Some(None)
        );
    }

    #[test]
    fn realms_must_be_http_urls_and_https_for_https_upstreams() {
        let hub = registry(HUB_WITH_CREDENTIALS);
        for bad in [
            "http://auth.docker.io/token",
            "ftp://auth.docker.io/token",
            "file:///etc/passwd",
            "/token",
            "not a url",
        ] {
            let err = realm_authorization(&hub, bad).expect_err(bad);
            assert!(matches!(err, Error::RefusedDestination { .. }), "{bad}: {err:?}");
        }
        let plain = registry("  - host: 127.0.0.1:5001\n    url: http://127.0.0.1:5001\n    insecurePlainHttp: true\n");
        assert!(realm_authorization(&plain, "http://127.0.0.1:5001/token").is_ok());
    }

    /// The cache serves a token only for the realm, service and scope it was
    /// issued for; anything else goes to its own realm (here a closed
    /// loopback port, so asking fails instead of reusing the token).
    #[tokio::test]
    async fn a_token_is_never_reused_for_another_realm_service_or_scope() {
        let reg = registry("  - host: 127.0.0.1:1\n    url: http://127.0.0.1:1\n    insecurePlainHttp: true\n");
        let (realm, service, scope) = ("http://127.0.0.1:1/a", Some("svc"), "repository:x:pull");
        let issued = HeaderValue::from_static("Bearer issued-by-a");
        let cached = CachedToken {
            header: issued.clone(),
            lifetime: Duration::from_secs(60),
        };
        reg.auth
            .tokens
            .insert(TokenKey::new(realm, service, scope), cached)
            .await;
        let challenge = |realm: &str, service: Option<&str>| Challenge::Bearer {
            realm: realm.to_owned(),
            service: service.map(str::to_owned),
        };

        let same = reg.auth.token(&reg, &challenge(realm, service), scope).await;
        assert_eq!(same.ok(), Some(issued.clone()));
        for (realm, service, scope) in [
            ("http://127.0.0.1:1/b", service, scope),
            (realm, Some("other"), scope),
            (realm, None, scope),
            (realm, service, "repository:y:pull"),
        ] {
            let other = reg.auth.token(&reg, &challenge(realm, service), scope).await;
            assert!(
                matches!(other, Err(Error::Connect { .. })),
                "{realm} {service:?} {scope}: {other:?}"
            );
        }
    }
}
