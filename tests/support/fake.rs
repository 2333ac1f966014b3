//! An in-process upstream registry that misbehaves on purpose (in the style
//! of rust-oci-client's `BadServer`).
//!
//! It serves the pull API like a real registry (manifests with
//! `Docker-Content-Digest`, exact `Content-Type` and `Content-Length`; blobs
//! streamed in 64 KiB frames; tag lists; optionally the referrers API) and
//! can be told at runtime to break in specific ways ([`Fault`]), keyed by a
//! request path, a reference (tag or digest) or [`EVERYWHERE`]. Every request
//! is recorded (method, path, query, `Authorization`) so tests can count
//! upstream traffic exactly. The server stops when the handle is dropped.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::oci::{Algorithm, Digest};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::images::{Blob, OCI_INDEX};

/// Frame size of streamed bodies.
pub const CHUNK: usize = 64 * 1024;
/// The fault key that matches every request.
pub const EVERYWHERE: &str = "*";
/// Pause before a cut body ends, so the bytes before the cut reach the wire.
const FLUSH_PAUSE: Duration = Duration::from_millis(50);
/// The `service` named in the bearer challenge.
pub const SERVICE: &str = "fake";

/// One way to misbehave. Body faults apply to GET bodies (blobs and
/// manifests); header faults to every request the key matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Manifest GET: serve other (valid JSON) bytes under the true
    /// `Docker-Content-Digest`.
    WrongManifestBytes,
    /// Manifest HEAD/GET: the right bytes, a `Docker-Content-Digest` that lies.
    LyingDigestHeader,
    /// Manifest HEAD: no `Docker-Content-Digest` (forces a GET by tag).
    HeadWithoutDigest,
    /// The body with the byte at `at` flipped.
    FlipByte { at: usize },
    /// Send `at` bytes of the body, then end it (short of `Content-Length`).
    Truncate { at: usize },
    /// Send `after` bytes, then abort the connection.
    DropMidBlob { after: usize },
    /// HEAD of the tag answers its seeded manifest; every GET by tag after a
    /// HEAD answers `to` (a race with a tag push).
    TagMovesAfterHead { to: Blob },
    /// Answer `code` to the first `times` matching requests (`usize::MAX`:
    /// always), with an optional `Retry-After` in seconds.
    Status {
        code: u16,
        times: usize,
        retry_after: Option<u32>,
    },
    /// Sleep `delay` between body frames.
    SlowBody { delay: Duration },
    /// Sleep `delay` before answering at all.
    SlowHeaders { delay: Duration },
    /// 307 to the same path and query on another server (`http://host:port`),
    /// plus `sig=` query (a signed CDN URL).
    RedirectTo(String),
}

impl Fault {
    /// A status fault that never clears by itself.
    pub fn always(code: u16) -> Fault {
        Fault::Status {
            code,
            times: usize::MAX,
            retry_after: None,
        }
    }
}

/// One request as it reached the fake.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
}

type FakeBody = BoxBody<Bytes, std::io::Error>;

