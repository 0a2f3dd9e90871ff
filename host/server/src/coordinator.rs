//! The coordinator's side of a cluster: the routes runners register and heartbeat on (behind
//! the cluster token), and the forwarding of every request that needs a session's sandbox to
//! the runner placed for it ([`ash_runtime::Cluster`] decides where). Reads of sessions, their
//! logs and live streams are answered here, from the shared database: a coordinator holds no
//! sandbox and no state of its own, so any coordinator serves any request.
//!
//! The transport is HTTP/1.1 with keep-alive, the API's own routes forwarded as they came
//! (streams included), authenticated both ways with the cluster token as a bearer token.

use std::sync::Arc;
use std::time::Duration;

use ash_core::SessionId;
use ash_runtime::{Cluster, Placement};
use ash_store::{Beat, Load, Runner, RunnerState};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query as UrlQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::error::Json;
use crate::{ApiError, AppState, BODY_LIMIT};

/// What a coordinator keeps: the registry and the client it reaches runners with.
pub struct Coordinator {
    pub(crate) cluster: Cluster,
    pub(crate) token: String,
    client: reqwest::Client,
}

impl Coordinator {
    pub(crate) fn new(cluster: Cluster, token: String) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client builds");
        Self {
            cluster,
            token,
            client,
        }
    }
}

impl Coordinator {
    /// Tells every live runner that an agent was deployed or deleted; a runner that cannot be
    /// reached hears of it when it next starts (it fills the pools of the agents there are).
    pub(crate) async fn announce_agent(&self, name: &ash_core::AgentName) {
        let runners = match self.cluster.runners.list().await {
            Ok(runners) => runners,
            Err(e) => {
                tracing::warn!(agent = %name, "cannot tell the runners of the agent's change: {e}");
                return;
            }
        };
        let calls = runners
            .into_iter()
            .filter(|r| r.state != RunnerState::Dead && r.holds_sessions(self.cluster.ttl))
            .map(|runner| async move {
                let url = format!("{}/internal/v1/agents/{name}/changed", runner.address);
                let sent = self.client.post(url).bearer_auth(&self.token).send().await;
                match sent.map(|reply| reply.status()) {
                    Ok(status) if status.is_success() => {}
                    Ok(status) => tracing::warn!(runner = %runner.id, agent = %name, "the runner refused the agent's change ({status})"),
                    Err(e) => tracing::warn!(runner = %runner.id, agent = %name, "cannot tell the runner of the agent's change: {e}"),
                }
            });
        futures_util::future::join_all(calls).await;
    }
}

/// A runner asks to join.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Registration {
    pub id: String,
    /// The URL coordinators reach it at.
    pub address: String,
    pub capacity: u64,
}

/// A runner joined: its generation, and how often it must be heard from.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Registered {
    pub generation: u64,
    pub ttl_ms: u64,
    pub every_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Heartbeat {
    pub generation: u64,
    pub sandboxes: u64,
    pub running: u64,
    pub draining: bool,
}

#[derive(Deserialize)]
struct Generation {
    generation: u64,
}

/// The routes runners call, each behind the cluster token.
pub(crate) fn internal_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    use axum::routing::{delete, post};
    Router::new()
        .route("/internal/v1/runners", post(register))
        .route("/internal/v1/runners/{id}/heartbeat", post(heartbeat))
        .route("/internal/v1/runners/{id}", delete(leave))
        .layer(axum::middleware::from_fn_with_state(state, require_runner))
}

fn coordinator(state: &AppState) -> Result<&Coordinator, ApiError> {
    state
        .coordinator
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server is not a coordinator"))
}

/// Refuses a runner call without the cluster token.
async fn require_runner(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let c = coordinator(&state)?;
    if !crate::auth::bearer_is(request.headers(), &c.token) {
        tracing::warn!(path = request.uri().path(), "refused a runner call without the cluster token: check that the runner's ASH_CLUSTER_TOKEN is this coordinator's");
        state.runtime.metrics.auth_failures.inc();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the cluster token is missing or wrong",
        ));
    }
    Ok(next.run(request).await)
}

