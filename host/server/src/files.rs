//! A session's files from outside the sandbox: list, read, write and delete single files, and
//! download or upload the whole workspace as a tar.gz — the reference API's routes and shapes.
//!
//! The workspace belongs to a hostile agent, so every operation goes through
//! [`ash_sandbox::Workspace`], which resolves paths beneath the workspace with cap-std.
//! Reads fall back to the session's last snapshot when its workspace is gone; writes bring
//! the workspace back from that snapshot first, so the next resume sees them.

use std::path::PathBuf;
use std::sync::Arc;

use ash_core::RelativePath;
use ash_runtime::{Files, Missing, RuntimeError};
use ash_sandbox::{FileError, Workspace};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::{Json, Query};
use crate::{ApiError, AppState};

/// The most files one listing returns.
const MAX_LISTED: usize = 10_000;
/// The largest file `format=json` returns, and `format=raw`.
const MAX_JSON_READ: u64 = 1024 * 1024;
const MAX_RAW_READ: u64 = 100 * 1024 * 1024;
/// Upload caps, as in the reference API: per file and per batch (decoded), and per request.
const MAX_UPLOAD_FILE: usize = 50 * 1024 * 1024;
const MAX_UPLOAD_BATCH: usize = 100 * 1024 * 1024;
const MAX_UPLOAD_FILES: usize = 500;
const FILES_BODY_LIMIT: usize = 200 * 1024 * 1024;
/// The most file content a workspace download holds, and a bundle upload (request and unpacked).
const MAX_BUNDLE_CONTENT: u64 = 100 * 1024 * 1024;
const WORKSPACE_BODY_LIMIT: usize = 134 * 1024 * 1024;
const MAX_UNPACKED: u64 = 512 * 1024 * 1024;

/// A route ending in `{*path}`: axum's wildcard takes the rest of the path, which OpenAPI
/// cannot say, so the document names it `{path}` (`documented`: the handlers' `routes!`) and
/// the router `{*path}`.
pub(crate) fn wildcard(
    route: &str,
    method_router: axum::routing::MethodRouter<Arc<AppState>>,
    documented: utoipa_axum::router::UtoipaMethodRouter<Arc<AppState>>,
) -> OpenApiRouter<Arc<AppState>> {
    let (schemas, paths, _) = documented;
    let mut router = OpenApiRouter::new().route(route, method_router);
    let openapi = router.get_openapi_mut();
    openapi.paths.paths.extend(paths.paths);
    let components = openapi.components.get_or_insert_with(Default::default);
    components.schemas.extend(schemas);
    router
}

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, upload).layer(DefaultBodyLimit::max(FILES_BODY_LIMIT)))
        .merge(wildcard(
            "/api/sessions/{id}/files/{*path}",
            axum::routing::get(read).delete(remove),
            routes!(read, remove),
        ))
        .routes(routes!(download, restore).layer(DefaultBodyLimit::max(WORKSPACE_BODY_LIMIT)))
}

/// Where the files came from: the session's workspace, or its last snapshot when the
/// workspace is gone.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    Sandbox,
    Snapshot,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Snapshot => "snapshot",
        }
    }
}

/// The folder to read from, and which one it is.
async fn readable(state: &AppState, raw_id: &str) -> Result<(PathBuf, Source), ApiError> {
    let (_, dir, from) = state.runtime.files_to_read(raw_id).await?;
    let source = match from {
        Files::Workspace => Source::Sandbox,
        Files::Snapshot => Source::Snapshot,
    };
    Ok((dir, source))
}

fn no_workspace() -> ApiError {
    RuntimeError::NotFound(Missing::Workspace).into()
}

/// Runs blocking file work off the async runtime, in the opened workspace.
pub(crate) async fn in_workspace<T: Send + 'static>(
    dir: PathBuf,
    work: impl FnOnce(Workspace) -> Result<T, FileError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || match Workspace::open(&dir) {
        Ok(workspace) => work(workspace).map_err(file_error),
        // The session ended (and its workspace went) since it was looked up.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_workspace()),
        Err(e) => Err(ApiError::internal("cannot open the workspace", e)),
    })
    .await
    .map_err(|e| ApiError::internal("file task failed", e))?
}

