use std::sync::Arc;

use ash_core::SessionStatus;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::Encoder;
use serde_json::{json, Value};

use crate::error::Json;
use crate::{ApiError, AppState};

/// `GET /health`: public liveness and pool summary, in the reference API's shape.
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let snapshot = refresh(&state).await?;
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "coordinatorId": coordinator_id(),
        "activeSessions": snapshot.active_sessions,
        "activeSandboxes": snapshot.live,
        "remoteRunners": 0,
        "uptime": state.metrics.started.elapsed().as_secs(),
        "pool": {
            "total": snapshot.live, "cold": 0, "warming": 0, "warm": 0,
            "waiting": snapshot.live - snapshot.running, "running": snapshot.running,
            "maxCapacity": state.config.max_sandboxes,
            "resumeWarmHits": 0, "resumeColdHits": 0, "preWarmHits": 0,
        },
    })))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, ApiError> {
    refresh(&state).await?;
    let mut body = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&state.metrics.registry.gather(), &mut body)
        .map_err(|e| ApiError::internal("metrics encoding failed", e))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body))
}

struct Snapshot {
    active_sessions: i64,
    live: i64,
    running: i64,
}

async fn refresh(state: &AppState) -> Result<Snapshot, ApiError> {
    let active_sessions = state.store.count_sessions(SessionStatus::Active).await?;
    let (live, running) = state.sessions.counts();
    let (live, running) = (live as i64, running as i64);
    let m = &state.metrics;
    m.uptime.set(m.started.elapsed().as_secs() as i64);
    m.active_sessions.set(active_sessions);
    m.active_sandboxes.set(live);
    m.pool.with_label_values(&["running"]).set(running);
    m.pool.with_label_values(&["waiting"]).set(live - running);
    Ok(Snapshot {
        active_sessions,
        live,
        running,
    })
}

fn coordinator_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
