//! The API-key routes: list the keys (their first characters only), make one (shown once, in
//! the reply), delete one. A deleted key is refused from the next request on: keys are looked
//! up in the store at every request. The key in `ASH_API_KEY` is listed as `env` and is the
//! operator's setting, not deleted here.

use std::sync::Arc;

use ash_core::ApiKey;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::{ApiError, AppState};

const MAX_LABEL: usize = 255;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateKeyBody {
    /// What the key is for; `dashboard-key` when left out.
    #[schema(max_length = 255)]
    label: Option<String>,
}

/// A new key: the only time it is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NewKey {
    id: String,
    key: String,
    label: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<ApiKey>,
}

#[utoipa::path(get, path = "/api/api-keys", tag = "api-keys",
    responses((status = 200, body = KeyList)))]
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<KeyList>, ApiError> {
    let stored = state.store.list_api_keys().await?;
    let keys = state
        .keys
        .env_listed
        .iter()
        .cloned()
        .chain(stored)
        .collect();
    Ok(Json(KeyList { keys }))
}

#[utoipa::path(post, path = "/api/api-keys", tag = "api-keys", request_body = CreateKeyBody,
    responses((status = 201, body = NewKey), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateKeyBody>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let label = body.label.unwrap_or_else(|| "dashboard-key".into());
    if label.is_empty() || label.len() > MAX_LABEL || label.contains(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "label must be 1-{MAX_LABEL} bytes without control characters"
        )));
    }
    let (key, hash) = crate::auth::mint();
    let stored = state
        .store
        .insert_api_key(&hash, &label, &crate::auth::prefix(&key))
        .await?;
    tracing::info!(key = %stored.id, label = %stored.label, "API key made");
    Ok((
        StatusCode::CREATED,
        Json(NewKey {
            id: stored.id,
            key,
            label: stored.label,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/api-keys/{id}", tag = "api-keys", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if id == crate::auth::ENV_KEY_ID && state.keys.env_listed.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the key in ASH_API_KEY is the server's setting: change or unset it there and restart",
        ));
    }
    if state.store.delete_api_key(&id).await? {
        tracing::info!(key = %id, "API key deleted: it is refused from now on");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("API key not found"))
    }
}
