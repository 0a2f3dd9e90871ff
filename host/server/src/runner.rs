//! The runner's side of a cluster (`ash runner`): it serves the session API to coordinators
//! only (every route behind the cluster token), joins the cluster through a coordinator and
//! keeps its place there with heartbeats.
//!
//! A runner that cannot get a heartbeat through for four fifths of its time to live stops
//! its sessions' sandboxes itself (it fences itself) before any coordinator would declare it
//! dead and start those sessions elsewhere, so one session never runs on two runners. Told
//! it was declared dead, or that it is unknown, it fences and registers again; told another
//! process registered with its id, it fences and stops. On SIGTERM it drains: it is shown as
//! draining (no new sessions), gives its turns the grace period, stores every session's
//! snapshot, stops its sandboxes and leaves the registry, after which its sessions start on
//! other runners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{Heartbeat, Registered, Registration};
use crate::{ApiError, AppState};

/// What a runner knows of its cluster.
pub struct Membership {
    pub(crate) id: String,
    coordinators: Vec<String>,
    address: String,
    pub(crate) token: String,
    capacity: u64,
    client: reqwest::Client,
    /// The generation of the current registration (0 before the first).
    generation: std::sync::atomic::AtomicU64,
    draining: AtomicBool,
    /// Cancelled when this process must stop: another process took its id.
    pub(crate) replaced: CancellationToken,
}

/// How a coordinator answered.
enum Answer {
    Ok(reqwest::Response),
    /// It said no with this status and message.
    Refused(reqwest::StatusCode, String),
}

impl Membership {
    pub(crate) fn new(
        id: String,
        coordinators: Vec<String>,
        address: String,
        token: String,
        capacity: u64,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client builds");
        Self {
            id,
            coordinators,
            address,
            token,
            capacity,
            client,
            generation: Default::default(),
            draining: AtomicBool::new(false),
            replaced: CancellationToken::new(),
        }
    }

    /// Sends to the first coordinator that answers.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, String> {
        let mut failures = Vec::new();
        for coordinator in &self.coordinators {
            let mut request = self
                .client
                .request(method.clone(), format!("{coordinator}{path}"))
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(reply) if reply.status().is_success() => return Ok(Answer::Ok(reply)),
                Ok(reply) => {
                    let status = reply.status();
                    let text = reply.text().await.unwrap_or_default();
                    return Ok(Answer::Refused(status, text));
                }
                Err(e) => failures.push(format!("{coordinator}: {e}")),
            }
        }
        Err(failures.join("; "))
    }

    async fn register(&self) -> Result<Registered, String> {
        let body = serde_json::to_value(Registration {
            id: self.id.clone(),
            address: self.address.clone(),
            capacity: self.capacity,
        })
        .expect("serialises");
        match self.call(reqwest::Method::POST, "/internal/v1/runners", Some(body)).await? {
            Answer::Ok(reply) => {
                let joined: Registered = reply.json().await.map_err(|e| e.to_string())?;
                self.generation.store(joined.generation, Ordering::Release);
                Ok(joined)
            }
            Answer::Refused(reqwest::StatusCode::UNAUTHORIZED, _) => Err("the coordinator refused this runner's cluster token: set ASH_CLUSTER_TOKEN to the coordinators' token".into()),
            Answer::Refused(status, text) => Err(format!("the coordinator refused the registration ({status}): {text}")),
        }
    }

    async fn beat(&self, state: &AppState) -> Result<Answer, String> {
        // A runner that cannot reach the database can log no frame: it is no runner, so it
        // says nothing, and coordinators move its sessions once its time to live passes.
        if let Err(e) = state.store.has_api_keys().await {
            return Err(format!("this runner cannot reach the database: {e}"));
        }
        let (live, running, warm, warming) = state.runtime.counts();
        let body = serde_json::to_value(Heartbeat {
            generation: self.generation.load(Ordering::Acquire),
            sandboxes: (live - warm - warming) as u64,
            running: running as u64,
            draining: self.draining.load(Ordering::Acquire),
        })
        .expect("serialises");
        let path = format!("/internal/v1/runners/{}/heartbeat", self.id);
        self.call(reqwest::Method::POST, &path, Some(body)).await
    }

    /// The runner begins to stop: coordinators send it no new sessions from now on.
    pub(crate) async fn drain(&self, state: &AppState) {
        self.draining.store(true, Ordering::Release);
        if let Err(e) = self.beat(state).await {
            tracing::warn!("cannot tell a coordinator this runner is draining: {e}");
        }
    }

    /// The runner has handed its sessions back: it leaves the registry.
    pub(crate) async fn leave(&self) {
        let path = format!(
            "/internal/v1/runners/{}?generation={}",
            self.id,
            self.generation.load(Ordering::Acquire)
        );
        match self.call(reqwest::Method::DELETE, &path, None).await {
            Ok(Answer::Ok(_)) => tracing::info!("left the cluster: this runner's sessions start on other runners from now on"),
            Ok(Answer::Refused(status, text)) => tracing::warn!("the coordinator refused this runner's leave ({status}): {text}"),
            Err(e) => tracing::warn!("cannot leave the cluster ({e}): coordinators declare this runner dead once its time to live passes"),
        }
    }
}

