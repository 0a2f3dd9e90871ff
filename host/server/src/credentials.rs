//! The credential routes: store a model-provider key for sessions to use by id
//! (`credentialId`), list credentials (never their keys), delete one. Keys are sealed by the
//! runtime's [`ash_runtime::Sealer`] before they are stored; without `ASH_CREDENTIAL_KEY` these
//! routes answer 503 and say how to set it.

use std::sync::Arc;

use ash_core::{Credential, CredentialType};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::{ApiError, AppState};

/// The longest key and label stored.
const MAX_KEY: usize = 16 * 1024;
const MAX_LABEL: usize = 255;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

/// A key to store: `type` is `anthropic`, `openai` or `custom` (given to sessions as
/// `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `ASH_CUSTOM_API_KEY`).
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateCredentialBody {
    #[serde(rename = "type")]
    kind: CredentialType,
    #[schema(min_length = 1, max_length = 16384)]
    key: String,
    #[schema(max_length = 255)]
    label: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CredentialReply {
    credential: Credential,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CredentialList {
    credentials: Vec<Credential>,
}

#[utoipa::path(post, path = "/api/credentials", tag = "credentials", request_body = CreateCredentialBody,
    responses((status = 201, body = CredentialReply), (status = 400, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateCredentialBody>,
) -> Result<(StatusCode, Json<CredentialReply>), ApiError> {
    let sealer = state.runtime.sealer()?;
    if body.key.is_empty() || body.key.len() > MAX_KEY || body.key.contains(['\0', '\n']) {
        return Err(ApiError::bad_request(format!(
            "key must be 1-{MAX_KEY} bytes on one line"
        )));
    }
    let label = body.label.unwrap_or_default();
    if label.len() > MAX_LABEL {
        return Err(ApiError::bad_request(format!(
            "label must be at most {MAX_LABEL} bytes"
        )));
    }
    let credential = Credential {
        id: uuid::Uuid::new_v4().to_string(),
        kind: body.kind,
        label,
        active: true,
        created_at: ash_runtime::now(),
        last_used_at: None,
    };
    let sealed = sealer.seal(&credential.id, &body.key);
    state.store.insert_credential(&credential, &sealed).await?;
    tracing::info!(credential = %credential.id, kind = credential.kind.as_str(), "credential stored");
    Ok((StatusCode::CREATED, Json(CredentialReply { credential })))
}

#[utoipa::path(get, path = "/api/credentials", tag = "credentials",
    responses((status = 200, body = CredentialList)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<CredentialList>, ApiError> {
    Ok(Json(CredentialList {
        credentials: state.store.list_credentials().await?,
    }))
}

#[utoipa::path(delete, path = "/api/credentials/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_credential(&id).await? {
        tracing::info!(credential = %id, "credential deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("Credential not found"))
    }
}
