//! Named agent versions (`/api/agents/:name/versions`), as in the reference API: a system
//! prompt with notes, numbered from 1. New sessions of the agent start with the active
//! version's prompt; activating one, or changing or deleting the active one, refreshes the
//! agent's warm pool (on a coordinator, the runners' too). A version is named in the path by
//! its number or its id.

use std::sync::Arc;

use ash_core::{AgentName, AgentVersion, VersionFields};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use ash_runtime::{Missing, RuntimeError};

use crate::agents::{changed, stored, Change};
use crate::error::Json;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, patch, remove))
        .routes(routes!(activate))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct VersionList {
    versions: Vec<AgentVersion>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct VersionReply {
    version: AgentVersion,
}

/// A new version: the fields given, the rest from `cloneFrom` (system prompt and knowledge
/// files) when named.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateVersionBody {
    #[serde(flatten)]
    fields: VersionFields,
    /// A version's number or id.
    #[schema(value_type = Option<String>)]
    clone_from: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Activated {
    activated: bool,
    version_number: i64,
}

fn not_found() -> ApiError {
    RuntimeError::NotFound(Missing::AgentVersion).into()
}

/// The number of the version `raw` names: a number, or a version's id.
async fn number(state: &AppState, agent: &AgentName, raw: &str) -> Result<i64, ApiError> {
    if let Ok(number) = raw.parse::<i64>() {
        return Ok(number);
    }
    if uuid::Uuid::parse_str(raw).is_err() {
        return Err(ApiError::bad_request(format!(
            "{raw:?} names no version: give its number or its id"
        )));
    }
    let versions = state.store.list_versions(agent).await?.unwrap_or_default();
    versions
        .into_iter()
        .find(|v| v.id == raw)
        .map(|v| v.version_number)
        .ok_or_else(not_found)
}

/// The agent, after checking it exists, and the version number `raw` names.
async fn target(
    state: &AppState,
    name: String,
    raw: &str,
) -> Result<(ash_core::Agent, i64), ApiError> {
    let name = AgentName::try_from(name)?;
    let agent = stored(state, &name).await?;
    let number = number(state, &name, raw).await?;
    Ok((agent, number))
}

/// The agent's warm pool follows its active prompt, here and on a cluster's runners.
async fn refresh(state: &AppState, agent: &AgentName) -> Result<(), ApiError> {
    let agent = stored(state, agent).await?;
    let from = agent.version;
    changed(state, &agent, Change::Patched { from }).await?;
    state.runtime.agent_deployed(agent.name);
    Ok(())
}

#[utoipa::path(get, path = "/api/agents/{name}/versions", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<VersionList>, ApiError> {
    let name = AgentName::try_from(name)?;
    let versions = state.store.list_versions(&name).await?;
    let versions = versions.ok_or(RuntimeError::NotFound(Missing::Agent))?;
    Ok(Json(VersionList { versions }))
}

/// Numbered one above the highest; named `v<number>` unless given a name.
#[utoipa::path(post, path = "/api/agents/{name}/versions", tag = "agents", params(("name" = String, Path)), request_body = CreateVersionBody,
    responses((status = 201, body = VersionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<CreateVersionBody>,
) -> Result<(StatusCode, Json<VersionReply>), ApiError> {
    let name = AgentName::try_from(name)?;
    body.fields.check()?;
    let clone_from =
        match body.clone_from {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
                ApiError::bad_request("cloneFrom must be a version's number or id")
            })?),
            Some(serde_json::Value::String(raw)) => Some(number(&state, &name, &raw).await?),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "cloneFrom must be a version's number or id",
                ))
            }
        };
    let version = state
        .store
        .create_version(&name, body.fields, clone_from)
        .await?
        .ok_or(RuntimeError::NotFound(Missing::Agent))?;
    Ok((StatusCode::CREATED, Json(VersionReply { version })))
}

#[utoipa::path(get, path = "/api/agents/{name}/versions/{version}", tag = "agents",
    params(("name" = String, Path), ("version" = String, Path, description = "The version's number or id")),
    responses((status = 200, body = VersionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath((name, raw)): UrlPath<(String, String)>,
) -> Result<Json<VersionReply>, ApiError> {
    let (agent, number) = target(&state, name, &raw).await?;
    let version = state.store.get_version(&agent.name, number).await?;
    Ok(Json(VersionReply {
        version: version.ok_or_else(not_found)?,
    }))
}

/// Replaces the fields given.
#[utoipa::path(patch, path = "/api/agents/{name}/versions/{version}", tag = "agents",
    params(("name" = String, Path), ("version" = String, Path, description = "The version's number or id")), request_body = VersionFields,
    responses((status = 200, body = VersionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn patch(
    State(state): State<Arc<AppState>>,
    UrlPath((name, raw)): UrlPath<(String, String)>,
    Json(fields): Json<VersionFields>,
) -> Result<Json<VersionReply>, ApiError> {
    fields.check()?;
    let (agent, number) = target(&state, name, &raw).await?;
    let version = state
        .store
        .patch_version(&agent.name, number, fields)
        .await?;
    let version = version.ok_or_else(not_found)?;
    if version.is_active {
        refresh(&state, &agent.name).await?;
    }
    Ok(Json(VersionReply { version }))
}

/// Deleting the active version leaves the agent with none: its sessions start with the
/// folder's `CLAUDE.md`.
#[utoipa::path(delete, path = "/api/agents/{name}/versions/{version}", tag = "agents",
    params(("name" = String, Path), ("version" = String, Path, description = "The version's number or id")),
    responses((status = 204), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath((name, raw)): UrlPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (agent, number) = target(&state, name, &raw).await?;
    if !state.store.delete_version(&agent.name, number).await? {
        return Err(not_found());
    }
    if agent.active_version == Some(number) {
        refresh(&state, &agent.name).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Makes it the agent's one active version.
#[utoipa::path(post, path = "/api/agents/{name}/versions/{version}/activate", tag = "agents",
    params(("name" = String, Path), ("version" = String, Path, description = "The version's number or id")),
    responses((status = 200, body = Activated), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn activate(
    State(state): State<Arc<AppState>>,
    UrlPath((name, raw)): UrlPath<(String, String)>,
) -> Result<Json<Activated>, ApiError> {
    let (agent, number) = target(&state, name, &raw).await?;
    let version = state.store.activate_version(&agent.name, number).await?;
    version.ok_or_else(not_found)?;
    refresh(&state, &agent.name).await?;
    Ok(Json(Activated {
        activated: true,
        version_number: number,
    }))
}
