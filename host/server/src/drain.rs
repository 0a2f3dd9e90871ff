//! The edge's part of a bounded stop (the steps are `ash_runtime`'s): while the runtime
//! drains, requests that would start work get 503; once its followers are gone, the
//! listener's last connections get [`LAST_WAIT`] to finish.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

/// How long open connections may take to finish once the followers are gone, before the
/// server exits regardless.
const LAST_WAIT: Duration = Duration::from_secs(5);

/// Waits for the listener's connections to finish, for [`LAST_WAIT`] at most.
pub(crate) async fn last_wait(serving: tokio::task::JoinHandle<std::io::Result<()>>) {
    match tokio::time::timeout(LAST_WAIT, serving).await {
        Ok(Ok(Err(e))) => tracing::warn!("the listener failed while stopping: {e}"),
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("stopping: connections still open after {LAST_WAIT:?}; closing them")
        }
    }
}

/// While the server drains, refuses what would start work: anything but reads and interrupts.
pub(crate) async fn refuse_new_work(
    State(state): State<std::sync::Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if state.runtime.draining() && !reads && !request.uri().path().ends_with("/interrupt") {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down and takes no new work; send this to another server, or again once it is back",
        )
        .into_response();
    }
    next.run(request).await
}
