//! Usage (`/api/usage`), as in the reference API: the events each turn recorded (tokens and
//! tool calls its backend reported, one message, its seconds) and their totals, filtered by
//! session, agent and time.

use std::sync::Arc;

use ash_core::{AgentName, SessionId, UsageEvent};
use ash_store::UsageFilter;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Json, Query};
use crate::{ApiError, AppState};

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stats))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageQuery {
    #[param(format = Uuid)]
    session_id: Option<String>,
    agent_name: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    after: Option<String>,
    /// Events before this time (RFC 3339).
    #[param(format = DateTime)]
    before: Option<String>,
    /// 1–1000 [default: 100]; the totals check it and count every event.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl UsageQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.unwrap_or(100) {
            limit @ 1..=1000 => Ok(limit as usize),
            _ => Err(ApiError::bad_request("limit must be 1-1000")),
        }
    }

    fn filter(&self) -> Result<UsageFilter, ApiError> {
        let time = |name: &str, raw: &Option<String>| -> Result<Option<String>, ApiError> {
            raw.as_deref()
                .map(|raw| {
                    let at = chrono::DateTime::parse_from_rfc3339(raw).map_err(|_| {
                        ApiError::bad_request(format!(
                            "{name} must be an RFC 3339 time, such as 2026-01-31T12:00:00Z"
                        ))
                    })?;
                    Ok(at
                        .with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                })
                .transpose()
        };
        Ok(UsageFilter {
            session: self
                .session_id
                .as_deref()
                .map(SessionId::parse)
                .transpose()?,
            agent: self
                .agent_name
                .clone()
                .map(AgentName::try_from)
                .transpose()?,
            after: time("after", &self.after)?,
            before: time("before", &self.before)?,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct UsageList {
    events: Vec<UsageEvent>,
}

/// The totals of the events a query covers.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageStats {
    total_input_tokens: u64,
    total_output_tokens: u64,
    total_cache_creation_tokens: u64,
    total_cache_read_tokens: u64,
    total_tool_calls: u64,
    total_messages: u64,
    total_compute_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct UsageStatsReply {
    stats: UsageStats,
}

/// Usage events, newest first.
#[utoipa::path(get, path = "/api/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageList), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageList>, ApiError> {
    let limit = query.limit()?;
    let events = state.store.list_usage(&query.filter()?, limit).await?;
    Ok(Json(UsageList { events }))
}

/// The totals over the same filters (`limit` aside).
#[utoipa::path(get, path = "/api/usage/stats", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageStatsReply), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn stats(
    State(state): State<Arc<AppState>>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageStatsReply>, ApiError> {
    query.limit()?;
    let total = state.store.usage_stats(&query.filter()?).await?;
    Ok(Json(UsageStatsReply {
        stats: UsageStats {
            total_input_tokens: total.input_tokens,
            total_output_tokens: total.output_tokens,
            total_cache_creation_tokens: total.cache_creation_tokens,
            total_cache_read_tokens: total.cache_read_tokens,
            total_tool_calls: total.tool_calls,
            total_messages: total.messages,
            total_compute_seconds: total.compute_seconds,
        },
    }))
}
