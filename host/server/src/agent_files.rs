//! An agent's files (`/api/agents/:name/files`), as in the reference API: list, read, write
//! and delete. Reads see the folder new sandboxes start from. A write or delete makes the
//! agent's next version: its folder is copied, changed, checked and swapped in whole
//! ([`ash_runtime::Runtime::change_agent_files`]), a coordinator sends it to the snapshot
//! store for the runners, and warm sandboxes of the version before are stopped. Every path is
//! confined to the folder (cap-std), and a folder on the server (a path-mode deploy) is
//! read, never changed.

use std::sync::Arc;

use ash_core::AgentName;
use ash_runtime::FileChange;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::agents::{changed, stored, Change};
use crate::error::{Json, Query};
use crate::files::{json_format, listing, raw, relative, text, wildcard, FileInfo, ReadQuery};
use crate::{ApiError, AppState};

/// A write request's cap, and how many files it may hold.
const WRITE_BODY_LIMIT: usize = 64 * 1024 * 1024;
const MAX_WRITE_FILES: usize = 1000;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, write).layer(DefaultBodyLimit::max(WRITE_BODY_LIMIT)))
        .merge(wildcard(
            "/api/agents/{name}/files/{*path}",
            axum::routing::get(read).delete(remove),
            routes!(read, remove),
        ))
}

/// `{"files": […]}`; `truncated` says the listing stopped at 10,000 files.
#[derive(Serialize, ToSchema)]
pub(crate) struct AgentFileList {
    files: Vec<FileInfo>,
    truncated: bool,
}

/// A text file of the agent.
#[derive(Serialize, ToSchema)]
pub(crate) struct AgentFileContent {
    path: String,
    content: String,
    size: u64,
}

/// Files to write into the agent's folder, each `content` base64.
#[derive(Deserialize, ToSchema)]
pub(crate) struct AgentFilesBody {
    #[schema(min_items = 1, max_items = 1000)]
    files: Vec<crate::agents::FileBody>,
}

/// How many files were written; `version` is the agent's new version.
#[derive(Serialize, ToSchema)]
pub(crate) struct AgentFilesWritten {
    written: usize,
    version: i64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AgentFileDeleted {
    deleted: bool,
    version: i64,
}

/// The folder of the agent named `name`, as this node reads it.
async fn folder(
    state: &AppState,
    name: String,
) -> Result<(ash_core::Agent, std::path::PathBuf), ApiError> {
    let agent = stored(state, &AgentName::try_from(name)?).await?;
    let dir = state.runtime.agent_dir(&agent).await?;
    Ok((agent, dir))
}

/// Makes the changes the agent's next version, sends it on, and refreshes its warm pool.
async fn change(
    state: &AppState,
    name: String,
    changes: Vec<FileChange>,
) -> Result<ash_core::Agent, ApiError> {
    let name = AgentName::try_from(name)?;
    let held = state.runtime.agent_folder_lock().await;
    let agent = state
        .runtime
        .change_agent_files(&held, &name, changes)
        .await?;
    changed(state, &agent, Change::Deployed).await?;
    drop(held);
    tracing::info!(agent = %name, version = agent.version, "agent files changed");
    state.runtime.agent_deployed(name);
    Ok(agent)
}

/// `GET /api/agents/:name/files`: every regular file of the agent's folder.
#[utoipa::path(get, path = "/api/agents/{name}/files", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = AgentFileList), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<AgentFileList>, ApiError> {
    let (_, dir) = folder(&state, name).await?;
    let (files, truncated) = listing(dir, true).await?;
    Ok(Json(AgentFileList { files, truncated }))
}

/// `GET /api/agents/:name/files/*path`: one file, as JSON text (the default, up to 1 MiB) or
/// raw bytes (up to 100 MiB).
#[utoipa::path(get, path = "/api/agents/{name}/files/{path}", tag = "agents",
    params(("name" = String, Path), ("path" = String, Path, description = "Relative to the agent's folder"), ReadQuery),
    responses((status = 200, description = "`AgentFileContent`, or the raw bytes with `format=raw`", body = AgentFileContent), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    UrlPath((name, path)): UrlPath<(String, String)>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let json = json_format(query.format.as_deref(), true)?;
    let path = relative(&path)?;
    let (_, dir) = folder(&state, name).await?;
    if !json {
        return raw(dir, &path).await;
    }
    let (content, size) = text(dir, &path).await?;
    Ok(Json(AgentFileContent {
        path: path.as_path().display().to_string(),
        content,
        size,
    })
    .into_response())
}

/// `POST /api/agents/:name/files`: writes the files (each whole) as the agent's next version.
#[utoipa::path(post, path = "/api/agents/{name}/files", tag = "agents", params(("name" = String, Path)), request_body = AgentFilesBody,
    responses((status = 200, body = AgentFilesWritten), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub(crate) async fn write(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<AgentFilesBody>,
) -> Result<Json<AgentFilesWritten>, ApiError> {
    if body.files.is_empty() || body.files.len() > MAX_WRITE_FILES {
        return Err(ApiError::bad_request(format!(
            "files must hold 1 to {MAX_WRITE_FILES} entries"
        )));
    }
    let mut changes = Vec::with_capacity(body.files.len());
    for file in &body.files {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&file.content)
            .map_err(|e| {
                ApiError::bad_request(format!("file {:?}: content is not base64: {e}", file.path))
            })?;
        changes.push(FileChange::Write(relative(&file.path)?, bytes));
    }
    let written = changes.len();
    let agent = change(&state, name, changes).await?;
    Ok(Json(AgentFilesWritten {
        written,
        version: agent.version,
    }))
}

/// `DELETE /api/agents/:name/files/*path`: deletes one file as the agent's next version
/// (`CLAUDE.md` stays).
#[utoipa::path(delete, path = "/api/agents/{name}/files/{path}", tag = "agents",
    params(("name" = String, Path), ("path" = String, Path, description = "Relative to the agent's folder")),
    responses((status = 200, body = AgentFileDeleted), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath((name, path)): UrlPath<(String, String)>,
) -> Result<Json<AgentFileDeleted>, ApiError> {
    let path = relative(&path)?;
    let agent = change(&state, name, vec![FileChange::Delete(path)]).await?;
    Ok(Json(AgentFileDeleted {
        deleted: true,
        version: agent.version,
    }))
}
