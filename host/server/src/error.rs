use ash_runtime::{RuntimeError, StoreFault};
use ash_sandbox::SandboxError;
use ash_store::StoreError;
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

impl From<StoreError> for ApiError {
    /// A store out of reach is a 503 the client may retry (the server reconnects by itself),
    /// a full one a 507; anything else is a 500.
    fn from(e: StoreError) -> Self {
        if let StoreError::Refused(e) = e {
            return e.into();
        }
        let fault = StoreFault::of(&e);
        match fault {
            StoreFault::Failed => return Self::internal("storage failed", e),
            StoreFault::Full => tracing::warn!("{e}"),
            StoreFault::Unavailable => tracing::warn!("storage is unavailable: {e}"),
        }
        fault.into()
    }
}

impl From<StoreFault> for ApiError {
    fn from(fault: StoreFault) -> Self {
        let status = match fault {
            StoreFault::Full => StatusCode::INSUFFICIENT_STORAGE,
            StoreFault::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            StoreFault::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, fault.to_string())
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
}

/// The one place a runtime refusal or failure becomes a status code.
impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let status = match e {
            RuntimeError::Core(e) => return e.into(),
            RuntimeError::Store(e) => return e.into(),
            RuntimeError::Unclosed(fault) => return fault.into(),
            RuntimeError::Io(e) => return e.into(),
            RuntimeError::Sandbox {
                source: SandboxError::DiskFull(_),
                ..
            } => return Self::data_dir_full(e),
            RuntimeError::Sandbox { context, source } => return Self::internal(context, source),
            RuntimeError::Internal { context, detail } => return Self::internal(context, detail),
            RuntimeError::Invalid(_) => StatusCode::BAD_REQUEST,
            RuntimeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RuntimeError::NotFound(_) => StatusCode::NOT_FOUND,
            RuntimeError::Forbidden(_) => StatusCode::FORBIDDEN,
            RuntimeError::Busy | RuntimeError::Conflict(_) => StatusCode::CONFLICT,
            RuntimeError::Gone(_) => StatusCode::GONE,
            RuntimeError::AgentUnusable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RuntimeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RuntimeError::Unanswered(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        Self::new(status, e.to_string())
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

/// `axum::Json` whose rejections use [`ApiError`]'s body, and which takes only a JSON
/// object: serde reads a struct from an array too (`[null, null]` would pass as `{}`), so any
/// other body is refused before it is parsed. Every request body of the API is an object.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body is too large for this endpoint",
                ),
                status => ApiError::new(status, rejection.body_text()),
            })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid JSON body: it must be a JSON object",
            ));
        }
        let axum::Json(value) = axum::Json::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

/// `application/json`, or a `+json` type.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `axum::extract::Query` whose rejections use [`ApiError`]'s body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