/// Joins the cluster and keeps this runner's place in it until it drains or is replaced.
pub(crate) async fn keep_place(state: Arc<AppState>, m: Arc<Membership>) {
    let mut wait = Duration::from_millis(200);
    while !m.draining.load(Ordering::Acquire) {
        let joined = match m.register().await {
            Ok(joined) => joined,
            Err(e) => {
                tracing::error!(runner = %m.id, "cannot join the cluster: {e}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        wait = Duration::from_millis(200);
        tracing::info!(runner = %m.id, address = %m.address, generation = joined.generation, "joined the cluster");
        let ttl = Duration::from_millis(joined.ttl_ms);
        let mut ticks = tokio::time::interval(Duration::from_millis(joined.every_ms.max(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut fenced = false;
        loop {
            ticks.tick().await;
            if m.draining.load(Ordering::Acquire) {
                return;
            }
            let sent = Instant::now();
            match m.beat(&state).await {
                Ok(Answer::Ok(_)) => {
                    heard = sent;
                    fenced = false;
                }
                Ok(Answer::Refused(reqwest::StatusCode::CONFLICT, _)) => {
                    tracing::error!(runner = %m.id, "another process registered with this runner's id (two runners share a data dir, or this one was copied): stopping this runner's sandboxes and this runner");
                    state.runtime.fence().await;
                    m.replaced.cancel();
                    return;
                }
                Ok(Answer::Refused(status, text)) => {
                    tracing::warn!(runner = %m.id, "a coordinator refused this runner's heartbeat ({status}: {text}); stopping its sessions' sandboxes (they are moving to other runners) and registering again");
                    state.runtime.fence().await;
                    break;
                }
                Err(e) if !fenced && heard.elapsed() > ttl * 4 / 5 => {
                    tracing::error!(runner = %m.id, "no heartbeat got through for {:?} ({e}); stopping this runner's session sandboxes before coordinators declare it dead, so no session runs twice", heard.elapsed());
                    state.runtime.fence().await;
                    fenced = true;
                }
                Err(e) => tracing::warn!(runner = %m.id, "heartbeat failed: {e}"),
            }
        }
    }
}

/// The routes only a runner serves, behind the cluster token with the rest.
pub(crate) fn internal_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/internal/v1/sessions/{id}/adopt",
            axum::routing::post(adopt),
        )
        .route(
            "/internal/v1/agents/{name}/changed",
            axum::routing::post(agent_changed),
        )
}

/// A coordinator deployed or deleted an agent.
async fn agent_changed(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = ash_core::AgentName::try_from(name)?;
    state.runtime.agent_changed(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A coordinator moved a session onto this runner.
async fn adopt(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    state.runtime.adopt(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses every call without the cluster token: a runner serves coordinators only.
pub(crate) async fn require_coordinator(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = state.membership.as_ref().map(|m| m.token.as_str());
    if !token.is_some_and(|t| crate::auth::bearer_is(request.headers(), t)) {
        tracing::warn!(
            path = request.uri().path(),
            "refused a call without the cluster token: a runner serves coordinators only"
        );
        state.runtime.metrics.auth_failures.inc();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this is a runner: it serves coordinators holding the cluster token only",
        ));
    }
    Ok(next.run(request).await)
}
