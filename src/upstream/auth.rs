//! Upstream authentication: the `WWW-Authenticate` challenge, the anonymous
//! or credentialed bearer-token flow (distribution `token.md`), Basic, and a
//! token cache keyed by scope that expires tokens before the registry does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method, Uri};

use super::{Error, Registry, client};
use crate::config::{Credentials, Secret};

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

struct TokenExpiry;

impl moka::Expiry<String, CachedToken> for TokenExpiry {
    fn expire_after_create(&self, _key: &String, value: &CachedToken, _now: Instant) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Per-upstream authentication state.
pub(super) struct Auth {
    credentials: Option<Credentials>,
    /// The scheme the upstream asked for last, so later requests can
    /// authenticate up front instead of collecting a 401 first.
    challenge: Mutex<Option<Challenge>>,
    tokens: moka::future::Cache<String, CachedToken>,
}

impl Auth {
    pub(super) fn new(credentials: Option<Credentials>) -> Auth {
        Auth {
            credentials,
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
            Some(c @ Challenge::Bearer { .. }) => {
                if let Some(t) = self.tokens.get(scope).await {
                    return Ok(Some(t.header));
                }
                self.token(reg, &c, scope, None).await.map(Some)
            }
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
        if let Ok(mut c) = self.challenge.lock() {
            *c = Some(challenge.clone());
        }
        match challenge {
            Challenge::Basic => self.basic_header(reg),
            bearer @ Challenge::Bearer { .. } => {
                // A rejected cached token must not be reused.
                self.tokens.invalidate(scope).await;
                self.token(reg, &bearer, scope, challenge_scope.as_deref()).await
            }
        }
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

    /// A bearer token for `scope`, from the cache or the token endpoint;
    /// concurrent requests for one scope share one token fetch.
    async fn token(
        &self,
        reg: &Registry,
        challenge: &Challenge,
        scope: &str,
        challenge_scope: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let fetched = self
            .tokens
            .try_get_with(
                scope.to_owned(),
                fetch_token(
                    reg,
                    challenge,
                    challenge_scope.unwrap_or(scope),
                    self.credentials.as_ref(),
                ),
            )
            .await;
        fetched.map(|t| t.header).map_err(|e| (*e).clone())
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

async fn fetch_token(
    reg: &Registry,
    challenge: &Challenge,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<CachedToken, Error> {
    let host = reg.host().to_string();
    let unauthorized = |message: String| Error::Unauthorized {
        host: host.clone(),
        message,
    };
    let Challenge::Bearer { realm, service } = challenge else {
        return Err(unauthorized("not a bearer challenge".into()));
    };
    let realm_uri: Uri = realm
        .parse()
        .map_err(|_| unauthorized(format!("token realm `{realm}` is not a URL")))?;
    let realm_https = realm_uri.scheme_str() == Some("https");
    if !realm_https && (realm_uri.scheme_str() != Some("http") || reg.upstream().url.https) {
        return Err(unauthorized(format!(
            "token realm `{realm}` must be HTTPS for an HTTPS upstream"
        )));
    }
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        if !scope.is_empty() {
            q.append_pair("scope", scope);
        }
        q.finish()
    };
    let sep = if realm.contains('?') { '&' } else { '?' };
    let url: Uri = format!("{realm}{sep}{query}")
        .parse()
        .map_err(|_| unauthorized(format!("cannot build a token URL from realm `{realm}`")))?;
    let authorization = match credentials {
        Some(Credentials::Basic { username, password }) => Some(basic(username, password)?),
        _ => None,
    };
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let mut policy = reg.policy;
    policy.response_header_timeout = policy.token_timeout;
    // The token endpoint is often another host (auth.docker.io); the
    // credentials go to the realm's authority only, never across a redirect.
    let resp = client::send(
        &reg.http,
        &host,
        &policy,
        &Method::GET,
        url,
        &headers,
        authorization.as_ref(),
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
}
