use std::sync::Arc;

use ash_core::{ResumePath, SessionStatus};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus::Encoder;
use serde::Serialize;
use utoipa::ToSchema;

use ash_store::Database;

use crate::coordinator::RunnerReply;
use crate::error::Json;
use crate::{ApiError, AppState, StorageConfig};

/// `GET /health`: public liveness and pool summary, in the reference API's shape.
#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, body = Health), (status = 503, body = Health, description = "The server is stopping (`status: draining`): send new work elsewhere")))]
pub(crate) async fn health(
    State(state): State<Arc<AppState>>,
) -> Result<(StatusCode, Json<Health>), ApiError> {
    let snapshot = refresh(&state).await?;
    let (code, status) = match state.runtime.draining() {
        true => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        false => (StatusCode::OK, "ok"),
    };
    Ok((
        code,
        Json(Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            coordinator_id: coordinator_id(),
            active_sessions: snapshot.active_sessions,
            active_sandboxes: snapshot.live,
            remote_runners: snapshot
                .runners
                .iter()
                .filter(|r| r.taking_sessions())
                .count() as i64,
            uptime: state.runtime.metrics.started.elapsed().as_secs(),
            storage: match &state.config.storage {
                StorageConfig::Database(Database::Sqlite(_)) => "sqlite",
                StorageConfig::Database(Database::Postgres(_)) => "postgres",
                StorageConfig::Plugin(_) => "plugin",
            },
            disk: snapshot.disk.map(|space| DiskHealth {
                free_bytes: space.free,
                total_bytes: space.total,
                low: space.low(),
            }),
            runners: snapshot.runners,
            plugins: snapshot
                .plugins
                .into_iter()
                .map(|s| PluginHealth {
                    id: s.id,
                    version: s.version,
                    kind: s.kind.name().to_owned(),
                    calls: s.calls,
                    failures: s.failures,
                    dropped: s.dropped,
                    quarantined: s.quarantined,
                    last_error: s.last_error,
                })
                .collect(),
            pool: PoolStats {
                total: snapshot.live + snapshot.cold,
                cold: snapshot.cold,
                warming: snapshot.warming,
                warm: snapshot.warm,
                waiting: snapshot.waiting,
                running: snapshot.running,
                max_capacity: state.runtime.config.max_sandboxes,
                pre_warm_hits: state.runtime.metrics.prewarm_hits.get(),
                resume_warm_hits: state
                    .runtime
                    .metrics
                    .resumes
                    .with_label_values(&[ResumePath::Warm.as_str()])
                    .get(),
                resume_cold_hits: state
                    .runtime
                    .metrics
                    .resumes
                    .with_label_values(&[ResumePath::Cold.as_str()])
                    .get(),
            },
        }),
    ))
}

/// The server's state, in the reference API's `HealthResponse` shape.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Health {
    /// `ok`, or `draining` while the server stops.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    #[schema(value_type = String)]
    version: &'static str,
    /// `<hostname>-<pid>`
    coordinator_id: String,
    active_sessions: i64,
    active_sandboxes: i64,
    remote_runners: i64,
    /// Seconds since start.
    uptime: u64,
    pool: PoolStats,
    /// Where records are kept: `sqlite`, `postgres` or `plugin` (a storage plugin, listed in
    /// `plugins`); an addition to the reference shape.
    #[schema(value_type = String, example = "sqlite")]
    storage: &'static str,
    /// The data dir's filesystem (an addition to the reference shape); `null` when it cannot
    /// be read.
    disk: Option<DiskHealth>,
    /// The loaded plugins (an addition to the reference shape).
    plugins: Vec<PluginHealth>,
    /// On a coordinator, the cluster's runners (an addition to the reference shape; as
    /// `GET /api/runners`); empty elsewhere.
    runners: Vec<RunnerReply>,
}

/// Room left on the data dir's filesystem. `low`: less than a tenth is free; once it is full,
/// writes get 507 until space returns.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DiskHealth {
    free_bytes: u64,
    total_bytes: u64,
    low: bool,
}

/// One plugin's state: a quarantined plugin is no longer called; `lastError` says why.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PluginHealth {
    id: String,
    version: String,
    kind: String,
    calls: u64,
    failures: u64,
    /// Events an observer never saw (its queue was full, it failed or is quarantined).
    dropped: u64,
    quarantined: bool,
    last_error: Option<String>,
}

