//! The session routes: create, list, show and end sessions, send a message (its turn streams
//! back as SSE), follow a session's log, page through its messages and events, interrupt.
//! Every decision about a session is the runtime's; this module reads requests and writes
//! replies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use ash_core::{AgentName, SessionConfig};
use ash_protocol::QueryOptions;
use ash_runtime::{Frame, FrameStream, NewSession, MAX_CONTENT_BLOCKS, MAX_CONTENT_CHARS};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures_util::stream::{Map, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::error::{Json, Query};
use crate::openapi::{EventList, Interrupted, MessageList, SessionList, SessionReply};
use crate::{ApiError, AppState};

/// Cap for a message body (content blocks may carry base64 images and documents).
const MESSAGE_BODY_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, end))
        .routes(routes!(configure))
        .routes(routes!(logs))
        .routes(routes!(send).layer(DefaultBodyLimit::max(MESSAGE_BODY_LIMIT)))
        .routes(routes!(messages))
        .routes(routes!(events))
        .routes(routes!(stream))
        .routes(routes!(interrupt))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSessionBody {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,255}$")]
    agent: String,
    /// A stored credential whose key the session's sandboxes get (see `/api/credentials`).
    #[schema(max_length = 255)]
    credential_id: Option<String>,
    #[serde(default)]
    extra_env: BTreeMap<String, String>,
    system_prompt: Option<String>,
    /// The backend options of all its turns (`model`, `allowedTools`, …).
    #[serde(flatten)]
    config: SessionConfig,
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions", request_body = CreateSessionBody,
    responses((status = 201, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateSessionBody>,
) -> Result<(StatusCode, Json<SessionReply>), ApiError> {
    let new = NewSession {
        agent: body.agent,
        credential_id: body.credential_id,
        extra_env: body.extra_env,
        system_prompt: body.system_prompt,
        config: body.config,
    };
    let session = state.runtime.create(new).await?;
    Ok((StatusCode::CREATED, Json(SessionReply { session })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only sessions of this agent.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,255}$")]
    agent: Option<String>,
}

#[utoipa::path(get, path = "/api/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = SessionList), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let agent = query.agent.map(AgentName::try_from).transpose()?;
    let sessions = state.store.list_sessions(agent.as_ref()).await?;
    Ok(Json(SessionList { sessions }))
}

/// A checked page cursor: `limit` 1–1000 (default `default_limit`), `after` ≥ 0 (default 0).
fn page(
    limit: Option<i64>,
    after: Option<i64>,
    default_limit: i64,
) -> Result<(i64, i64), ApiError> {
    let (limit, after) = (limit.unwrap_or(default_limit), after.unwrap_or(0));
    if !(1..=1000).contains(&limit) || after < 0 {
        return Err(ApiError::bad_request(
            "limit must be 1-1000 and after at least 0",
        ));
    }
    Ok((limit, after))
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    Ok(Json(SessionReply {
        session: state.runtime.session(&id).await?,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// Lines after this index [default: -1, all kept].
    #[param(minimum = -1)]
    after: Option<i64>,
}

/// The sandbox's log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LogsReply {
    logs: Vec<ash_core::LogLine>,
    /// Always `sandbox`.
    source: &'static str,
}

/// The last lines the session's sandbox printed (its bridge's and its agent program's stderr,
/// and the host's `system` lines), at most 1,000 lines or 256 KiB; empty while it has no
/// sandbox.
#[utoipa::path(get, path = "/api/sessions/{id}/logs", tag = "sessions", params(("id" = String, Path, format = Uuid), LogsQuery),
    responses((status = 200, body = LogsReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn logs(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<LogsReply>, ApiError> {
    let after = query.after.unwrap_or(-1);
    if after < -1 {
        return Err(ApiError::bad_request("after must be -1 or more"));
    }
    Ok(Json(LogsReply {
        logs: state.runtime.logs(&id, after).await?,
        source: "sandbox",
    }))
}

/// Patches the backend options of the session's next turns; each value given replaces its
/// own, the rest stay. Any status.
#[utoipa::path(patch, path = "/api/sessions/{id}/config", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = SessionConfig,
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody)))]
pub(crate) async fn configure(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(patch): Json<SessionConfig>,
) -> Result<Json<SessionReply>, ApiError> {
    Ok(Json(SessionReply {
        session: state.runtime.configure(&id, patch).await?,
    }))
}

#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn end(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = state.runtime.end(&id).await?;
    Ok(Json(SessionReply { session }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MessagesQuery {
    /// At most this many messages [default: 100].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only messages with a higher sequence [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
}

#[utoipa::path(get, path = "/api/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, format = Uuid), MessagesQuery),
    responses((status = 200, body = MessageList), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<MessagesQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let session = state.runtime.session(&id).await?;
    let (limit, after) = page(query.limit, query.after, 100)?;
    let messages = state.store.list_messages(session.id, after, limit).await?;
    Ok(Json(MessageList { messages }))
}

/// `content` is a string (at most 500,000 characters) or 1-20 content blocks of type `text`,
/// `image` or `document`. `includePartialMessages: true` asks for `text_delta` frames; every
/// other field (`model`, `maxTurns`, `maxBudgetUsd`, `effort`, `thinking`, `outputFormat`, …)
/// goes to the backend with the turn.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SendBody {
    #[schema(schema_with = content_schema)]
    content: Value,
    #[serde(flatten)]
    #[schema(ignore)]
    options: QueryOptions,
}

#[utoipa::path(post, path = "/api/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = SendBody,
    responses((status = 200, content_type = "text/event-stream", description = "SSE frames: session_start, granular events, message, error, done; each with id: = its log sequence and one line of JSON data"), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn send(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<SendBody>,
) -> Result<Sse<KeepAliveStream<Frames>>, ApiError> {
    let frames = state.runtime.send(&id, body.content, body.options).await?;
    Ok(sse(frames))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// At most this many events [default: 200].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only events with a higher sequence [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only events of this type (an SSE event name).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
}

/// `GET /api/sessions/:id/events`: the log as paged JSON.
#[utoipa::path(get, path = "/api/sessions/{id}/events", tag = "sessions", params(("id" = String, Path, format = Uuid), EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let session = state.runtime.session(&id).await?;
    let (limit, after) = page(query.limit, query.after, 200)?;
    let events = state
        .store
        .list_events(session.id, after, limit, query.kind.as_deref())
        .await?;
    Ok(Json(EventList { events }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Replay after this sequence when there is no `Last-Event-ID` [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// `GET /api/sessions/:id/stream`: the log after `Last-Event-ID` (or `?after=`, else from the
/// start) as SSE, then live frames as they are logged, until the client leaves.
#[utoipa::path(get, path = "/api/sessions/{id}/stream", tag = "sessions",
    params(("id" = String, Path, format = Uuid), StreamQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this sequence")),
    responses((status = 200, content_type = "text/event-stream", description = "SSE frames: session_start, granular events, message, error, done; each with id: = its log sequence and one line of JSON data"), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<KeepAliveStream<Frames>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event sequence number")
                })?,
        ),
        None => None,
    };
    let after = last_event_id.or(query.after).unwrap_or(0);
    Ok(sse(state.runtime.stream(&id, after).await?))
}

/// `POST /api/sessions/:id/interrupt`: stops the running turn, which ends with `error` + `done`.
#[utoipa::path(post, path = "/api/sessions/{id}/interrupt", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Interrupted), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 504, description = "the agent did not confirm the interrupt within 5 s", body = crate::openapi::ErrorBody)))]
pub(crate) async fn interrupt(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Interrupted>, ApiError> {
    let interrupted = state.runtime.interrupt(&id).await?;
    Ok(Json(Interrupted { interrupted }))
}

/// The schema `validate_content` enforces, for the OpenAPI document.
fn content_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_CONTENT_CHARS));
    let kind = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["text", "image", "document"]));
    let block = ObjectBuilder::new().property("type", kind).required("type");
    let blocks = ArrayBuilder::new()
        .items(block)
        .min_items(Some(1))
        .max_items(Some(MAX_CONTENT_BLOCKS));
    OneOfBuilder::new().item(text).item(blocks).into()
}

/// A follower's frames as SSE: a logged frame's id is its log sequence; the others have none.
type Frames = Map<FrameStream, fn(Frame) -> Result<Event, Infallible>>;

fn sse(frames: FrameStream) -> Sse<KeepAliveStream<Frames>> {
    let encode: fn(Frame) -> Result<Event, Infallible> = |frame| {
        Ok(match frame {
            Frame::Logged(event) => Event::default()
                .id(event.sequence.to_string())
                .event(&event.kind)
                .data(event.data.as_deref().unwrap_or("null")),
            Frame::Unlogged { kind, data, retry } => {
                let event = Event::default().event(kind).data(data);
                match retry {
                    Some(retry) => event.retry(retry),
                    None => event,
                }
            }
        })
    };
    Sse::new(frames.map(encode)).keep_alive(KeepAlive::default())
}
