//! The lifecycle routes beyond messages: pause, stop, resume, exec and fork. What each does
//! (snapshots, the turn lock, warm and cold resume) is the runtime's (`ash_runtime::lifecycle`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::openapi::SessionReply;
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
    let session = state.runtime.pause(&id).await?;
    Ok(Json(SessionReply { session }))
}

/// `POST /api/sessions/:id/stop`: snapshots the workspace and stops the sandbox; the files
/// and the conversation stay for `resume`.
#[utoipa::path(post, path = "/api/sessions/{id}/stop", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn stop(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = state.runtime.stop(&id).await?;
    Ok(Json(SessionReply { session }))
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
    let session = state.runtime.resume(&id).await?;
    Ok(Json(SessionReply { session }))
}

/// `exec`'s default timeout, as in the reference API.
const EXEC_DEFAULT_MS: u64 = 30_000;

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
    let timeout = Duration::from_millis(body.timeout.unwrap_or(EXEC_DEFAULT_MS));
    let ended = state.runtime.exec(&id, body.command, timeout).await?;
    Ok(Json(ExecReply {
        exit_code: ended.exit_code,
        stdout: ended.stdout,
        stderr: ended.stderr,
        timed_out: ended.timed_out,
        truncated: ended.truncated,
    }))
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
    let session = state.runtime.fork(&id).await?;
    Ok((StatusCode::CREATED, Json(SessionReply { session })))
}
