//! The message queue (`/api/queue`), as in the reference API: enqueue a prompt for an agent
//! (or one of its sessions), list, count, look at and cancel items. The runtime runs them
//! ([`ash_runtime::Runtime::enqueue`]).

use std::sync::Arc;

use ash_core::{QueueItem, QueueStatus};
use ash_runtime::{Missing, NewQueueItem, RuntimeError};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Json, Query};
use crate::{ApiError, AppState};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(enqueue, list))
        .routes(routes!(stats))
        .routes(routes!(show, cancel))
}

/// A prompt to queue.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnqueueBody {
    agent_name: String,
    /// 1–500,000 characters.
    prompt: String,
    /// The session the prompt goes to (of the same agent); none: a session is made for it.
    #[schema(format = Uuid)]
    session_id: Option<String>,
    /// Higher runs first [default: 0, at most 1,000,000].
    #[schema(minimum = 0, maximum = 1_000_000)]
    priority: Option<u32>,
    /// Tries after the first when a turn fails [default: 3, at most 100].
    #[schema(minimum = 0, maximum = 100)]
    max_retries: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueItemReply {
    item: QueueItem,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueList {
    items: Vec<QueueItem>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueCounts {
    pending: u64,
    processing: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct QueueStats {
    stats: QueueCounts,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QueueQuery {
    /// Only items of this status.
    #[param(value_type = Option<QueueStatus>)]
    status: Option<String>,
    /// 1–500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

fn not_found() -> ApiError {
    RuntimeError::NotFound(Missing::QueueItem).into()
}

#[utoipa::path(post, path = "/api/queue", tag = "queue", request_body = EnqueueBody,
    responses((status = 201, body = QueueItemReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn enqueue(
    State(state): State<Arc<AppState>>,
    Json(body): Json<EnqueueBody>,
) -> Result<(StatusCode, Json<QueueItemReply>), ApiError> {
    let item = state
        .runtime
        .enqueue(NewQueueItem {
            agent: body.agent_name,
            prompt: body.prompt,
            session_id: body.session_id,
            priority: body.priority.unwrap_or(0),
            max_retries: body.max_retries.unwrap_or(3),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(QueueItemReply { item })))
}

/// Items newest first.
#[utoipa::path(get, path = "/api/queue", tag = "queue", params(QueueQuery),
    responses((status = 200, body = QueueList), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<QueueQuery>,
) -> Result<Json<QueueList>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1-500"));
    }
    let status = query
        .status
        .as_deref()
        .map(QueueStatus::parse)
        .transpose()?;
    let items = state.store.list_queue(status, limit as usize).await?;
    Ok(Json(QueueList { items }))
}

/// How many items each status holds.
#[utoipa::path(get, path = "/api/queue/stats", tag = "queue", responses((status = 200, body = QueueStats)))]
pub(crate) async fn stats(
    State(state): State<Arc<AppState>>,
) -> Result<Json<QueueStats>, ApiError> {
    let counts = state.store.count_queue().await?;
    let of = |status: QueueStatus| {
        counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    Ok(Json(QueueStats {
        stats: QueueCounts {
            pending: of(QueueStatus::Pending),
            processing: of(QueueStatus::Processing),
            completed: of(QueueStatus::Completed),
            failed: of(QueueStatus::Failed),
            cancelled: of(QueueStatus::Cancelled),
        },
    }))
}

#[utoipa::path(get, path = "/api/queue/{id}", tag = "queue", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = QueueItemReply), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<QueueItemReply>, ApiError> {
    let item = state
        .store
        .get_queue_item(&id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(QueueItemReply { item }))
}

/// Cancels a pending item: it never runs.
#[utoipa::path(delete, path = "/api/queue/{id}", tag = "queue", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = QueueItemReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<QueueItemReply>, ApiError> {
    let item = state
        .store
        .cancel_queue_item(&id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(QueueItemReply { item }))
}
