//! The event log and its streams.
//!
//! Every frame a client sees is first appended to the session's log (gap-free sequence
//! numbers, kept across restarts), then published on the session's hub. A stream is a view
//! of the log: it replays what the client missed from storage, then follows the hub, skipping
//! what it already sent, so it never shows a gap or a duplicate; a follower that falls behind
//! the hub goes back to reading the log. The turn never waits for a client: each follower has
//! a bounded buffer, and a client that does not take a frame within [`SLOW_CLIENT_TIMEOUT`] is
//! cut; it can reconnect with `Last-Event-ID` and replay. A client that goes away stops nothing.
//!
//! A turn is logged as `session_start`, the granular events and raw `message` of each agent
//! message, and always ends with `done` (after an `error` when it failed). If the bridge dies
//! mid-turn the turn ends with `error` + `done` at once; if the server dies, the next start
//! closes the turn the same way. If the store fails a batch (it is out of reach), followers end
//! at once with the error, the agent's turn is interrupted, and the turn's `error` + `done` are
//! logged once the store is back (or, after [`OUTAGE_PATIENCE`], left to the next start), under
//! the session's order lock: no later turn's frames come before them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ash_core::{HookPoint, LimitKind, Role, SessionEvent, SessionId, TurnOutcome};
use ash_protocol::Event;
use ash_sandbox::{Sandbox, Turn};
use ash_store::TurnMark;
use axum::http::StatusCode;
use axum::response::sse;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::hooks;
use crate::sessions::TurnGuard;
use crate::{ApiError, AppState};

/// Frames a follower may trail the newest by before it goes back to reading the log.
const HUB_CAPACITY: usize = 1024;
/// Frames buffered for one client.
const CLIENT_BUFFER: usize = 256;
/// How long a client may leave its buffer full before it is cut.
const SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events stored in one transaction, at most.
const BATCH: usize = 256;
/// Bytes of events gathered into one transaction before it is stored: what one turn holds
/// in memory at a time, whatever its agent sends.
const BATCH_BYTES: usize = 4 << 20;
/// The error that ends a turn the store failed, once the store takes it.
const STORE_LOST: &str = "storage was unavailable during this turn (out of reach, or its disk full), so the rest of it was lost; send the message again";
/// How long a turn the store failed keeps trying to log its closing frames.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(600);
/// The longest wait between two of those tries.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

/// What a session's hub carries to its followers.
#[derive(Clone, Debug)]
pub(crate) enum Published {
    /// A frame that is in the log.
    Logged(Arc<SessionEvent>),
    /// The turn failed in a way the log could not record (storage down): followers end.
    Broken(String),
}