pub(crate) fn file_error(e: FileError) -> ApiError {
    match e {
        FileError::NotFound(_) => ApiError::not_found(e.to_string()),
        FileError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => ApiError::new(
            axum::http::StatusCode::INSUFFICIENT_STORAGE,
            "the workspace is full (its quota, or the data dir's disk); delete files in it and try again",
        ),
        FileError::Io(e) => ApiError::internal("workspace I/O failed", e),
        e => ApiError::bad_request(e.to_string()),
    }
}

pub(crate) fn relative(raw: &str) -> Result<RelativePath, ApiError> {
    RelativePath::parse(raw).map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid path {raw:?}: give a path relative to the workspace, without '..'"
        ))
    })
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    /// Include tool folders such as `.cache`, `.venv` and `tmp` [default: true].
    include_hidden: Option<String>,
}

/// One regular file of the workspace.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileInfo {
    path: String,
    size: u64,
    modified_at: String,
}

/// `{"files": […], "source": …}`; `truncated` says the listing stopped at 10,000 files.
#[derive(Serialize, ToSchema)]
pub(crate) struct FileList {
    files: Vec<FileInfo>,
    source: Source,
    truncated: bool,
}

/// `GET /api/sessions/:id/files`: the workspace's regular files, without dependency folders
/// (`node_modules`, `.git`, `__pycache__`) or sockets, locks and pid files.
#[utoipa::path(get, path = "/api/sessions/{id}/files", tag = "sessions", params(("id" = String, Path, format = Uuid), ListQuery),
    responses((status = 200, body = FileList), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<FileList>, ApiError> {
    let include_hidden = match query.include_hidden.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeHidden must be true or false, not {other:?}"
            )))
        }
    };
    let (dir, source) = readable(&state, &id).await?;
    let (files, truncated) = listing(dir, include_hidden).await?;
    Ok(Json(FileList {
        files,
        source,
        truncated,
    }))
}

/// The folder's regular files (at most 10,000), and whether there were more.
pub(crate) async fn listing(
    dir: PathBuf,
    include_hidden: bool,
) -> Result<(Vec<FileInfo>, bool), ApiError> {
    let (found, truncated) =
        in_workspace(dir, move |w| Ok(w.list(include_hidden, MAX_LISTED)?)).await?;
    let files = found
        .into_iter()
        .map(|f| FileInfo {
            path: f.path,
            size: f.size,
            modified_at: chrono::DateTime::<chrono::Utc>::from(f.modified)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .collect();
    Ok((files, truncated))
}

#[derive(Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// `raw` (the bytes, the default) or `json` (UTF-8 text up to 1 MiB).
    pub(crate) format: Option<String>,
}

/// A text file's content.
#[derive(Serialize, ToSchema)]
pub(crate) struct FileContent {
    path: String,
    content: String,
    size: u64,
    source: Source,
}

/// `GET /api/sessions/:id/files/*path`: one file, as raw bytes (up to 100 MiB, streamed, with
/// `X-Ash-Source`) or as JSON text (up to 1 MiB).
#[utoipa::path(get, path = "/api/sessions/{id}/files/{path}", tag = "sessions",
    params(("id" = String, Path, format = Uuid), ("path" = String, Path, description = "Relative to the workspace"), ReadQuery),
    responses((status = 200, description = "The file: raw bytes, or `FileContent` with `format=json`", body = FileContent), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    UrlPath((id, path)): UrlPath<(String, String)>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let json = json_format(query.format.as_deref(), false)?;
    let path = relative(&path)?;
    let (dir, source) = readable(&state, &id).await?;
    if json {
        let (content, size) = text(dir, &path).await?;
        return Ok(Json(FileContent {
            path: path.as_path().display().to_string(),
            content,
            size,
            source,
        })
        .into_response());
    }
    let mut response = raw(dir, &path).await?;
    response
        .headers_mut()
        .insert("x-ash-source", HeaderValue::from_static(source.name()));
    Ok(response)
}

/// `format=raw` or `format=json` (the default named), for [`text`] and [`raw`].
pub(crate) fn json_format(format: Option<&str>, default_json: bool) -> Result<bool, ApiError> {
    match format {
        None => Ok(default_json),
        Some("raw") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "format must be raw or json, not {other:?}"
        ))),
    }
}

