//! Agent deploys. Path mode points at a host folder (which must hold `CLAUDE.md`); managed
//! mode uploads files that the server writes under `<data>/agents/<name>`, swapping the
//! folder whole so a redeploy never leaves files of the previous version behind. Every
//! uploaded path is checked before anything is written; `ash.toml` is validated at deploy,
//! so a broken agent is refused here rather than at its first session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ash_core::{AgentManifest, AgentName, RelativePath, MANIFEST_FILE};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use ash_runtime::{blocking, read_manifest, validate_env, Missing, RuntimeError};

use crate::error::Json;
use crate::openapi::{AgentList, AgentReply, Deleted};
use crate::{ApiError, AppState};

/// Cap for a deploy request (managed mode carries the agent's files, base64-encoded).
const DEPLOY_BODY_LIMIT: usize = 64 * 1024 * 1024;
const MAX_FILES: usize = 10_000;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(deploy).layer(DefaultBodyLimit::max(DEPLOY_BODY_LIMIT)))
        .routes(routes!(list))
        .routes(routes!(show, remove, patch))
        .routes(routes!(config, patch_config))
}

/// What `PATCH /api/agents/:name` changes: `env` replaces the agent's (a new version), `config`
/// is merged into its own.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PatchAgentBody {
    env: Option<BTreeMap<String, String>>,
    #[schema(value_type = Option<Object>)]
    config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An agent's config.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ConfigReply {
    #[schema(value_type = Object)]
    config: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(patch, path = "/api/agents/{name}", tag = "agents", request_body = PatchAgentBody, params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = AgentReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody)))]
pub(crate) async fn patch(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<PatchAgentBody>,
) -> Result<Json<AgentReply>, ApiError> {
    let name = AgentName::try_from(name)?;
    if let Some(env) = &body.env {
        validate_env(env)?;
    }
    let agent = patched(&state, &name, body.env.as_ref(), body.config.as_ref()).await?;
    Ok(Json(AgentReply { agent }))
}

#[utoipa::path(get, path = "/api/agents/{name}/config", tag = "agents", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = ConfigReply), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn config(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ConfigReply>, ApiError> {
    let agent = stored(&state, &AgentName::try_from(name)?).await?;
    Ok(Json(ConfigReply {
        config: agent.config,
    }))
}

/// Merges the body into the agent's config, key by key (`null` removes a key); `{}` changes
/// nothing. Its `preWarmCount` sizes the agent's warm pool.
#[utoipa::path(patch, path = "/api/agents/{name}/config", tag = "agents", request_body(content = Object), params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = ConfigReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody)))]
pub(crate) async fn patch_config(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
    Json(patch): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<ConfigReply>, ApiError> {
    let name = AgentName::try_from(name)?;
    let agent = patched(&state, &name, None, Some(&patch)).await?;
    Ok(Json(ConfigReply {
        config: agent.config,
    }))
}

/// Changes the agent (the store checks the config it would have); its warm pool follows (a
/// new env is a new version, which a coordinator sends to the runners).
async fn patched(
    state: &AppState,
    name: &AgentName,
    env: Option<&BTreeMap<String, String>>,
    config: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<ash_core::Agent, ApiError> {
    let agent = state
        .store
        .patch_agent(name, env, config)
        .await?
        .ok_or_else(agent_not_found)?;
    let from = agent.version - i64::from(env.is_some());
    // The runners hear of it too: a new version's folder, or a new warm pool size.
    changed(state, &agent, Change::Patched { from }).await?;
    tracing::info!(agent = %name, version = agent.version, "agent changed");
    state.runtime.agent_deployed(name.clone());
    Ok(agent)
}

/// Managed mode: `files` (and optionally `systemPrompt`); path mode: `path`, a folder on the server.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeployBody {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,255}$")]
    name: String,
    path: Option<String>,
    system_prompt: Option<String>,
    files: Option<Vec<FileBody>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct FileBody {
    pub(crate) path: String,
    /// Base64.
    pub(crate) content: String,
}

#[utoipa::path(post, path = "/api/agents", tag = "agents", request_body = DeployBody,
    responses((status = 201, body = AgentReply), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<Arc<AppState>>,
    Json(body): Json<DeployBody>,
) -> Result<(StatusCode, Json<AgentReply>), ApiError> {
    let name = AgentName::try_from(body.name)?;
    validate_env(&body.env)?;
    let _one = state.runtime.agent_folder_lock().await;
    let dir = match body.path {
        Some(path) if body.files.is_none() && body.system_prompt.is_none() => {
            let (dir, manifest) = path_mode(&state.config, &path).await?;
            state.runtime.check_grants(&manifest)?;
            dir
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "give either path (a folder on the server) or files/systemPrompt, not both",
            ))
        }
        None => {
            let (upload, manifest) =
                decode_files(&name, body.files.unwrap_or_default(), body.system_prompt)?;
            state.runtime.check_grants(&manifest)?;
            let root = state.runtime.managed_agents();
            blocking(move || Ok::<_, ApiError>(write_managed(&root, upload)?)).await?
        }
    };
    let agent = state
        .store
        .upsert_agent(&name, &dir.to_string_lossy(), &body.env)
        .await?;
    tracing::info!(agent = %name, version = agent.version, path = %agent.path, "agent deployed");
    changed(&state, &agent, Change::Deployed).await?;
    state.runtime.agent_deployed(name);
    Ok((StatusCode::CREATED, Json(AgentReply { agent })))
}

