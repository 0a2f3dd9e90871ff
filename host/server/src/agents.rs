//! Agent deploys. Path mode points at a host folder (which must hold `CLAUDE.md`); managed
//! mode uploads files that the server writes under `<data>/agents/<name>`, swapping the
//! folder whole so a redeploy never leaves files of the previous version behind. Every
//! uploaded path is checked before anything is written; `ash.toml` is validated at deploy,
//! so a broken agent is refused here rather than at its first session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ash_core::{AgentManifest, AgentName, RelativePath, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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
        .routes(routes!(show, remove))
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
    path: String,
    content: String,
}

#[utoipa::path(post, path = "/api/agents", tag = "agents", request_body = DeployBody,
    responses((status = 201, body = AgentReply), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<Arc<AppState>>,
    Json(body): Json<DeployBody>,
) -> Result<(StatusCode, Json<AgentReply>), ApiError> {
    let name = AgentName::try_from(body.name)?;
    validate_env(&body.env)?;
    let dir = match body.path {
        Some(path) if body.files.is_none() && body.system_prompt.is_none() => {
            let (dir, manifest) = path_mode(&state.config, &path).await?;
            check_grants(&state.config, &manifest)?;
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
            check_grants(&state.config, &manifest)?;
            let root = state.config.data_dir.join("agents");
            blocking(move || Ok(write_managed(&root, upload)?)).await?
        }
    };
    let agent = state
        .store
        .upsert_agent(&name, &dir.to_string_lossy(), &body.env)
        .await?;
    tracing::info!(agent = %name, version = agent.version, path = %agent.path, "agent deployed");
    tokio::spawn(crate::pool::fill(state.clone(), name));
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
    let name = AgentName::try_from(name)?;
    let agent = state
        .store
        .get_agent(&name)
        .await?
        .ok_or_else(agent_not_found)?;
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
    let agent = state
        .store
        .get_agent(&name)
        .await?
        .ok_or_else(agent_not_found)?;
    for session in state.store.list_sessions(Some(&name)).await? {
        if session.status != ash_core::SessionStatus::Ended {
            state
                .store
                .transition(session.id, ash_core::Transition::End)
                .await?;
            state.sessions.end(session.id).await;
        }
    }
    state.store.delete_agent(&name).await?;
    for (id, live) in state.sessions.pool().drain(Some(&name)) {
        state.sessions.retire(&id, &live).await;
    }
    let managed = state.config.data_dir.join("agents").join(name.as_str());
    if Path::new(&agent.path) == managed {
        blocking(move || Ok(std::fs::remove_dir_all(managed)?)).await?;
    }
    Ok(Json(Deleted { ok: true }))
}

/// Deploys a bundled agent unless an agent of that name exists already with its folder (a
/// store used before with another data dir has the record but not the folder).
pub(crate) async fn seed(state: &AppState, seed: crate::SeedAgent) -> Result<(), ApiError> {
    let name = AgentName::try_from(seed.name)?;
    if let Some(agent) = state.store.get_agent(&name).await? {
        if Path::new(&agent.path).is_dir() {
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
    let root = state.config.data_dir.join("agents");
    let dir = blocking(move || Ok(write_managed(&root, upload)?)).await?;
    state
        .store
        .upsert_agent(&name, &dir.to_string_lossy(), &BTreeMap::new())
        .await?;
    Ok(())
}

pub(crate) fn agent_not_found() -> ApiError {
    ApiError::not_found("Agent not found")
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
    let (roots, data_dir) = (config.deploy_roots.clone(), config.data_dir.clone());
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

/// The agent's `ash.toml` text, if it has one.
pub(crate) fn read_manifest(dir: &Path) -> Result<Option<String>, ApiError> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::metadata(&path) {
        Err(_) => Ok(None),
        Ok(meta) if meta.len() > MAX_MANIFEST_BYTES as u64 => Err(ApiError::bad_request(format!(
            "invalid ash.toml: larger than {MAX_MANIFEST_BYTES} bytes"
        ))),
        Ok(_) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("cannot read ash.toml: {e}"))),
    }
}

struct Upload {
    name: AgentName,
    files: Vec<(RelativePath, Vec<u8>)>,
}

/// Refuses a manifest asking for syscalls the operator has not granted (403).
pub(crate) fn check_grants(
    config: &crate::ServerConfig,
    manifest: &AgentManifest,
) -> Result<(), ApiError> {
    match manifest
        .sandbox
        .syscalls
        .iter()
        .find(|asked| !config.sandbox_grant_syscalls.contains(asked))
    {
        None => Ok(()),
        Some(asked) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("ash.toml asks for syscall {asked:?}, which this server's operator has not granted (sandbox_grant_syscalls in its settings)"),
        )),
    }
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
    let target = root.join(upload.name.as_str());
    let old = root.join(format!(".old-{}", uuid::Uuid::new_v4()));
    let had_old = std::fs::rename(&target, &old).is_ok();
    std::fs::rename(&staging, &target)?;
    if had_old {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(target)
}

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in env {
        let valid_key = !key.is_empty()
            && key.len() <= 256
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_key {
            return Err(ApiError::bad_request(format!(
                "env name {key:?} must match [A-Za-z_][A-Za-z0-9_]* (at most 256)"
            )));
        }
        if value.len() > 64 * 1024 || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "env value of {key} must be at most 64 KiB, without NUL"
            )));
        }
    }
    Ok(())
}

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal("file task failed", e))?
}