/// A file of the folder as UTF-8 text (at most 1 MiB), and its size.
pub(crate) async fn text(dir: PathBuf, path: &RelativePath) -> Result<(String, u64), ApiError> {
    let opened = path.clone();
    let (bytes, size) = in_workspace(dir, move |w| {
        let (file, size) = w.open_file(&opened, MAX_JSON_READ)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, size), &mut bytes)?;
        Ok((bytes, size))
    })
    .await?;
    let content = String::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request(format!(
            "{} is not UTF-8 text; read it with format=raw",
            path.as_path().display()
        ))
    })?;
    Ok((content, size))
}

/// A file of the folder as a download (at most 100 MiB, streamed), its type from its name.
pub(crate) async fn raw(dir: PathBuf, path: &RelativePath) -> Result<Response, ApiError> {
    let opened = path.clone();
    let (file, size) = in_workspace(dir, move |w| w.open_file(&opened, MAX_RAW_READ)).await?;
    let body = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), size);
    let name = path
        .as_path()
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace(|c: char| c == '"' || c.is_control(), "_")
        })
        .unwrap_or_default();
    let headers = [
        (header::CONTENT_TYPE, mime_type(&name).to_owned()),
        (header::CONTENT_LENGTH, size.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ),
    ];
    Ok((
        headers,
        Body::from_stream(tokio_util::io::ReaderStream::new(body)),
    )
        .into_response())
}

/// The content type for a file name's extension; `application/octet-stream` when unknown.
fn mime_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("md") => "text/markdown; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("yaml" | "yml") => "application/yaml",
        Some("toml") => "application/toml",
        Some("py" | "rs" | "ts" | "sh" | "go" | "java" | "c" | "h" | "rb") => {
            "text/plain; charset=utf-8"
        }
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("webp") => "image/webp",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/wav",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Files to write: each `path` (under `targetPath`) gets the base64-decoded `content`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadBody {
    #[schema(min_items = 1, max_items = 500)]
    files: Vec<UploadFile>,
    /// Folder, relative to the workspace, the paths are under [default: "."].
    target_path: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadFile {
    path: String,
    /// Base64; at most 50 MiB decoded.
    content: String,
}