/// Sandboxes of this node by state (the reference API's `PoolStats`). `cold`: sessions not
/// ended whose sandbox is stopped (their workspace is kept; the next message or resume starts
/// one); `warming`/`warm`: pre-warmed sandboxes starting / ready; `waiting`: session
/// sandboxes between turns; `running`: in a turn. `total` is all of them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PoolStats {
    total: i64,
    cold: i64,
    warming: i64,
    warm: i64,
    waiting: i64,
    running: i64,
    max_capacity: usize,
    resume_warm_hits: u64,
    resume_cold_hits: u64,
    pre_warm_hits: u64,
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = crate::openapi::ErrorBody)))]
pub(crate) async fn metrics(
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, ApiError> {
    refresh(&state).await?;
    let mut body = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&state.runtime.metrics.registry.gather(), &mut body)
        .map_err(|e| ApiError::internal("metrics encoding failed", e))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body))
}

struct Snapshot {
    active_sessions: i64,
    live: i64,
    cold: i64,
    warming: i64,
    warm: i64,
    waiting: i64,
    running: i64,
    plugins: Vec<ash_plugin_host::PluginStatus>,
    disk: Option<ash_sandbox::doctor::Space>,
    runners: Vec<RunnerReply>,
}

/// The data dir's free space; a warning in the log each time it gets low.
fn disk_space(state: &AppState) -> Option<ash_sandbox::doctor::Space> {
    use std::sync::atomic::Ordering;
    let space = ash_sandbox::doctor::Space::of(&state.runtime.config.data_dir).ok()?;
    state.runtime.metrics.data_dir_free.set(space.free as i64);
    let was_low = state.disk_low.swap(space.low(), Ordering::Relaxed);
    if space.low() && !was_low {
        tracing::warn!(
            free_mib = space.free >> 20,
            total_mib = space.total >> 20,
            "the data dir's disk has less than a tenth left; once it is full, writes get 507"
        );
    }
    Some(space)
}

async fn refresh(state: &AppState) -> Result<Snapshot, ApiError> {
    let counts = state.store.count_unended_sessions().await?;
    let count = |wanted: &dyn Fn(SessionStatus) -> bool| -> i64 {
        counts
            .iter()
            .filter(|(s, _)| wanted(*s))
            .map(|(_, n)| n)
            .sum()
    };
    let active_sessions = count(&|s| s == SessionStatus::Active);
    let unended = count(&|s| s != SessionStatus::Ended);
    let (live, running, warm, warming) = state.runtime.counts();
    let [live, running, warm, warming] = [live, running, warm, warming].map(|n| n as i64);
    let of_sessions = live - warm - warming;
    let s = Snapshot {
        active_sessions,
        live,
        cold: (unended - of_sessions).max(0),
        warming,
        warm,
        waiting: (of_sessions - running).max(0),
        running,
        plugins: state
            .runtime
            .plugins
            .status()
            .into_iter()
            .chain(state.storage_plugin.as_ref().map(|p| p.status()))
            .collect(),
        disk: disk_space(state),
        runners: crate::coordinator::runner_list(state).await?,
    };
    let m = &state.runtime.metrics;
    for gauge in [
        &m.runner_capacity,
        &m.runner_sandboxes,
        &m.runner_heartbeat_age,
    ] {
        gauge.reset();
    }
    for runner in &s.runners {
        let labels = [runner.id.as_str(), runner.state.as_str()];
        m.runner_capacity
            .with_label_values(&labels)
            .set(runner.capacity as i64);
        m.runner_sandboxes
            .with_label_values(&labels)
            .set(runner.sandboxes as i64);
        m.runner_heartbeat_age
            .with_label_values(&labels)
            .set(runner.heartbeat_age_ms as i64);
    }
    m.uptime.set(m.started.elapsed().as_secs() as i64);
    for plugin in &s.plugins {
        let id = [plugin.id.as_str()];
        m.plugin_calls
            .with_label_values(&id)
            .set(plugin.calls as i64);
        m.plugin_failures
            .with_label_values(&id)
            .set(plugin.failures as i64);
        m.plugin_quarantined
            .with_label_values(&id)
            .set(i64::from(plugin.quarantined));
        m.plugin_dropped
            .with_label_values(&id)
            .set(plugin.dropped as i64);
    }
    m.active_sessions.set(active_sessions);
    m.active_sandboxes.set(live);
    for (name, value) in [
        ("cold", s.cold),
        ("warming", s.warming),
        ("warm", s.warm),
        ("waiting", s.waiting),
        ("running", s.running),
    ] {
        m.pool.with_label_values(&[name]).set(value);
    }
    Ok(s)
}

/// `<hostname>-<pid>`, read once: `/health` is polled often and must not touch the disk.
fn coordinator_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
    .clone()
}
