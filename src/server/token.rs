//! `/token`: the Docker registry token endpoint, so `docker login`,
//! `podman login`, skopeo and containerd authenticate unchanged.
//!
//! `GET /token?service=…&scope=repository:<name>:pull[&scope=…]` with Basic
//! credentials (or none: a client certificate's identity, or `anonymous`
//! where allowed), and the OAuth2 form containerd may `POST`
//! (`grant_type=password&username=…&password=…&scope=…`). The token covers
//! only the requested repositories that the rules allow the identity to
//! pull; others are left out, as the token spec says. Response:
//! `{"token","access_token","expires_in","issued_at"}`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::body::{BoxError, ResponseBody, full};
use super::error::ApiError;
use super::{Ctx, route};
use crate::auth::{self, Access, Auth, AuthFailure, Principal};
use crate::config::Secret;
use crate::telemetry::AccessRecord;

/// A form larger than this is refused.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What a token request asks for (the password is a `Secret`).
struct TokenRequest {
    /// From the POST form (`grant_type=password`); a GET uses the header.
    basic: Option<(String, Secret)>,
    scopes: Vec<String>,
    /// containerd's namespace, carried in the realm.
    namespace: Option<String>,
}

pub(super) async fn serve<B>(
    ctx: &Ctx<'_>,
    req: &Request<()>,
    body: B,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body + Send,
    B::Error: Into<BoxError>,
{
    let Some(auth) = ctx.auth else {
        return Err(ApiError::unsupported(
            "no client authentication is configured: no tokens",
        ));
    };
    let query = req.uri().query();
    let mut ask = TokenRequest {
        basic: None,
        scopes: scopes(route::query_params(query, "scope")),
        namespace: route::query_param(query, "ns"),
    };
    match *req.method() {
        Method::GET => {}
        Method::POST => read_form(body, &mut ask).await?,
        ref m => return Err(ApiError::method_not_allowed(m)),
    }
    let principal = authenticate(ctx, auth, req, &ask).await.map_err(|f| {
        auth::record(ctx.proxy.metrics(), f, &ctx.peer.addr, None);
        refusal(auth, f)
    })?;
    record.identity = principal.identity.to_string();
    let access = ask
        .scopes
        .iter()
        .filter_map(|name| grant(ctx, auth, &principal, name, ask.namespace.as_deref()))
        .collect();
    let issued = auth
        .issue(&principal, access)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let body = serde_json::to_vec(&serde_json::json!({
        "token": issued.token.expose_secret(),
        "access_token": issued.token.expose_secret(),
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    }))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let len = body.len();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The form's credentials, else the `Authorization` header, else a client
/// certificate or `anonymous`.
async fn authenticate(
    ctx: &Ctx<'_>,
    auth: &std::sync::Arc<Auth>,
    req: &Request<()>,
    ask: &TokenRequest,
) -> Result<Principal, AuthFailure> {
    if let Some((user, password)) = &ask.basic {
        return auth.check_basic(user, password.expose_secret()).await;
    }
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    auth.authenticate(header, ctx.peer.cert.as_ref()).await
}

/// `401` with a Basic challenge: the token endpoint takes credentials.
fn refusal(auth: &Auth, failure: AuthFailure) -> ApiError {
    let challenge = format!("Basic realm=\"{}\"", auth.config().service);
    let challenge = HeaderValue::from_str(&challenge).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    let e = ApiError::from_auth(failure, None, challenge);
    debug_assert!(e.challenge_header().is_some_and(|(n, _)| n == WWW_AUTHENTICATE));
    e
}

/// The repository names of `repository:<name>:<actions>` scopes that ask
/// to pull (space-separated in one parameter, or several parameters).
fn scopes(values: Vec<String>) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split_whitespace())
        .filter_map(|s| {
            let (name, actions) = s.strip_prefix("repository:")?.rsplit_once(':')?;
            let pull = actions.split(',').any(|a| a == "pull" || a == "*");
            (pull && !name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// `pull` of `name` if it routes to an upstream and a rule allows it.
fn grant(ctx: &Ctx<'_>, auth: &Auth, principal: &Principal, name: &str, ns: Option<&str>) -> Option<Access> {
    let config = ctx.proxy.config();
    let (target, _) = route::resolve_target(name, ns, config, ctx.proxy.registries()).ok()?;
    auth.authorize(principal, target.registry.host().as_str(), target.repo.as_str(), name)
        .ok()
        .map(|_| Access::pull(name))
}

/// The OAuth2 password grant (RFC 6749 §4.3) as containerd posts it.
async fn read_form<B>(body: B, ask: &mut TokenRequest) -> Result<(), ApiError>
where
    B: http_body::Body + Send,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::bad_token_request("the token request form is unreadable or too large"))?
        .to_bytes();
    let mut grant_type = None;
    let (mut user, mut password) = (None, None);
    for (k, v) in form_urlencoded::parse(&bytes) {
        match &*k {
            "grant_type" => grant_type = Some(v.into_owned()),
            "username" => user = Some(v.into_owned()),
            "password" => password = Some(Secret::new(v.into_owned())),
            "scope" => ask.scopes.extend(scopes(vec![v.into_owned()])),
            _ => {}
        }
    }
    match (grant_type.as_deref(), user, password) {
        (Some("password"), Some(u), Some(p)) => {
            ask.basic = Some((u, p));
            Ok(())
        }
        (Some("password"), _, _) => Err(ApiError::bad_token_request(
            "grant_type=password needs username and password",
        )),
        _ => Err(ApiError::bad_token_request(
            "only grant_type=password is supported (no refresh tokens are issued)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_pull_requests_only() {
        let got = scopes(vec![
            "repository:apps/web:pull".into(),
            "repository:127.0.0.1:5000/test/app:pull,push repository:x:push".into(),
            "repository:y:*".into(),
            "registry:catalog:*".into(),
            "repository::pull".into(),
        ]);
        assert_eq!(got, ["apps/web", "127.0.0.1:5000/test/app", "y"]);
    }
}