/// A session's live feed of its log, and the lock that keeps its appends in order: whatever
/// is appended under the lock is broadcast in the same order.
#[derive(Clone)]
pub(crate) struct Hub {
    feed: broadcast::Sender<Published>,
    order: Arc<tokio::sync::Mutex<()>>,
    /// Set while a turn the store failed waits to log its end (holding the order lock): the
    /// store's last answer, which every new append gets at once instead of waiting.
    unclosed: Arc<watch::Sender<Option<(StatusCode, String)>>>,
    /// A turn the store failed whose end could not be logged at all: the session's next
    /// turn logs it first.
    owed_end: Arc<std::sync::atomic::AtomicBool>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            feed: broadcast::channel(HUB_CAPACITY).0,
            order: Arc::default(),
            unclosed: Arc::new(watch::channel(None).0),
            owed_end: Arc::default(),
        }
    }

    /// The frames a new turn logs before its own: the end of an earlier turn the store failed,
    /// if that is still owed. [`Self::paid`] once they are stored.
    pub(crate) fn owed(&self, session: SessionId) -> Vec<(String, String)> {
        match self.owed_end.load(std::sync::atomic::Ordering::Acquire) {
            true => closing(session, Some(STORE_LOST)),
            false => Vec::new(),
        }
    }

    pub(crate) fn paid(&self) {
        self.owed_end
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The store's last error while a turn it failed has no end in the log yet: the answer to
    /// anything that would log in this session meanwhile.
    pub(crate) fn refusal(&self) -> Result<(), ApiError> {
        refused(&self.unclosed.borrow())
    }

    /// The order lock, or the store's error while a failed turn's end is not logged yet.
    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let mut unclosed = self.unclosed.subscribe();
        loop {
            refused(&unclosed.borrow_and_update())?;
            tokio::select! {
                order = self.order.lock() => return Ok(order),
                _ = unclosed.changed() => {}
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.feed.subscribe()
    }
}
fn refused(unclosed: &Option<(StatusCode, String)>) -> Result<(), ApiError> {
    match unclosed {
        Some((status, message)) => Err(ApiError::new(*status, message.clone())),
        None => Ok(()),
    }
}

pub(crate) type Frames = ReceiverStream<Result<sse::Event, Infallible>>;

/// Appends to the log (beginning a turn when `mark` says so) and publishes the stored frames;
/// returns them.
pub(crate) async fn publish(
    state: &AppState,
    hub: &Hub,
    session: SessionId,
    messages: &[(Role, String)],
    frames: &[(String, String)],
    mark: Option<TurnMark>,
) -> Result<Vec<Arc<SessionEvent>>, ApiError> {
    let order = hub.lock().await?;
    append_and_send(state, hub, session, (messages, frames), mark, &order).await
}

/// Publishes a turn's last frames, releasing the turn first (under the order lock): a client
/// that sees `done` — live or read back from the log — can send its next message at once, and
/// that turn's frames still come after this one's.
pub(crate) async fn publish_ending(
    state: &AppState,
    hub: &Hub,
    session: SessionId,
    messages: &[(Role, String)],
    frames: &[(String, String)],
    guard: TurnGuard,
) {
    let order = hub.order.lock().await;
    drop(guard);
    let ends = Some(TurnMark::Ends);
    if let Err(e) = append_and_send(state, hub, session, (messages, frames), ends, &order).await {
        broken(state, hub, &e);
        close_when_stored(state, hub, session, order).await;
    }
}

/// What one append logs: messages, then frames.
type Entries<'a> = (&'a [(Role, String)], &'a [(String, String)]);

async fn append_and_send(
    state: &AppState,
    hub: &Hub,
    session: SessionId,
    (messages, frames): Entries<'_>,
    mark: Option<TurnMark>,
    _order: &tokio::sync::MutexGuard<'_, ()>,
) -> Result<Vec<Arc<SessionEvent>>, ApiError> {
    let stored = state.store.append(session, messages, frames, mark).await?;
    let stored: Vec<_> = stored.into_iter().map(Arc::new).collect();
    for event in &stored {
        let _ = hub.feed.send(Published::Logged(event.clone()));
    }
    Ok(stored)
}

/// The store failed a turn's batch: the session refuses new appends until the turn's end is
/// logged, and its followers end now, with the error.
fn broken(state: &AppState, hub: &Hub, error: &ApiError) {
    hub.unclosed
        .send_replace(Some((error.status, error.message.clone())));
    let _ = hub.feed.send(Published::Broken(error.message.clone()));
    state.metrics.turn_ended(TurnOutcome::StorageFailed);
}

/// Closes a turn the store failed in the log (`error` + `done`) as soon as the
/// store takes it, trying again with a growing wait while it is unavailable or its disk full,
/// for up to [`OUTAGE_PATIENCE`]. The session's order lock is held until then, and every new
/// append of the session is refused at once with the store's last answer: nothing is logged
/// before this turn's end.
async fn close_when_stored(
    state: &AppState,
    hub: &Hub,
    session: SessionId,
    order: tokio::sync::MutexGuard<'_, ()>,
) {
    let frames = closing(session, Some(STORE_LOST));
    let give_up = tokio::time::Instant::now() + OUTAGE_PATIENCE;
    let mut wait = Duration::from_millis(50);
    loop {
        tokio::time::sleep(wait).await;
        let ends = Some(TurnMark::Ends);
        match append_and_send(state, hub, session, (&[], &frames), ends, &order).await {
            Ok(_) => break,
            Err(e) if retryable(&e) && tokio::time::Instant::now() < give_up => {
                hub.unclosed.send_replace(Some((e.status, e.message)));
                wait = (wait * 2).min(OUTAGE_RETRY);
            }
            Err(e) => {
                tracing::error!(session = %session, "the turn could not be closed in the log: {}; the session's next turn (or the next start) logs its end first", e.message);
                hub.owed_end
                    .store(true, std::sync::atomic::Ordering::Release);
                break;
            }
        }
    }
    hub.unclosed.send_replace(None);
    drop(order);
}

/// A store error that may go away by itself: the store out of reach, or its disk full.
fn retryable(e: &ApiError) -> bool {
    [
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::INSUFFICIENT_STORAGE,
    ]
    .contains(&e.status)
}

/// The frames that close a turn: an error (when there is one) and `done`.
pub(crate) fn closing(session: SessionId, error: Option<&str>) -> Vec<(String, String)> {
    closing_with(session, error.map(|error| error_frame(error, None, None)))
}

/// An `error` frame: the reference's `{error}`, with the model endpoint's HTTP `status` and
/// a `hint` of what to check when the bridge knows them.
fn error_frame(error: &str, status: Option<u16>, hint: Option<String>) -> (String, String) {
    let mut data = json!({ "error": error });
    if let Some(status) = status {
        data["status"] = status.into();
    }
    if let Some(hint) = hint {
        data["hint"] = hint.into();
    }
    ("error".to_owned(), data.to_string())
}

fn closing_with(session: SessionId, error: Option<(String, String)>) -> Vec<(String, String)> {
    let mut frames = Vec::new();
    frames.extend(error);
    frames.push((
        "done".to_owned(),
        json!({ "sessionId": session }).to_string(),
    ));
    frames
}

/// Drives one turn to its end: logs and publishes everything the bridge sends, and a `limit`
/// frame for each resource limit the sandbox hit, just before the turn's closing frames.
/// `logged` is the session log's length when the turn began and `logged_bytes` its bytes
/// before it (the session caps count from there).
pub(crate) async fn run_turn(
    state: Arc<AppState>,
    session: SessionId,
    agent: String,
    hub: Hub,
    mut turn: Turn,
    guard: TurnGuard,
    (logged, logged_bytes): (i64, u64),
) {
    let caps = state.config.event_caps;
    let mut spent = Spent {
        logged,
        logged_bytes,
        ..Spent::default()
    };
    let mut batch = Batch::new(session, &state, &agent);
    loop {
        let next = tokio::select! {
            next = turn.next() => next,
            () = state.drain.deadline() => return end_at_shutdown(&state, &hub, session, guard).await,
        };
        let Some(first) = next else {
            break;
        };
        batch.add(first);
        while batch.frames.len() < BATCH && batch.bytes() < BATCH_BYTES && batch.outcome.is_none() {
            match turn.try_next() {
                Some(event) => batch.add(event),
                None => break,
            }
        }
        if let Some(cap) = spent.over(&batch, caps) {
            return end_at_cap(&state, &hub, session, cap, &turn, guard).await;
        }
        if let (Some(at), Some(outcome)) = (batch.closing_at, batch.outcome) {
            let hits = limit_frames(&state, guard.sandbox());
            batch.frames.splice(at..at, hits);
            state.metrics.turn_ended(outcome);
            return publish_ending(&state, &hub, session, &batch.messages, &batch.frames, guard)
                .await;
        }
        match publish(&state, &hub, session, &batch.messages, &batch.frames, None).await {
            Ok(stored) => spent.logged = stored.last().map_or(spent.logged, |e| e.sequence),
            Err(e) => {
                broken(&state, &hub, &e);
                if let Err(why) = guard.sandbox().interrupt(turn.id()).await {
                    tracing::warn!(session = %session, "cannot interrupt a turn the store failed: {why}");
                }
                let order = hub.order.lock().await;
                drop(guard);
                return close_when_stored(&state, &hub, session, order).await;
            }
        }
        batch = Batch::new(session, &state, &agent);
    }
    tracing::warn!(session = %session, "bridge went away mid-turn");
    let error =
        "the sandbox stopped during this turn; send the message again to continue in a new sandbox";
    let mut frames = limit_frames(&state, guard.sandbox());
    frames.extend(closing(session, Some(error)));
    state.sessions.discard(session).await;
    state.metrics.turn_ended(TurnOutcome::SandboxLost);
    publish_ending(&state, &hub, session, &batch.messages, &frames, guard).await;
}

/// What a turn has logged so far, against the event caps.
#[derive(Default)]
struct Spent {
    bytes: usize,
    events: usize,
    /// The session log's last sequence number (its event count) after the turn's last batch.
    logged: i64,
    /// The session log's bytes before this turn.
    logged_bytes: u64,
}

impl Spent {
    /// Counts the batch in; the cap it breaks, if any, with its limit (the batch is then not
    /// logged).
    fn over(&mut self, batch: &Batch<'_>, caps: crate::EventCaps) -> Option<(LimitKind, u64)> {
        self.bytes += batch.bytes();
        self.events += batch.frames.len();
        if self.bytes > caps.turn_bytes {
            Some((LimitKind::EventBytes, caps.turn_bytes as u64))
        } else if self.events > caps.turn_events {
            Some((LimitKind::Events, caps.turn_events as u64))
        } else if self.logged + batch.frames.len() as i64 > caps.session_events {
            Some((LimitKind::SessionEvents, caps.session_events as u64))
        } else if self.logged_bytes + self.bytes as u64 > caps.session_bytes {
            Some((LimitKind::SessionEventBytes, caps.session_bytes))
        } else {
            None
        }
    }
}

/// Ends a turn whose agent sent more than a cap allows: the batch that broke it is dropped,
/// the agent's turn is interrupted, and the log gets a `limit` frame and the closing frames.
async fn end_at_cap(
    state: &AppState,
    hub: &Hub,
    session: SessionId,
    (kind, limit): (LimitKind, u64),
    turn: &Turn,
    guard: TurnGuard,
) {
    let message = match kind {
        LimitKind::EventBytes => format!("the turn's events reached the cap of {} MiB per turn; the rest was dropped and the turn stopped", limit >> 20),
        LimitKind::Events => format!("the turn reached the cap of {limit} events per turn; the rest was dropped and the turn stopped"),
        LimitKind::SessionEvents => format!("the session's log reached the cap of {limit} events; start a new session or fork this one"),
        _ => format!("the session's log reached the cap of {} MiB; start a new session", limit >> 20),
    };
    let kind = kind.as_str();
    state.metrics.limit_hits.with_label_values(&[kind]).inc();
    if let Err(why) = guard.sandbox().interrupt(turn.id()).await {
        tracing::warn!(session = %session, "a turn past its event cap did not stop: {why}");
    }
    let mut frames = limit_frames(state, guard.sandbox());
    let data = json!({"kind": kind, "limit": limit, "count": 1, "message": message});
    frames.push(("limit".to_owned(), data.to_string()));
    frames.extend(closing(session, Some(&message)));
    state.metrics.turn_ended(TurnOutcome::Limit);
    publish_ending(state, hub, session, &[], &frames, guard).await;
}

/// Ends a turn still running when a stop's grace period is over; the sandbox is stopped
/// with the server.
async fn end_at_shutdown(state: &AppState, hub: &Hub, session: SessionId, guard: TurnGuard) {
    let error = "the server shut down during this turn; send the message again";
    state.metrics.turn_ended(TurnOutcome::Shutdown);
    publish_ending(
        state,
        hub,
        session,
        &[],
        &closing(session, Some(error)),
        guard,
    )
    .await;
}

/// A `limit` frame (and a metric) for each limit the sandbox hit since the last look.
fn limit_frames(state: &AppState, sandbox: &Sandbox) -> Vec<(String, String)> {
    sandbox
        .limit_hits()
        .into_iter()
        .map(|hit| {
            state.metrics.limit_hits.with_label_values(&[hit.kind.as_str()]).inc_by(hit.count);
            let message = match hit.kind {
                LimitKind::Memory => format!("the sandbox reached its memory limit ({} MiB) and the kernel killed a process", hit.limit >> 20),
                _ => format!("the sandbox reached its process limit ({}) and a new process was refused", hit.limit),
            };
            let data = json!({"kind": hit.kind.as_str(), "limit": hit.limit, "count": hit.count, "message": message});
            ("limit".to_owned(), data.to_string())
        })
        .collect()
}

/// What one bridge read adds: messages to store and frames to log.
struct Batch<'a> {
    session: SessionId,
    agent: &'a str,
    state: &'a AppState,
    messages: Vec<(Role, String)>,
    frames: Vec<(String, String)>,
    outcome: Option<TurnOutcome>,
    /// Where the turn's closing frames (`error`, `done`) start, once they are in.
    closing_at: Option<usize>,
}