async fn register(
    State(state): State<Arc<AppState>>,
    Json(body): Json<Registration>,
) -> Result<Json<Registered>, ApiError> {
    let c = coordinator(&state)?;
    let valid_id = (1..=128).contains(&body.id.len())
        && body
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let valid_address = body.address.len() <= 512
        && (body.address.starts_with("http://") || body.address.starts_with("https://"));
    if !valid_id || !valid_address || body.capacity == 0 {
        return Err(ApiError::bad_request(
            "a runner needs an id of 1-128 letters, digits, '-' or '_', an http(s) address of at most 512 bytes, and a capacity of at least 1",
        ));
    }
    let (generation, before) = c
        .cluster
        .runners
        .register(&body.id, &body.address, body.capacity)
        .await?;
    match before {
        Some(old) if old.holds_sessions(c.cluster.ttl) && old.state == RunnerState::Live => {
            tracing::warn!(runner = %body.id, address = %body.address, previous = %old.address, generation, "a runner registered with the id of a live runner: the earlier process is told it was replaced at its next heartbeat and stops (two runners must not share a data dir)");
        }
        _ => {
            tracing::info!(runner = %body.id, address = %body.address, capacity = body.capacity, generation, "runner registered")
        }
    }
    let ttl = c.cluster.ttl;
    Ok(Json(Registered {
        generation,
        ttl_ms: ttl.as_millis() as u64,
        every_ms: (ttl / 5).as_millis() as u64,
    }))
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    let c = coordinator(&state)?;
    let load = Load {
        sandboxes: body.sandboxes,
        running: body.running,
        draining: body.draining,
    };
    match c.cluster.runners.heartbeat(&id, body.generation, load).await? {
        Beat::Taken => Ok(StatusCode::NO_CONTENT),
        Beat::Unknown => Err(ApiError::not_found("no runner of this id is registered; register again")),
        Beat::Superseded => Err(ApiError::new(
            StatusCode::CONFLICT,
            "another process registered with this runner's id since; this one is no longer that runner",
        )),
        Beat::Dead => {
            tracing::warn!(runner = %id, "a heartbeat came from a runner already declared dead: it must stop its sandboxes and register again");
            Err(ApiError::new(
                StatusCode::GONE,
                "this runner was declared dead (no heartbeat within its time to live) and its sessions are moving; stop their sandboxes and register again",
            ))
        }
    }
}

async fn leave(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    UrlQuery(query): UrlQuery<Generation>,
) -> Result<StatusCode, ApiError> {
    let c = coordinator(&state)?;
    if c.cluster.runners.leave(&id, query.generation).await? {
        tracing::info!(runner = %id, "runner left: its sessions were handed back");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// One runner as `GET /api/runners` shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunnerReply {
    pub id: String,
    address: String,
    pub state: RunnerStatus,
    pub capacity: u64,
    pub sandboxes: u64,
    running: u64,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: u64,
}

/// A runner's state as shown: its registry state, or `silent` for a runner not dead yet whose
/// last heartbeat is older than the time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RunnerStatus {
    Live,
    Draining,
    Dead,
    Silent,
}

impl RunnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Draining => "draining",
            Self::Dead => "dead",
            Self::Silent => "silent",
        }
    }
}