#[utoipa::path(get, path = "/api/agents", tag = "agents", responses((status = 200, body = AgentList)))]
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: state.store.list_agents().await?,
    }))
}

#[utoipa::path(get, path = "/api/agents/{name}", tag = "agents", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = AgentReply), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<AgentReply>, ApiError> {
    let agent = stored(&state, &AgentName::try_from(name)?).await?;
    Ok(Json(AgentReply { agent }))
}

/// Ends the agent's live sessions (their sandboxes stop), then forgets the agent.
#[utoipa::path(delete, path = "/api/agents/{name}", tag = "agents", params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = Deleted), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    let name = AgentName::try_from(name)?;
    let agent = state.runtime.remove_agent(&name).await?;
    changed(&state, &agent, Change::Deleted).await?;
    Ok(Json(Deleted { ok: true }))
}

/// What happened to an agent, for [`changed`].
pub(crate) enum Change {
    /// Its folder here is the new version.
    Deployed,
    /// Changed in place from version `from` (the same folder).
    Patched {
        from: i64,
    },
    Deleted,
}

/// On a coordinator, the snapshot store gets the agent's new version (a deleted one's leaves
/// it), and the runners hear of it: they fill or empty its warm pool, and stop the sandboxes
/// of a deleted agent's sessions.
pub(crate) async fn changed(
    state: &AppState,
    agent: &ash_core::Agent,
    change: Change,
) -> Result<(), ApiError> {
    let Some(c) = &state.coordinator else {
        return Ok(());
    };
    match change {
        Change::Deployed => state.runtime.publish_agent(agent).await?,
        // Any coordinator may take it, so the folder comes from the store, not from here.
        Change::Patched { from } if from != agent.version => {
            state.runtime.republish_agent(agent, from).await?
        }
        Change::Patched { .. } => {}
        Change::Deleted => state.runtime.unpublish(&agent.name, agent.version).await,
    }
    c.announce_agent(&agent.name).await;
    Ok(())
}

/// Deploys a bundled agent unless an agent of that name exists already with its folder (a
/// store used before with another data dir has the record but not the folder).
pub(crate) async fn seed(state: &AppState, seed: crate::SeedAgent) -> Result<(), ApiError> {
    let name = AgentName::try_from(seed.name)?;
    if let Some(agent) = state.store.get_agent(&name).await? {
        // A cluster's agents are in its snapshot store, whichever coordinator deployed them.
        if state.coordinator.is_some() || Path::new(&agent.path).is_dir() {
            return Ok(());
        }
    }
    let mut files = Vec::with_capacity(seed.files.len());
    for (path, bytes) in seed.files {
        files.push((RelativePath::parse(&path)?, bytes));
    }
    let upload = Upload {
        name: name.clone(),
        files,
    };
    let root = state.runtime.managed_agents();
    let _one = state.runtime.agent_folder_lock().await;
    let dir = blocking(move || Ok::<_, ApiError>(write_managed(&root, upload)?)).await?;
    let agent = state
        .store
        .upsert_agent(&name, &dir.to_string_lossy(), &BTreeMap::new())
        .await?;
    changed(state, &agent, Change::Deployed).await
}

