//! The tool registry (`/api/tools`): create, list, show, replace, delete, and call a tool
//! through the invoker ([`ash_runtime::Runtime::call_tool`]).

use std::sync::Arc;

use ash_core::Tool;
use ash_runtime::{Caller, Missing, RuntimeError};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::openapi::Deleted;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, replace, remove))
        .routes(routes!(call))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ToolReply {
    tool: Tool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ToolList {
    tools: Vec<Tool>,
}

/// A call's arguments.
#[derive(Deserialize, ToSchema)]
pub(crate) struct CallBody {
    /// What the tool's input schema asks for [default: `{}`].
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    arguments: serde_json::Value,
}

fn empty() -> serde_json::Value {
    serde_json::json!({})
}

/// A call's result: the tool's output, or with `isError` what went wrong in the tool.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallReply {
    #[schema(value_type = Object)]
    result: serde_json::Value,
    is_error: bool,
}

fn not_found() -> ApiError {
    RuntimeError::NotFound(Missing::Tool).into()
}

/// Stores a new tool (409 when the name is taken: replace it with `PUT`).
#[utoipa::path(post, path = "/api/tools", tag = "tools", request_body = Tool,
    responses((status = 201, body = ToolReply), (status = 400, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(tool): Json<Tool>,
) -> Result<(StatusCode, Json<ToolReply>), ApiError> {
    state.runtime.check_tool(&tool)?;
    if state.store.get_tool(&tool.name).await?.is_some() {
        return Err(RuntimeError::Conflict(format!(
            "tool {} exists; replace it with PUT /api/tools/{}",
            tool.name, tool.name
        ))
        .into());
    }
    let tool = state.store.put_tool(&tool).await?;
    tracing::info!(tool = %tool.name, version = tool.version, "tool stored");
    crate::mcp::tools_changed(&state);
    Ok((StatusCode::CREATED, Json(ToolReply { tool })))
}

#[utoipa::path(get, path = "/api/tools", tag = "tools", responses((status = 200, body = ToolList)))]
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<ToolList>, ApiError> {
    Ok(Json(ToolList {
        tools: state.store.list_tools().await?,
    }))
}

#[utoipa::path(get, path = "/api/tools/{name}", tag = "tools", params(("name" = String, Path)),
    responses((status = 200, body = ToolReply), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ToolReply>, ApiError> {
    let tool = state.store.get_tool(&name).await?.ok_or_else(not_found)?;
    Ok(Json(ToolReply { tool }))
}

/// Creates or replaces the tool; a replaced tool's version is one more.
#[utoipa::path(put, path = "/api/tools/{name}", tag = "tools", params(("name" = String, Path)), request_body = Tool,
    responses((status = 200, body = ToolReply), (status = 400, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody)))]
pub(crate) async fn replace(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(tool): Json<Tool>,
) -> Result<Json<ToolReply>, ApiError> {
    if tool.name != name {
        return Err(ApiError::bad_request(format!(
            "the body names tool {:?}, the path {name:?}",
            tool.name
        )));
    }
    state.runtime.check_tool(&tool)?;
    let tool = state.store.put_tool(&tool).await?;
    tracing::info!(tool = %tool.name, version = tool.version, "tool stored");
    crate::mcp::tools_changed(&state);
    Ok(Json(ToolReply { tool }))
}

#[utoipa::path(delete, path = "/api/tools/{name}", tag = "tools", params(("name" = String, Path)),
    responses((status = 200, body = Deleted), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    if !state.store.delete_tool(&name).await? {
        return Err(not_found());
    }
    crate::mcp::tools_changed(&state);
    Ok(Json(Deleted { ok: true }))
}

/// Calls the tool: 400 when the arguments break its input schema (naming where), 404 for no
/// such tool; a failure inside the tool (its upstream down, slow, too large) is a 200 with
/// `isError`.
#[utoipa::path(post, path = "/api/tools/{name}/call", tag = "tools", params(("name" = String, Path)), request_body = CallBody,
    responses((status = 200, body = CallReply), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn call(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<CallBody>,
) -> Result<Json<CallReply>, ApiError> {
    let caller = Caller {
        via: "rest",
        session: None,
    };
    let output = state
        .runtime
        .call_tool(&name, body.arguments, &caller)
        .await?;
    Ok(Json(CallReply {
        result: output.result,
        is_error: output.is_error,
    }))
}