impl<'a> Batch<'a> {
    fn new(session: SessionId, state: &'a AppState, agent: &'a str) -> Self {
        Self {
            session,
            agent,
            state,
            messages: Vec::new(),
            frames: Vec::new(),
            outcome: None,
            closing_at: None,
        }
    }

    fn add(&mut self, event: Event) {
        match event {
            Event::Message { data, .. } => {
                let Some(data) = self.transformed(data) else {
                    return;
                };
                let text = data.to_string();
                if matches!(
                    data.get("type").and_then(Value::as_str),
                    Some("assistant" | "result")
                ) {
                    self.messages.push((Role::Assistant, text.clone()));
                }
                for (name, payload) in classify(&data) {
                    let payload = payload.to_string();
                    let hook = match name.as_str() {
                        "tool_use" => Some(HookPoint::ToolPreInvoke),
                        "tool_result" => Some(HookPoint::ToolPostInvoke),
                        _ => None,
                    };
                    if let Some(hook) = hook {
                        self.observe(hook, &name, || payload.clone());
                    }
                    self.frames.push((name, payload));
                }
                self.observe(HookPoint::MessageOut, "message", || text.clone());
                self.frames.push(("message".to_owned(), text));
            }
            // An error naming no command is a warning to the turn, not its end.
            Event::Error {
                id,
                error,
                status,
                hint,
            } => {
                let frame = error_frame(&error, status, hint);
                if id.is_empty() {
                    self.frames.push(frame);
                    return;
                }
                self.closing_at = Some(self.frames.len());
                self.frames.extend(closing_with(self.session, Some(frame)));
                self.outcome = Some(TurnOutcome::Error);
            }
            Event::Done { .. } => {
                self.closing_at = Some(self.frames.len());
                self.frames.extend(closing(self.session, None));
                self.outcome = Some(TurnOutcome::Ok);
            }
            Event::Ready { .. } | Event::Log { .. } | Event::ExecResult { .. } => {}
        }
    }
}