/// The agent of this name, or 404.
pub(crate) async fn stored(
    state: &AppState,
    name: &AgentName,
) -> Result<ash_core::Agent, ApiError> {
    state
        .store
        .get_agent(name)
        .await?
        .ok_or_else(agent_not_found)
}

fn agent_not_found() -> ApiError {
    RuntimeError::NotFound(Missing::Agent).into()
}

/// Resolves a path-mode folder (relative paths are under the data dir) and checks it.
/// Path mode: a folder already on the server, used in place. Only folders under the
/// operator's `deploy_roots` qualify (relative paths are taken under the first), judged after
/// every link in the path is resolved, and never the data dir or anything in it (other
/// sessions' workspaces, snapshots, keys).
async fn path_mode(
    config: &crate::ServerConfig,
    raw: &str,
) -> Result<(PathBuf, AgentManifest), ApiError> {
    if raw.is_empty() || raw.len() > 4096 {
        return Err(ApiError::bad_request("path must be 1-4096 bytes"));
    }
    let (roots, data_dir) = (config.deploy_roots.clone(), config.runtime.data_dir.clone());
    let raw = PathBuf::from(raw);
    blocking(move || {
        let refused = |why: &str| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{why}; deploy with files in the request, or let the operator allow the folder with deploy_roots in the server's settings"),
            )
        };
        let Some(first) = roots.first() else {
            return Err(refused("path-mode deploys are off on this server"));
        };
        let dir = std::fs::canonicalize(first.join(&raw))
            .map_err(|_| ApiError::bad_request("Agent directory must contain CLAUDE.md"))?;
        let inside = |root: &Path| std::fs::canonicalize(root).is_ok_and(|root| dir.starts_with(root));
        let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        if dir.starts_with(&data_dir) || data_dir.starts_with(&dir) {
            return Err(refused("the data dir and folders holding it cannot be deployed"));
        }
        if !roots.iter().any(|root| inside(root)) {
            return Err(refused(&format!("{} is not under an allowed deploy root", dir.display())));
        }
        if !dir.join("CLAUDE.md").is_file() {
            return Err(ApiError::bad_request(
                "Agent directory must contain CLAUDE.md",
            ));
        }
        let manifest = AgentManifest::parse(read_manifest(&dir)?.as_deref())?;
        Ok((dir, manifest))
    })
    .await
}

struct Upload {
    name: AgentName,
    files: Vec<(RelativePath, Vec<u8>)>,
}

fn decode_files(
    name: &AgentName,
    files: Vec<FileBody>,
    system_prompt: Option<String>,
) -> Result<(Upload, AgentManifest), ApiError> {
    if files.len() > MAX_FILES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_FILES} files per deploy"
        )));
    }
    let mut decoded = Vec::with_capacity(files.len() + 1);
    for file in files {
        let path = RelativePath::parse(&file.path)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&file.content)
            .map_err(|e| {
                ApiError::bad_request(format!("file {:?}: content is not base64: {e}", file.path))
            })?;
        decoded.push((path, bytes));
    }
    let has = |name: &str| decoded.iter().any(|(p, _)| p.as_path() == Path::new(name));
    if !has("CLAUDE.md") {
        let prompt = system_prompt.unwrap_or_else(|| format!("# {name}\n"));
        decoded.push((RelativePath::parse("CLAUDE.md")?, prompt.into_bytes()));
    }
    let manifest = match decoded
        .iter()
        .find(|(p, _)| p.as_path() == Path::new(MANIFEST_FILE))
    {
        Some((_, bytes)) => AgentManifest::parse(Some(
            std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("invalid ash.toml: not UTF-8"))?,
        ))?,
        None => AgentManifest::parse(None)?,
    };
    let upload = Upload {
        name: name.clone(),
        files: decoded,
    };
    Ok((upload, manifest))
}

/// Writes the upload to a staging folder, then swaps it in for the agent's folder.
fn write_managed(root: &Path, upload: Upload) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let staging = root.join(format!(".staging-{}", uuid::Uuid::new_v4()));
    for (path, bytes) in &upload.files {
        let target = staging.join(path.as_path());
        std::fs::create_dir_all(target.parent().expect("a file path has a parent"))?;
        std::fs::write(&target, bytes)?;
    }
    ash_runtime::place_folder(root, &upload.name, &staging)
}
