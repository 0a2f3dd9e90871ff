use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered as `{"error": "...", "statusCode": N}`, the reference API's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A server-side failure: logged in full, answered without internals.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context}; see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "statusCode": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ash_core::CoreError> for ApiError {
    fn from(e: ash_core::CoreError) -> Self {
        match e {
            ash_core::CoreError::SessionEnded => Self::new(StatusCode::GONE, e.to_string()),
            e => Self::bad_request(e.to_string()),
        }
    }
}

impl From<ash_store::StoreError> for ApiError {
    /// A store out of reach is a 503 the client may retry (the server reconnects by itself);
    /// anything else is a 500.
    fn from(e: ash_store::StoreError) -> Self {
        if let ash_store::StoreError::Refused(e) = e {
            return e.into();
        }
        if e.is_full() {
            tracing::warn!("{e}");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the store's disk is full, so nothing was written; free space where the \
                 database keeps its files (writes work again by themselves)",
            );
        }
        if e.is_unavailable() {
            tracing::warn!("storage is unavailable: {e}");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable right now; try again shortly",
            );
        }
        Self::internal("storage failed", e)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return Self::data_dir_full(e);
        }
        Self::internal("file operation failed", e)
    }
}

impl ApiError {
    /// The data dir's disk (or a workspace's quota) is full.
    pub fn data_dir_full(e: impl std::fmt::Display) -> Self {
        tracing::warn!("out of space: {e}");
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "the data dir's disk is full, so nothing was written; free space there and try again",
        )
    }

    /// A sandbox that could not be made or changed: 507 when the disk is full, else a 500.
    pub fn sandbox(context: &str, e: ash_sandbox::SandboxError) -> Self {
        match e {
            ash_sandbox::SandboxError::DiskFull(_) => Self::data_dir_full(e),
            e => Self::internal(context, e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "request body is too large for this endpoint".to_owned()
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "send the body as JSON with Content-Type: application/json".to_owned()
            }
            _ => format!("invalid JSON body: {}", rejection.body_text()),
        };
        Self::new(status, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query string: {}", rejection.body_text()))
    }
}

/// `axum::Json` whose rejections use [`ApiError`]'s body.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// `axum::extract::Query` whose rejections use [`ApiError`]'s body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