impl Batch<'_> {
    /// The bytes the batch would store.
    fn bytes(&self) -> usize {
        let frames: usize = self.frames.iter().map(|(k, d)| k.len() + d.len()).sum();
        frames + self.messages.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    fn observe(&self, hook: HookPoint, name: &str, data: impl FnOnce() -> String) {
        hooks::observe(self.state, hook, name, self.session, self.agent, data);
    }

    /// The agent's message after the transformer plugins (`message-out`); `None` when one
    /// failed and its policy withholds the event.
    fn transformed(&self, data: Value) -> Option<Value> {
        let plugins = &self.state.plugins;
        if !plugins.has_transformers() {
            return Some(data);
        }
        let event = hooks::event(
            HookPoint::MessageOut,
            "message",
            self.session,
            self.agent,
            data.to_string(),
        );
        let started = std::time::Instant::now();
        // Plugin calls block (bounded by each plugin's deadline), and WASI calls inside them
        // re-enter the runtime: both need a thread that may block.
        let outcome = tokio::task::block_in_place(|| plugins.transform(event));
        self.state
            .metrics
            .plugin_transform
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            ash_plugin_host::Transformed::Keep => Some(data),
            ash_plugin_host::Transformed::Replace(data) => Some(data),
            ash_plugin_host::Transformed::Drop => {
                // The plugin host logs each failure and the quarantine; count, don't repeat.
                self.state.metrics.plugin_withheld.inc();
                tracing::debug!(session = %self.session, "an agent message was withheld");
                None
            }
        }
    }
}

