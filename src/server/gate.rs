//! Who may pass: authenticate every `/v2/` request and authorize every
//! repository request against `auth.rules`, before anything is fetched.
//! A refusal is `401 UNAUTHORIZED` with a Bearer challenge naming the
//! token realm, service and (for a repository) the scope, as the name
//! appears to the client; an authenticated identity that no rule allows is
//! `403 DENIED`. Without `auth:` every client is `anonymous` and passes.

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request};

use super::Ctx;
use super::error::ApiError;
use crate::auth::{self, Auth, AuthFailure, Principal};
use crate::oci::RegistryHost;
use crate::proxy::Target;
use crate::telemetry::{AccessRecord, Requester};

/// What a challenge asks a token for.
pub(super) struct Scope<'a> {
    /// The repository name as the client sent it.
    pub name: &'a str,
    /// containerd's `?ns=`: carried in the realm so `/token` resolves the
    /// name as the request did.
    pub namespace: Option<&'a RegistryHost>,
}

/// The principal of a request, by its `Authorization` header or its
/// connection's client certificate.
async fn authenticate(ctx: &Ctx<'_>, auth: &std::sync::Arc<Auth>, req: &Request<()>) -> Result<Principal, AuthFailure> {
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    auth.authenticate(header, ctx.peer.cert.as_ref()).await
}

/// `GET /v2/`: how clients discover the challenge. A request without
/// credentials (no `Authorization`, no client certificate) is always
/// challenged, even where anonymous pulls are allowed, as Docker Hub and
/// Harbor do: `podman login` and `docker login` take a `200` here as "no
/// password needed" and would report success without checking one.
/// Anonymous clients that ask first get a token from `/token` without
/// credentials; repository requests without credentials pass as
/// `anonymous` where a rule allows it.
pub(super) async fn base(ctx: &Ctx<'_>, req: &Request<()>, record: &mut AccessRecord) -> Result<(), ApiError> {
    let Some(auth) = ctx.auth else {
        record.identity = "anonymous".to_owned();
        return Ok(());
    };
    if req.headers().get(AUTHORIZATION).is_none() && ctx.peer.cert.is_none() {
        return Err(refuse(ctx, auth, req, AuthFailure::MissingCredentials, None, None));
    }
    let principal = authenticate(ctx, auth, req)
        .await
        .map_err(|f| refuse(ctx, auth, req, f, None, None))?;
    record.identity = principal.identity.to_string();
    Ok(())
}

/// A repository endpoint: authenticate, then the first rule allowing the
/// identity this registry and repository (upstream names).
pub(super) async fn repository(
    ctx: &Ctx<'_>,
    req: &Request<()>,
    target: &Target,
    namespace: Option<&RegistryHost>,
    record: &mut AccessRecord,
) -> Result<Requester, ApiError> {
    let Some(auth) = ctx.auth else {
        record.identity = "anonymous".to_owned();
        return Ok(requester(ctx, record));
    };
    let scope = Scope {
        name: &target.client_name,
        namespace,
    };
    let principal = authenticate(ctx, auth, req)
        .await
        .map_err(|f| refuse(ctx, auth, req, f, None, Some(&scope)))?;
    record.identity = principal.identity.to_string();
    auth.authorize(
        &principal,
        target.registry.host().as_str(),
        target.repo.as_str(),
        &target.client_name,
    )
    .map_err(|f| refuse(ctx, auth, req, f, Some(&principal), Some(&scope)))?;
    Ok(requester(ctx, record))
}

fn requester(ctx: &Ctx<'_>, record: &AccessRecord) -> Requester {
    Requester {
        client: ctx.peer.addr.clone(),
        identity: record.identity.clone(),
    }
}

/// Record the failure (the one place: `auth::record`) and render it.
pub(super) fn refuse(
    ctx: &Ctx<'_>,
    auth: &Auth,
    req: &Request<()>,
    failure: AuthFailure,
    principal: Option<&Principal>,
    scope: Option<&Scope<'_>>,
) -> ApiError {
    let identity = principal.map(|p| p.identity.to_string());
    auth::record(ctx.proxy.metrics(), failure, &ctx.peer.addr, identity.as_deref());
    ApiError::from_auth(failure, identity.as_deref(), challenge(ctx, auth, req, scope))
}

/// `Bearer realm="<base>/token",service="…"[,scope="repository:<name>:pull"]`.
fn challenge(ctx: &Ctx<'_>, auth: &Auth, req: &Request<()>, scope: Option<&Scope<'_>>) -> HeaderValue {
    let config = auth.config();
    let mut realm = match &config.realm {
        Some(r) => r.clone(),
        None => format!(
            "{}://{}/token",
            if ctx.peer.tls { "https" } else { "http" },
            host_of(req)
        ),
    };
    if let Some(ns) = scope.and_then(|s| s.namespace) {
        realm.push(if realm.contains('?') { '&' } else { '?' });
        realm.push_str("ns=");
        realm.push_str(ns.as_str());
    }
    let mut value = format!("Bearer realm=\"{realm}\",service=\"{}\"", config.service);
    if let Some(s) = scope.filter(|s| quotable(s.name)) {
        value.push_str(&format!(",scope=\"repository:{}:pull\"", s.name));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"/token\""))
}

/// The host the client addressed (`Host`, or the HTTP/2 authority), if it
/// is a plain `host[:port]`; else `localhost`.
fn host_of(req: &Request<()>) -> String {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c)))
        .unwrap_or("localhost")
        .to_owned()
}

fn quotable(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}