impl RunnerReply {
    /// It takes new sessions.
    pub fn taking_sessions(&self) -> bool {
        self.state == RunnerStatus::Live
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunnerList {
    runners: Vec<RunnerReply>,
}

/// The registered runners (none on a server that is not a coordinator).
pub(crate) async fn runner_list(state: &AppState) -> Result<Vec<RunnerReply>, ApiError> {
    let Some(c) = &state.coordinator else {
        return Ok(Vec::new());
    };
    let ttl = c.cluster.ttl;
    Ok(c.cluster
        .runners
        .list()
        .await?
        .into_iter()
        .map(|r| RunnerReply {
            state: match r.state {
                RunnerState::Dead => RunnerStatus::Dead,
                _ if r.heartbeat_age >= ttl => RunnerStatus::Silent,
                RunnerState::Live => RunnerStatus::Live,
                RunnerState::Draining => RunnerStatus::Draining,
            },
            heartbeat_age_ms: r.heartbeat_age.as_millis() as u64,
            id: r.id,
            address: r.address,
            capacity: r.capacity,
            sandboxes: r.sandboxes,
            running: r.running,
        })
        .collect())
}

/// `GET /api/runners`: the cluster's runners, their load and liveness.
#[utoipa::path(get, path = "/api/runners", tag = "health",
    responses((status = 200, body = RunnerList), (status = 401, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn runners(
    State(state): State<Arc<AppState>>,
) -> Result<Json<RunnerList>, ApiError> {
    Ok(Json(RunnerList {
        runners: runner_list(&state).await?,
    }))
}

/// What a request needs of the cluster.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// A runner for a new session.
    NewSession,
    /// The runner holding this session (or the one it moves to).
    Holder(String),
}

/// Requests that need a sandbox: creating a session, sending to it, its lifecycle, exec and
/// its files. Everything else (reads of records, logs, streams, its config) is answered here.
fn need(method: &Method, path: &str) -> Option<Need> {
    let rest = path.strip_prefix("/api/sessions")?;
    if rest.is_empty() || rest == "/" {
        return (method == Method::POST).then_some(Need::NewSession);
    }
    let mut parts = rest.strip_prefix('/')?.splitn(2, '/');
    let id = parts.next()?.to_owned();
    let sub = parts.next().map(|s| s.split('/').next().unwrap_or(s));
    let forwarded = match sub {
        None => method == Method::DELETE,
        Some("messages") => method == Method::POST,
        Some("events" | "stream" | "config") => false,
        // Placing one needs the workspace; listing them does not.
        Some("attachments") => method == Method::POST,
        Some(_) => true,
    };
    forwarded.then_some(Need::Holder(id))
}

/// Sends what needs a sandbox to the runner placed for it; lets the rest through.
pub(crate) async fn route(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let c = coordinator(&state)?;
    match need(request.method(), request.uri().path()) {
        None => Ok(next.run(request).await),
        Some(Need::NewSession) => create(c, request).await,
        Some(Need::Holder(raw)) => {
            let Ok(id) = SessionId::parse(&raw) else {
                return Ok(next.run(request).await);
            };
            match c.cluster.place(&state.runtime, id).await? {
                Placement::Here => Ok(next.run(request).await),
                Placement::Held(runner) => forward(c, &runner, request).await,
                Placement::Moved(runner) => {
                    adopt(c, &runner, id).await?;
                    forward(c, &runner, request).await
                }
            }
        }
    }
}

/// A new session goes to the least-loaded live runner; one that refuses it (full, stopping)
/// or cannot be reached gives its place back and the next is tried.
async fn create(c: &Coordinator, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is too large for this endpoint",
        )
    })?;
    let mut skip = Vec::new();
    // What the last runner to refuse said, told when none is left.
    let mut refusal: Option<String> = None;
    loop {
        let runner = match (c.cluster.place_new(&skip).await, &refusal) {
            (Ok(runner), _) => runner,
            (Err(ash_runtime::RuntimeError::Unavailable(why)), Some(said)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{why}; the last to refuse said: {said}"),
                ))
            }
            (Err(e), _) => return Err(e.into()),
        };
        let sent = send(
            c,
            &runner,
            &parts.method,
            &parts.uri,
            &parts.headers,
            reqwest::Body::from(body.clone()),
        )
        .await;
        match sent {
            Ok(reply) if reply.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                return Ok(relay(reply));
            }
            Ok(reply) => {
                let said = reply.json::<serde_json::Value>().await.ok();
                let said = said
                    .as_ref()
                    .and_then(|v| v["error"].as_str())
                    .unwrap_or("503");
                tracing::info!(runner = %runner.id, "runner refused a new session ({said}); trying the next");
                refusal = Some(format!("runner {}: {said}", runner.id));
            }
            Err(e) if e.is_connect() => {
                tracing::warn!(runner = %runner.id, "cannot reach runner at {}: {e}; trying the next", runner.address)
            }
            Err(e) => return Err(unreachable_runner(&runner, e)),
        }
        c.cluster.runners.unclaim(&runner.id).await?;
        skip.push(runner.id);
    }
}