/// A stream of the log after `after`, then live frames; ends at `done` when `until_done`.
pub(crate) fn follow(
    state: Arc<AppState>,
    session: SessionId,
    hub: broadcast::Receiver<Published>,
    after: i64,
    until_done: bool,
) -> Frames {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut follower = Follower {
            tx,
            last: after,
            until_done,
        };
        if let Err(reason) = follower.run(&state, session, hub).await {
            tracing::debug!(session = %session, "stream closed: {reason}");
        }
    });
    ReceiverStream::new(rx)
}

struct Follower {
    tx: mpsc::Sender<Result<sse::Event, Infallible>>,
    last: i64,
    until_done: bool,
}

/// Why a follower stopped early.
type Stop = &'static str;

impl Follower {
    async fn run(
        &mut self,
        state: &AppState,
        session: SessionId,
        mut hub: broadcast::Receiver<Published>,
    ) -> Result<(), Stop> {
        loop {
            // Catch up from the log; a follower that falls behind the hub comes back here.
            loop {
                let page = state
                    .store
                    .list_events(session, self.last, 1000, None)
                    .await
                    .map_err(|_| "storage failed during replay")?;
                if page.is_empty() {
                    break;
                }
                for event in page {
                    if self.push(&event).await? {
                        return Ok(());
                    }
                }
            }
            loop {
                // Frames already published go out first: a turn's end comes before the shutdown.
                let published = tokio::select! {
                    biased;
                    published = hub.recv() => published,
                    () = state.drain.closing() => {
                        let last = self.shutdown_frame();
                        let _ = self.tx.send_timeout(Ok(last), SLOW_CLIENT_TIMEOUT).await;
                        return Ok(());
                    }
                };
                match published {
                    Ok(Published::Logged(event)) if event.sequence > self.last => {
                        if self.push(&event).await? {
                            return Ok(());
                        }
                    }
                    Ok(Published::Logged(_)) => {}
                    Ok(Published::Broken(error)) => {
                        // Not in the log, so without an `id:`: a client keeps the last id it
                        // saw, and reads the turn's logged end after it once the store is back.
                        let data = json!({ "error": error }).to_string();
                        let frame = sse::Event::default().event("error").data(data);
                        let _ = self.tx.send_timeout(Ok(frame), SLOW_CLIENT_TIMEOUT).await;
                        return Err("the turn broke");
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }

    /// The last frame of a stream the server ends as it stops: not in the log, so without an
    /// `id:`; it names the last id sent, to reconnect with.
    fn shutdown_frame(&self) -> sse::Event {
        let data = json!({
            "message": "the server is shutting down; reconnect with Last-Event-ID to go on",
            "lastEventId": self.last,
        });
        sse::Event::default()
            .event("shutdown")
            .data(data.to_string())
            .retry(Duration::from_secs(1))
    }

    /// Sends one frame; `true` when it was the `done` this stream waits for.
    async fn push(&mut self, event: &SessionEvent) -> Result<bool, Stop> {
        let data = event.data.as_deref().unwrap_or("null");
        let frame = sse::Event::default()
            .id(event.sequence.to_string())
            .event(&event.kind)
            .data(data);
        self.tx
            .send_timeout(Ok(frame), SLOW_CLIENT_TIMEOUT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => "client too slow",
                mpsc::error::SendTimeoutError::Closed(_) => "client went away",
            })?;
        self.last = event.sequence;
        Ok(self.until_done && event.kind == "done")
    }
}

/// The granular events the reference API derives from one SDK message.
fn classify(message: &Value) -> Vec<(String, Value)> {
    let kind = message.get("type").and_then(Value::as_str);
    let mut out = Vec::new();
    match kind {
        Some("stream_event") => {
            let event = &message["event"];
            if event["type"] == "content_block_delta" {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(("text_delta".into(), json!({"delta": delta["text"]})))
                    }
                    Some("thinking_delta") => {
                        out.push(("thinking_delta".into(), json!({"delta": delta["thinking"]})))
                    }
                    Some(other) => out.extend(event_name(other).map(|name| (name, delta.clone()))),
                    None => {}
                }
            }
        }
        Some("assistant") => {
            let blocks = message["message"]["content"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") | None => {}
                    Some("tool_use") => out.push((
                        "tool_use".into(),
                        json!({"id": block["id"], "name": block["name"], "input": block["input"]}),
                    )),
                    Some("thinking") => {
                        out.push(("thinking_delta".into(), json!({"delta": block["thinking"]})))
                    }
                    Some(other) => out.extend(event_name(other).map(|name| (name, block.clone()))),
                }
            }
        }
        Some("user") if message.get("tool_use_result").is_some() => {
            let result = &message["tool_use_result"];
            let block = message["message"]["content"]
                .as_array()
                .and_then(|c| c.first())
                .cloned()
                .unwrap_or_default();
            let content = result
                .get("stdout")
                .cloned()
                .unwrap_or_else(|| block["content"].clone());
            out.push(("tool_result".into(), json!({"tool_use_id": block["tool_use_id"], "content": content, "is_error": block["is_error"]})));
        }
        Some("result") => out.push((
            "turn_complete".into(),
            json!({"numTurns": message["num_turns"], "result": message["result"]}),
        )),
        _ => {}
    }
    out
}

/// An SSE event name taken from agent data: only `[A-Za-z0-9_]`, at most 64 bytes.
fn event_name(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_deltas_become_text_delta_events() {
        let m = json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}});
        assert_eq!(
            classify(&m),
            vec![("text_delta".to_owned(), json!({"delta": "hi"}))]
        );
    }

    #[test]
    fn tool_use_and_result_messages_are_named() {
        let a = json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"c": 1}}]}});
        assert_eq!(
            classify(&a),
            vec![(
                "tool_use".to_owned(),
                json!({"id": "t1", "name": "Bash", "input": {"c": 1}})
            )]
        );
        let r = json!({"type": "result", "num_turns": 2, "result": "ok"});
        assert_eq!(
            classify(&r),
            vec![(
                "turn_complete".to_owned(),
                json!({"numTurns": 2, "result": "ok"})
            )]
        );
    }

    #[test]
    fn hostile_event_names_are_dropped_not_sent() {
        let m = json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "x\ndata: forged"}}});
        assert!(classify(&m).is_empty());
        let b = json!({"type": "assistant", "message": {"content": [{"type": "a b"}]}});
        assert!(classify(&b).is_empty());
    }
}