/// How one file of an upload went.
#[derive(Serialize, ToSchema)]
pub(crate) struct UploadResult {
    path: String,
    written: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `{"files": […]}`, one result per file sent, in order.
#[derive(Serialize, ToSchema)]
pub(crate) struct UploadReply {
    files: Vec<UploadResult>,
}

/// `POST /api/sessions/:id/files`: writes files into the workspace, each whole (a reader
/// never sees half a file). One bad file does not stop the others: each gets its own result.
#[utoipa::path(post, path = "/api/sessions/{id}/files", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = UploadBody,
    responses((status = 200, body = UploadReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn upload(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<UploadBody>,
) -> Result<Json<UploadReply>, ApiError> {
    if body.files.is_empty() || body.files.len() > MAX_UPLOAD_FILES {
        return Err(ApiError::bad_request(format!(
            "files must hold 1 to {MAX_UPLOAD_FILES} entries"
        )));
    }
    let target = body.target_path.unwrap_or_else(|| ".".into());
    let (session, dir) = state.runtime.files_to_write(&id).await?;
    let results = in_workspace(dir, move |w| {
        let mut batch = 0usize;
        let results: Vec<UploadResult> = body
            .files
            .into_iter()
            .map(|file| {
                let outcome = write_one(&w, &target, &file, &mut batch);
                let (size, error) = match outcome {
                    Ok(size) => (Some(size), None),
                    Err(error) => (None, Some(error)),
                };
                UploadResult {
                    path: file.path,
                    written: error.is_none(),
                    size,
                    error,
                }
            })
            .collect();
        Ok(results)
    })
    .await?;
    if results.iter().any(|r| r.written) {
        state.runtime.files_written(session.id).await?;
    }
    Ok(Json(UploadReply { files: results }))
}

fn write_one(
    w: &Workspace,
    target: &str,
    file: &UploadFile,
    batch: &mut usize,
) -> Result<usize, String> {
    let path = RelativePath::parse(&format!("{target}/{}", file.path))
        .map_err(|_| "invalid path: give a path relative to the workspace, without '..'")?;
    if path.as_path().file_name() == Some(".DS_Store".as_ref()) {
        return Err("skipped: .DS_Store files are not written".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&file.content)
        .map_err(|e| format!("content is not valid base64: {e}"))?;
    if bytes.len() > MAX_UPLOAD_FILE {
        return Err(format!("larger than {MAX_UPLOAD_FILE} bytes"));
    }
    *batch += bytes.len();
    if *batch > MAX_UPLOAD_BATCH {
        return Err(format!(
            "the batch is past {MAX_UPLOAD_BATCH} bytes; send the rest in another request"
        ));
    }
    w.write(&path, &bytes, false).map_err(|e| e.to_string())?;
    Ok(bytes.len())
}

/// `{"path": …, "deleted": true}`
#[derive(Serialize, ToSchema)]
pub(crate) struct FileDeleted {
    path: String,
    deleted: bool,
}

/// `DELETE /api/sessions/:id/files/*path`: deletes a file (a symlink itself, never its target).
#[utoipa::path(delete, path = "/api/sessions/{id}/files/{path}", tag = "sessions",
    params(("id" = String, Path, format = Uuid), ("path" = String, Path, description = "Relative to the workspace")),
    responses((status = 200, body = FileDeleted), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> Result<Json<FileDeleted>, ApiError> {
    let path = relative(&path)?;
    let (session, dir) = state.runtime.files_to_write(&id).await?;
    let shown = path.as_path().display().to_string();
    in_workspace(dir, move |w| w.remove(&path)).await?;
    state.runtime.files_written(session.id).await?;
    Ok(Json(FileDeleted {
        path: shown,
        deleted: true,
    }))
}

/// `GET /api/sessions/:id/workspace`: the workspace as a tar.gz (at most 100 MiB of content),
/// without dependency folders and `.env` files; symlinks stay links.
#[utoipa::path(get, path = "/api/sessions/{id}/workspace", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, content_type = "application/gzip", body = Vec<u8>), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (dir, source) = readable(&state, &id).await?;
    let bundle = in_workspace(dir, |w| w.pack(MAX_BUNDLE_CONTENT)).await?;
    let name = format!("attachment; filename=\"workspace-{id}.tar.gz\"");
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        bundle,
    )
        .into_response();
    response
        .headers_mut()
        .insert("x-ash-source", HeaderValue::from_static(source.name()));
    Ok(response)
}

/// A workspace bundle to unpack.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RestoreBody {
    /// Base64-encoded tar.gz.
    bundle: String,
}

/// What became of the bundle.
#[derive(Serialize, ToSchema)]
pub(crate) struct RestoreReply {
    message: &'static str,
    /// Files written.
    files: usize,
}

/// `POST /api/sessions/:id/workspace`: unpacks a tar.gz over the workspace. The whole bundle
/// is checked first: entries with `..`, absolute paths, links out of the workspace, hard
/// links or devices are refused and nothing is written. Without a running sandbox the result
/// is saved as the session's snapshot before the answer.
#[utoipa::path(post, path = "/api/sessions/{id}/workspace", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = RestoreBody,
    responses((status = 200, body = RestoreReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn restore(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<RestoreBody>,
) -> Result<Json<RestoreReply>, ApiError> {
    if body.bundle.is_empty() {
        return Err(ApiError::bad_request("bundle is empty"));
    }
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(body.bundle.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("bundle is not valid base64: {e}")))?;
    let (session, dir) = state.runtime.files_to_write(&id).await?;
    let files = in_workspace(dir, move |w| w.unpack(&bundle, MAX_UNPACKED)).await?;
    let message = match state.runtime.files_written(session.id).await? {
        true => "Workspace restored to live sandbox",
        false => "Workspace saved as snapshot",
    };
    tracing::info!(session = %session.id, files, "workspace bundle unpacked");
    Ok(Json(RestoreReply { message, files }))
}