/// Tells a runner that a session was moved onto it.
async fn adopt(c: &Coordinator, runner: &Runner, id: SessionId) -> Result<(), ApiError> {
    let url = format!("{}/internal/v1/sessions/{id}/adopt", runner.address);
    let reply = c
        .client
        .post(url)
        .bearer_auth(&c.token)
        .send()
        .await
        .map_err(|e| unreachable_runner(runner, e))?;
    match reply.status() {
        s if s.is_success() => Ok(()),
        s => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "runner {} refused to take the session ({s}); try again",
                runner.id
            ),
        )),
    }
}

async fn forward(c: &Coordinator, runner: &Runner, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let reply = send(c, runner, &parts.method, &parts.uri, &parts.headers, body)
        .await
        .map_err(|e| unreachable_runner(runner, e))?;
    Ok(relay(reply))
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn send(
    c: &Coordinator,
    runner: &Runner,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: reqwest::Body,
) -> Result<reqwest::Response, reqwest::Error> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let request = c
        .client
        .request(method.clone(), format!("{}{path}", runner.address))
        .bearer_auth(&c.token)
        .body(body);
    let mut headers: HeaderMap = headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    crate::trace::inject(&mut headers);
    request.headers(headers).send().await
}

/// The runner's reply, streamed to the client as it comes.
fn relay(reply: reqwest::Response) -> Response {
    let mut response = Response::builder().status(reply.status());
    for (name, value) in reply.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(reply.bytes_stream()))
        .expect("a reply of valid parts builds")
}

fn unreachable_runner(runner: &Runner, e: reqwest::Error) -> ApiError {
    tracing::warn!(runner = %runner.id, address = %runner.address, "cannot reach the runner: {e}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the session's runner {} cannot be reached; if it is gone, its sessions move to another runner once it is declared dead (no heartbeat within its time to live); try again then", runner.id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_needs_a_sandbox_is_forwarded() {
        let id = "5f0c6c64-8b8e-4a55-9a5e-1d3f0f7d2b9a";
        let holder = || Some(Need::Holder(id.to_owned()));
        let cases = [
            (
                Method::POST,
                "/api/sessions".to_owned(),
                Some(Need::NewSession),
            ),
            (Method::GET, "/api/sessions".to_owned(), None),
            (Method::GET, format!("/api/sessions/{id}"), None),
            (Method::DELETE, format!("/api/sessions/{id}"), holder()),
            (
                Method::POST,
                format!("/api/sessions/{id}/messages"),
                holder(),
            ),
            (Method::GET, format!("/api/sessions/{id}/messages"), None),
            (Method::GET, format!("/api/sessions/{id}/stream"), None),
            (Method::GET, format!("/api/sessions/{id}/events"), None),
            (Method::PATCH, format!("/api/sessions/{id}/config"), None),
            (Method::GET, format!("/api/sessions/{id}/attachments"), None),
            (
                Method::POST,
                format!("/api/sessions/{id}/attachments"),
                holder(),
            ),
            (Method::GET, "/api/attachments/x".to_owned(), None),
            (
                Method::GET,
                format!("/api/sessions/{id}/files/a/b.txt"),
                holder(),
            ),
            (Method::POST, format!("/api/sessions/{id}/pause"), holder()),
            (
                Method::GET,
                format!("/api/sessions/{id}/workspace"),
                holder(),
            ),
            (Method::POST, "/api/agents".to_owned(), None),
        ];
        for (method, path, want) in cases {
            assert_eq!(need(&method, &path), want, "{method} {path}");
        }
    }
}
