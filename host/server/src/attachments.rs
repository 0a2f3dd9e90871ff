//! The attachment routes: send a file with a session (it is kept, and placed in the
//! workspace's `attachments/`), list a session's, download one, delete one — the reference
//! API's routes and shapes.

use std::sync::Arc;

use ash_core::Attachment;
use ash_runtime::NewAttachment;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::Json;
use crate::{ApiError, AppState};

/// Room for a 10 MiB attachment in base64, and the rest of the body.
const ATTACHMENT_BODY_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list).layer(DefaultBodyLimit::max(ATTACHMENT_BODY_LIMIT)))
        .routes(routes!(download, remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachBody {
    /// One path segment: no `/`, `\`, control characters, `.` or `..`.
    #[schema(min_length = 1, max_length = 255)]
    filename: String,
    /// Base64; at most 10 MiB decoded.
    content: String,
    /// `application/octet-stream` when left out.
    mime_type: Option<String>,
    #[schema(format = Uuid)]
    message_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AttachmentReply {
    attachment: Attachment,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AttachmentList {
    attachments: Vec<Attachment>,
}

#[utoipa::path(post, path = "/api/sessions/{id}/attachments", tag = "attachments", params(("id" = String, Path, format = Uuid)), request_body = AttachBody,
    responses((status = 201, body = AttachmentReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 413, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<AttachBody>,
) -> Result<(StatusCode, Json<AttachmentReply>), ApiError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.content.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("content is not valid base64: {e}")))?;
    let new = NewAttachment {
        filename: body.filename,
        mime_type: body.mime_type,
        message_id: body.message_id,
        bytes,
    };
    let attachment = state.runtime.attach(&id, new).await?;
    Ok((StatusCode::CREATED, Json(AttachmentReply { attachment })))
}

#[utoipa::path(get, path = "/api/sessions/{id}/attachments", tag = "attachments", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = AttachmentList), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<AttachmentList>, ApiError> {
    Ok(Json(AttachmentList {
        attachments: state.runtime.attachments(&id).await?,
    }))
}

/// The attachment's bytes, with the media type it was sent with.
#[utoipa::path(get, path = "/api/attachments/{id}", tag = "attachments", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The attachment's bytes"), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (attachment, bytes) = state.runtime.attachment(&id).await?;
    let headers = [
        (header::CONTENT_TYPE, attachment.mime_type.clone()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        (
            header::CONTENT_DISPOSITION,
            disposition(&attachment.filename),
        ),
    ];
    Ok((headers, bytes).into_response())
}

#[utoipa::path(delete, path = "/api/attachments/{id}", tag = "attachments", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    state.runtime.detach(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266 with RFC 5987): a plain ASCII
/// name for old clients, the exact one percent-encoded.
fn disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_disposition_names_the_file_plainly_and_exactly() {
        assert_eq!(
            super::disposition("résumé \"final\".pdf"),
            "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
        );
    }
}
