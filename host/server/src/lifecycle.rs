//! Session lifecycle beyond messages: pause, stop and resume (warm or cold), and exec.
//!
//! Pause and stop write a durable snapshot of the workspace before they answer, holding the
//! session's turn lock so the files hold still (409 while a turn runs). Resume is warm when the
//! sandbox is still up; otherwise a new sandbox starts over the workspace — or over the last
//! snapshot when the workspace is gone — so the files and the backend's conversation survive.

use std::sync::Arc;
use std::time::Duration;

use ash_core::{HookPoint, ResumePath, Session, SessionId, SessionStatus, Transition};
use ash_protocol::Event;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::openapi::SessionReply;
use crate::sessions::{find, now};
use crate::{ApiError, AppState};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(pause))
        .routes(routes!(stop))
        .routes(routes!(resume))
        .routes(routes!(exec))
        .routes(routes!(fork))
}

/// `POST /api/sessions/:id/pause`: writes a durable snapshot of the workspace, then stops
/// taking messages. The sandbox stays up, so resuming is instant.
#[utoipa::path(post, path = "/api/sessions/{id}/pause", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn pause(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = find(&state, &id).await?;
    session.status.apply(Transition::Pause)?;
    let _still = state.sessions.hold(session.id)?;
    state.sessions.snapshot(session.id).await?;
    set_status(&state, session.id, Transition::Pause).await
}

/// `POST /api/sessions/:id/stop`: snapshots the workspace and stops the sandbox; the files
/// and the conversation stay for `resume`.
#[utoipa::path(post, path = "/api/sessions/{id}/stop", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn stop(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = find(&state, &id).await?;
    session.status.apply(Transition::Stop)?;
    // Held to the end: a message meanwhile gets 409, one after it reads the session stopped.
    let _still = state.sessions.hold(session.id)?;
    state.sessions.snapshot(session.id).await?;
    state.sessions.discard(session.id).await;
    set_status(&state, session.id, Transition::Stop).await
}

/// `POST /api/sessions/:id/resume`: back to `active` — warm when its sandbox is still up,
/// cold otherwise (a new sandbox over its workspace, or over its last snapshot when the
/// workspace is gone), with the agent's and the session's env applied again.
#[utoipa::path(post, path = "/api/sessions/{id}/resume", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 410, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = find(&state, &id).await?;
    session.status.apply(Transition::Resume)?;
    if session.status == SessionStatus::Active {
        return Ok(Json(SessionReply { session }));
    }
    // Held to the end, as a pause or stop holds it: one of them at a time.
    let _still = state.sessions.hold(session.id)?;
    let path = match state.sessions.is_warm(session.id).await {
        true => ResumePath::Warm,
        false => ResumePath::Cold,
    };
    state.sessions.live(&state, &session, None).await?;
    let path = path.as_str();
    state.metrics.resumes.with_label_values(&[path]).inc();
    tracing::info!(session = %session.id, path, "session resumed");
    set_status(&state, session.id, Transition::Resume).await
}

/// The longest command text `exec` takes.
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// `exec`'s default and largest timeout, as in the reference API.
const EXEC_DEFAULT_MS: u64 = 30_000;
const EXEC_MAX_MS: u64 = 300_000;

/// A shell command to run in the session's workspace, inside its sandbox.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ExecBody {
    #[schema(min_length = 1, max_length = 65536)]
    command: String,
    /// Milliseconds before the command (and everything it started) is killed [default: 30000].
    #[schema(minimum = 1, maximum = 300000)]
    timeout: Option<u64>,
}

/// How the command ended. Each output keeps its first MiB; `truncated` says whether more was dropped.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecReply {
    exit_code: i32,
    stdout: String,
    stderr: String,
    /// Killed at its timeout (exit code 124).
    timed_out: bool,
    truncated: bool,
}

/// `POST /api/sessions/:id/exec`: runs a command in the session's sandbox, as the agent would.
#[utoipa::path(post, path = "/api/sessions/{id}/exec", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = ExecBody,
    responses((status = 200, body = ExecReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn exec(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<ExecBody>,
) -> Result<Json<ExecReply>, ApiError> {
    if body.command.is_empty() || body.command.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::bad_request(format!(
            "command must be 1-{MAX_COMMAND_BYTES} bytes"
        )));
    }
    let timeout = body.timeout.unwrap_or(EXEC_DEFAULT_MS);
    if !(1..=EXEC_MAX_MS).contains(&timeout) {
        return Err(ApiError::bad_request(format!(
            "timeout must be 1-{EXEC_MAX_MS} milliseconds"
        )));
    }
    let session = find(&state, &id).await?;
    session.status.accept_message()?;
    let live = state.sessions.live(&state, &session, None).await?;
    let answer = live
        .sandbox
        .exec(body.command, Duration::from_millis(timeout));
    let grace = Duration::from_millis(timeout) + Duration::from_secs(5);
    match tokio::time::timeout(grace, answer).await {
        Ok(Ok(Event::ExecResult {
            exit_code,
            stdout,
            stderr,
            timed_out,
            truncated,
            ..
        })) => Ok(Json(ExecReply {
            exit_code,
            stdout,
            stderr,
            timed_out,
            truncated,
        })),
        Ok(Ok(Event::Error { error, .. })) => Err(ApiError::internal("Exec failed", error)),
        Ok(Ok(other)) => Err(ApiError::internal(
            "Exec failed",
            format!("unexpected answer {other:?}"),
        )),
        Ok(Err(e)) => Err(ApiError::internal("Sandbox not available", e)),
        Err(_) => Err(ApiError::internal(
            "Exec failed",
            "the sandbox did not answer in time",
        )),
    }
}

/// `POST /api/sessions/:id/fork`: a new session (status `paused`, `parentSessionId` set)
/// with a copy of the workspace and of the conversation; resume it to use it.
#[utoipa::path(post, path = "/api/sessions/{id}/fork", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 201, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody),
        (status = 409, body = crate::openapi::ErrorBody), (status = 410, body = crate::openapi::ErrorBody)))]
pub(crate) async fn fork(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<(StatusCode, Json<SessionReply>), ApiError> {
    let parent = find(&state, &id).await?;
    if parent.status == SessionStatus::Ended {
        return Err(ApiError::new(
            StatusCode::GONE,
            "Session has ended; its files are gone, so it cannot be forked",
        ));
    }
    let _still = state.sessions.hold(parent.id)?;
    let child = Session {
        id: SessionId::new(),
        status: SessionStatus::Paused,
        parent_session_id: Some(parent.id.to_string()),
        created_at: now(),
        last_active_at: now(),
        ..parent.clone()
    };
    let child = Session {
        sandbox_id: child.id.to_string(),
        ..child
    };
    state.sessions.fork(parent.id, child.id).await?;
    state.store.insert_session(&child).await?;
    state.store.copy_messages(parent.id, child.id).await?;
    tracing::info!(parent = %parent.id, session = %child.id, "session forked");
    crate::hooks::lifecycle(&state, HookPoint::SessionCreated, &child, None);
    Ok((StatusCode::CREATED, Json(SessionReply { session: child })))
}

async fn set_status(
    state: &AppState,
    id: SessionId,
    transition: Transition,
) -> Result<Json<SessionReply>, ApiError> {
    let session = state
        .store
        .transition(id, transition)
        .await?
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    let hook = match transition {
        Transition::Resume => HookPoint::SessionResumed,
        _ => HookPoint::SessionPaused,
    };
    crate::hooks::lifecycle(state, hook, &session, None);
    Ok(Json(SessionReply { session }))
}