/// The fake registry's handle. Dropping it stops the server and closes every
/// open connection.
pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Listen on `ip` (another loopback address such as 127.0.0.2 is
    /// "another host" to the proxy: a foreign token realm or CDN).
    pub async fn start_on(ip: IpAddr) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0)).await.expect("fake registry binds");
        let addr = listener.local_addr().expect("fake registry addr");
        let state = Arc::new(State::new(addr));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        FakeRegistry {
            addr,
            state,
            task: Some(task),
        }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ip:port`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stop listening and close every connection (an upstream outage).
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    // --- seeding ---------------------------------------------------------

    pub fn put_blob(&self, repo: &str, blob: &Blob) {
        self.state.content().blobs.insert(key(repo, &blob.digest), blob.clone());
    }

    pub fn put_manifest(&self, repo: &str, manifest: &Blob) {
        self.state
            .content()
            .manifests
            .insert(key(repo, &manifest.digest), manifest.clone());
    }

    /// Point `tag` at `manifest` (which is also stored by digest).
    pub fn tag(&self, repo: &str, tag: &str, manifest: &Blob) {
        self.put_manifest(repo, manifest);
        self.state
            .content()
            .tags
            .insert((repo.to_owned(), tag.to_owned()), manifest.digest.to_string());
    }

    /// Seed an image: its blobs, its manifest and `tag`.
    pub fn put_image(&self, repo: &str, tag: &str, image: &super::images::Image) {
        for blob in image.blobs() {
            self.put_blob(repo, blob);
        }
        self.tag(repo, tag, &image.manifest);
    }

    // --- behaviour -------------------------------------------------------

    /// Add a fault for requests whose path, reference (tag or digest) or
    /// [`EVERYWHERE`] equals `key`.
    pub fn set_fault(&self, key: impl std::fmt::Display, fault: Fault) {
        self.state
            .faults()
            .entry(key.to_string())
            .or_default()
            .push(Slot { fault, fired: 0 });
    }

    pub fn clear_faults(&self) {
        self.state.faults().clear();
    }

    /// Require the bearer-token flow on every `/v2/` request.
    pub fn require_token(&self) {
        self.state.token_auth.store(true, Ordering::SeqCst);
    }

    /// Name `realm` (a full URL) in the bearer challenge instead of this
    /// fake's own `/token`: a hostile upstream sending the proxy elsewhere.
    pub fn set_token_realm(&self, realm: &str) {
        *lock(&self.state.realm) = Some(realm.to_owned());
    }

    /// Serve `GET /v2/<name>/referrers/<digest>` (off: 404, as on Docker Hub).
    pub fn enable_referrers_api(&self, on: bool) {
        self.state.referrers_api.store(on, Ordering::SeqCst);
    }

    // --- observations ----------------------------------------------------

    /// Requests with this method and path (query ignored).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .log()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    pub fn blob_gets(&self, repo: &str, digest: &Digest) -> usize {
        self.count("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }

    pub fn manifest_requests(&self, method: &str, repo: &str, reference: impl std::fmt::Display) -> usize {
        self.count(method, &format!("/v2/{repo}/manifests/{reference}"))
    }

    /// Requests to the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.count("GET", "/token")
    }

    /// 401 challenges answered so far.
    pub fn challenges(&self) -> usize {
        self.state.challenges.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log().clone()
    }

    pub fn total_requests(&self) -> usize {
        self.state.log().len()
    }

    /// The `Authorization` every request carried, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.log().iter().map(|r| r.authorization.clone()).collect()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn key(repo: &str, digest: &Digest) -> (String, String) {
    (repo.to_owned(), digest.to_string())
}

// --- shared state ------------------------------------------------------------

#[derive(Default)]
struct Content {
    blobs: HashMap<(String, String), Blob>,
    manifests: HashMap<(String, String), Blob>,
    /// (repo, tag) → digest; ordered so tag lists come out sorted.
    tags: BTreeMap<(String, String), String>,
}

struct Slot {
    fault: Fault,
    /// How often a counted fault (`Status`) fired, or whether a HEAD was seen
    /// (`TagMovesAfterHead`).
    fired: usize,
}

struct State {
    addr: SocketAddr,
    content: Mutex<Content>,
    faults: Mutex<HashMap<String, Vec<Slot>>>,
    log: Mutex<Vec<Recorded>>,
    token_auth: AtomicBool,
    referrers_api: AtomicBool,
    challenges: AtomicUsize,
    /// The realm named in challenges, when not this fake's own `/token`.
    realm: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn new(addr: SocketAddr) -> State {
        State {
            addr,
            content: Mutex::default(),
            faults: Mutex::default(),
            log: Mutex::default(),
            token_auth: AtomicBool::new(false),
            referrers_api: AtomicBool::new(false),
            challenges: AtomicUsize::new(0),
            realm: Mutex::default(),
        }
    }

    fn content(&self) -> MutexGuard<'_, Content> {
        lock(&self.content)
    }

    fn faults(&self) -> MutexGuard<'_, HashMap<String, Vec<Slot>>> {
        lock(&self.faults)
    }

    fn log(&self) -> MutexGuard<'_, Vec<Recorded>> {
        lock(&self.log)
    }

    fn record<B>(&self, req: &Request<B>) {
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.log().push(Recorded {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            authorization,
        });
    }

    /// The first fault among `keys` for which `pick` says something; `pick`
    /// may update the slot (counters).
    fn find<T>(&self, keys: &[String], mut pick: impl FnMut(&mut Slot) -> Option<T>) -> Option<T> {
        let mut faults = self.faults();
        for k in keys {
            if let Some(slots) = faults.get_mut(k) {
                for slot in slots.iter_mut() {
                    if let Some(found) = pick(slot) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    fn has(&self, keys: &[String], is: impl Fn(&Fault) -> bool) -> bool {
        self.find(keys, |s| is(&s.fault).then_some(())).is_some()
    }
}

// --- routing -----------------------------------------------------------------

/// What a request addresses.
#[derive(Debug)]
enum Route {
    Base,
    Token,
    Manifest { repo: String, reference: String },
    Blob { repo: String, digest: String },
    Tags { repo: String },
    Referrers { repo: String, digest: String },
    Unknown,
}

impl Route {
    fn parse(path: &str) -> Route {
        if path == "/token" {
            return Route::Token;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" { Route::Base } else { Route::Unknown };
        };
        if rest.is_empty() {
            return Route::Base;
        }
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            return Route::Tags { repo: repo.to_owned() };
        }
        for sep in ["/manifests/", "/blobs/", "/referrers/"] {
            if let Some(i) = rest.rfind(sep) {
                let (repo, reference) = (rest[..i].to_owned(), rest[i + sep.len()..].to_owned());
                return match sep {
                    "/manifests/" => Route::Manifest { repo, reference },
                    "/blobs/" => Route::Blob {
                        repo,
                        digest: reference,
                    },
                    _ => Route::Referrers {
                        repo,
                        digest: reference,
                    },
                };
            }
        }
        Route::Unknown
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::Tags { repo }
            | Route::Referrers { repo, .. } => Some(repo),
            _ => None,
        }
    }

    fn reference(&self) -> Option<&str> {
        match self {
            Route::Manifest { reference, .. } => Some(reference),
            Route::Blob { digest, .. } | Route::Referrers { digest, .. } => Some(digest),
            _ => None,
        }
    }

    /// The fault keys this request matches, most specific first.
    fn fault_keys(&self, path: &str) -> Vec<String> {
        let mut keys = vec![path.to_owned()];
        keys.extend(self.reference().map(str::to_owned));
        keys.push(EVERYWHERE.to_owned());
        keys
    }
}

// --- the server --------------------------------------------------------------

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Connections live in the set: aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<FakeBody>, Infallible> {
    state.record(&req);
    let path = req.uri().path().to_owned();
    let route = Route::parse(&path);
    let keys = route.fault_keys(&path);
    if let Some(delay) = state.find(&keys, |s| match s.fault {
        Fault::SlowHeaders { delay } => Some(delay),
        _ => None,
    }) {
        tokio::time::sleep(delay).await;
    }
    if let Route::Token = route {
        return Ok(token_response(req.uri().query()));
    }
    if let Some(challenge) = auth_challenge(&state, &req, &route) {
        return Ok(challenge);
    }
    if let Some(resp) = status_fault(&state, &keys) {
        return Ok(resp);
    }
    if let Some(base) = state.find(&keys, |s| match &s.fault {
        Fault::RedirectTo(base) => Some(base.clone()),
        _ => None,
    }) {
        return Ok(redirect(&base, req.uri()));
    }
    let head = req.method() == Method::HEAD;
    Ok(match route {
        Route::Base => json_response(StatusCode::OK, json!({})),
        Route::Manifest { repo, reference } => manifest(&state, &keys, &repo, &reference, head),
        Route::Blob { repo, digest } => blob(&state, &keys, &repo, &digest, head),
        Route::Tags { repo } => tags(&state, &repo),
        Route::Referrers { repo, digest } => referrers(&state, &repo, &digest),
        Route::Token | Route::Unknown => oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint"),
    })
}

// --- authentication ----------------------------------------------------------

fn scope_of(route: &Route) -> Option<String> {
    route.repo().map(|r| format!("repository:{r}:pull"))
}

/// The token the fake issues for `scope`.
fn token_for(scope: &str) -> String {
    format!("tok-{scope}")
}

/// `None` when the request may proceed; otherwise the 401 to send.
fn auth_challenge<B>(state: &State, req: &Request<B>, route: &Route) -> Option<Response<FakeBody>> {
    if !state.token_auth.load(Ordering::SeqCst) {
        return None;
    }
    let scope = scope_of(route);
    let expected = scope.as_deref().map(|s| format!("Bearer {}", token_for(s)));
    let sent = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if expected.is_some() && sent == expected.as_deref() {
        return None;
    }
    state.challenges.fetch_add(1, Ordering::SeqCst);
    let realm = lock(&state.realm)
        .clone()
        .unwrap_or_else(|| format!("http://{}/token", state.addr));
    let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, challenge.parse().expect("header"));
    Some(resp)
}

/// `GET /token?service=fake&scope=…` → `{"token":…,"expires_in":300}`.
fn token_response(query: Option<&str>) -> Response<FakeBody> {
    let params: HashMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    if params.get("service").map(String::as_str) != Some(SERVICE) {
        return oci_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "unknown service");
    }
    let scope = params.get("scope").cloned().unwrap_or_default();
    json_response(StatusCode::OK, json!({ "token": token_for(&scope), "expires_in": 300 }))
}

// --- header faults -------------------------------------------------------------

fn status_fault(state: &State, keys: &[String]) -> Option<Response<FakeBody>> {
    let (code, retry_after) = state.find(keys, |slot| match slot.fault {
        Fault::Status {
            code,
            times,
            retry_after,
        } if slot.fired < times => {
            slot.fired += 1;
            Some((code, retry_after))
        }
        _ => None,
    })?;
    let status = StatusCode::from_u16(code).expect("status code");
    let code = match code {
        429 => "TOOMANYREQUESTS",
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        _ => "UNAVAILABLE",
    };
    let mut resp = oci_error(status, code, "fault injected");
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(RETRY_AFTER, secs.into());
    }
    Some(resp)
}

fn redirect(base: &str, uri: &http::Uri) -> Response<FakeBody> {
    let query = uri.query().map(|q| format!("{q}&")).unwrap_or_default();
    let location = format!("{base}{}?{query}sig=signed-url-secret", uri.path());
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    resp.headers_mut().insert(LOCATION, location.parse().expect("location"));
    resp
}

// --- endpoints -----------------------------------------------------------------

fn manifest(state: &State, keys: &[String], repo: &str, reference: &str, head: bool) -> Response<FakeBody> {
    let Some(m) = lookup_manifest(state, keys, repo, reference, head) else {
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    let bytes = if state.has(keys, |f| matches!(f, Fault::WrongManifestBytes)) {
        tampered(&m.bytes)
    } else {
        m.bytes.clone()
    };
    let digest = if head && state.has(keys, |f| matches!(f, Fault::HeadWithoutDigest)) {
        None
    } else if state.has(keys, |f| matches!(f, Fault::LyingDigestHeader)) {
        Some(lie_about(&m.digest))
    } else {
        Some(m.digest.clone())
    };
    let body = if head {
        empty()
    } else {
        streamed(bytes.clone(), body_plan(state, keys))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, m.media_type.parse().expect("media type"));
    h.insert(CONTENT_LENGTH, bytes.len().into());
    if let Some(d) = digest {
        h.insert("docker-content-digest", d.to_string().parse().expect("digest"));
    }
    resp
}

/// The manifest a reference names, honouring `TagMovesAfterHead`.
fn lookup_manifest(state: &State, keys: &[String], repo: &str, reference: &str, head: bool) -> Option<Blob> {
    let is_digest = reference.parse::<Digest>().is_ok();
    if !is_digest {
        let moved = state.find(keys, |slot| match &slot.fault {
            Fault::TagMovesAfterHead { to } => {
                if head {
                    slot.fired += 1;
                    None
                } else {
                    (slot.fired > 0).then(|| to.clone())
                }
            }
            _ => None,
        });
        if moved.is_some() {
            return moved;
        }
    }
    let content = state.content();
    let digest = if is_digest {
        reference.to_owned()
    } else {
        content.tags.get(&(repo.to_owned(), reference.to_owned()))?.clone()
    };
    content.manifests.get(&(repo.to_owned(), digest)).cloned()
}

fn blob(state: &State, keys: &[String], repo: &str, digest: &str, head: bool) -> Response<FakeBody> {
    let Some(b) = state
        .content()
        .blobs
        .get(&(repo.to_owned(), digest.to_owned()))
        .cloned()
    else {
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
    };
    let body = if head {
        empty()
    } else {
        streamed(b.bytes.clone(), body_plan(state, keys))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, "application/octet-stream".parse().expect("type"));
    h.insert(CONTENT_LENGTH, b.bytes.len().into());
    h.insert("docker-content-digest", b.digest.to_string().parse().expect("digest"));
    resp
}

fn tags(state: &State, repo: &str) -> Response<FakeBody> {
    let content = state.content();
    let tags: Vec<&str> = content
        .tags
        .keys()
        .filter(|(r, _)| r == repo)
        .map(|(_, t)| t.as_str())
        .collect();
    if tags.is_empty() {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository unknown");
    }
    json_response(StatusCode::OK, json!({ "name": repo, "tags": tags }))
}

/// An index of the repository's manifests whose `subject` is `digest`.
fn referrers(state: &State, repo: &str, digest: &str) -> Response<FakeBody> {
    if !state.referrers_api.load(Ordering::SeqCst) {
        return oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "referrers API not implemented");
    }
    let content = state.content();
    let descriptors: Vec<serde_json::Value> = content
        .manifests
        .iter()
        .filter(|((r, _), _)| r == repo)
        .filter_map(|(_, m)| {
            let v: serde_json::Value = serde_json::from_slice(&m.bytes).ok()?;
            (v["subject"]["digest"].as_str() == Some(digest)).then(|| {
                let mut d = m.descriptor();
                if let Some(t) = v.get("artifactType") {
                    d["artifactType"] = t.clone();
                }
                d
            })
        })
        .collect();
    let mut resp = json_response(
        StatusCode::OK,
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors }),
    );
    resp.headers_mut()
        .insert(CONTENT_TYPE, OCI_INDEX.parse().expect("type"));
    resp
}

// --- content faults ------------------------------------------------------------

/// Different bytes that are still a valid manifest: an extra annotation.
fn tampered(bytes: &Bytes) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(mut v) => {
            v["annotations"] = json!({ "fake.tampered": "true" });
            serde_json::to_vec(&v).expect("json").into()
        }
        Err(_) => [&bytes[..], b"\n"].concat().into(),
    }
}

/// A well-formed digest of other content.
fn lie_about(digest: &Digest) -> Digest {
    Digest::of(Algorithm::Sha256, format!("not {digest}").as_bytes())
}

/// How a body is sent.
#[derive(Debug, Default)]
struct BodyPlan {
    flip: Option<usize>,
    delay: Option<Duration>,
    /// Stop after this many bytes: cleanly (`false`) or by aborting the
    /// connection (`true`).
    cut: Option<(usize, bool)>,
}

fn body_plan(state: &State, keys: &[String]) -> BodyPlan {
    let mut plan = BodyPlan::default();
    state.find::<()>(keys, |slot| {
        match slot.fault {
            Fault::FlipByte { at } => plan.flip = Some(at),
            Fault::SlowBody { delay } => plan.delay = Some(delay),
            Fault::Truncate { at } => plan.cut = Some((at, false)),
            Fault::DropMidBlob { after } => plan.cut = Some((after, true)),
            _ => {}
        }
        None
    });
    plan
}

/// A body sent in [`CHUNK`] frames by a producer task, following `plan`.
/// Its size hint is unknown, so the `Content-Length` header set by the
/// handler is what hyper announces, even when fewer bytes follow.
fn streamed(bytes: Bytes, plan: BodyPlan) -> FakeBody {
    let bytes = match plan.flip {
        Some(at) if at < bytes.len() => {
            let mut v = bytes.to_vec();
            v[at] ^= 0x01;
            Bytes::from(v)
        }
        _ => bytes,
    };
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(produce(bytes, plan, tx));
    ChannelBody { rx }.boxed()
}

async fn produce(bytes: Bytes, plan: BodyPlan, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    let limit = plan.cut.map_or(bytes.len(), |(at, _)| at.min(bytes.len()));
    let mut pos = 0;
    while pos < limit {
        if let (Some(delay), true) = (plan.delay, pos > 0) {
            tokio::time::sleep(delay).await;
        }
        let end = (pos + CHUNK).min(limit);
        if tx.send(Ok(bytes.slice(pos..end))).await.is_err() {
            return;
        }
        pos = end;
    }
    if let Some((_, abort)) = plan.cut {
        // Let hyper flush what was sent (it flushes while the body is
        // pending); otherwise the cut would discard the buffered bytes too.
        tokio::time::sleep(FLUSH_PAUSE).await;
        if abort {
            let _ = tx
                .send(Err(std::io::Error::other("fault: connection dropped mid-body")))
                .await;
        }
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data)))
    }
}

// --- small responses -------------------------------------------------------------

fn empty() -> FakeBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<FakeBody> {
    let body = Full::new(Bytes::from(serde_json::to_vec(&value).expect("json")));
    let mut resp = Response::new(body.map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("type"));
    resp
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<FakeBody> {
    json_response(
        status,
        json!({ "errors": [{ "code": code, "message": message, "detail": null }] }),
    )
}
