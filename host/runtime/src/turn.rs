//! A turn: the user's message and `session_start` logged under the session's turn lock, the
//! query sent to the sandbox, and then — in a task of its own, so a client that goes away
//! cancels nothing — everything the bridge sends, through the transformer plugins and the
//! event caps, into the log in batches, until the turn's `done`.

use std::sync::Arc;

use ash_core::{
    FrameKind, HookPoint, LimitKind, Role, SessionId, TurnOutcome, TurnUsage, UsageCounts,
    DEFAULT_TENANT,
};
use ash_protocol::{Event, QueryOptions};
use ash_sandbox::{Sandbox, Turn};
use ash_store::TurnMark;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::hooks;
use crate::sessions::{Origin, TurnGuard};
use crate::stream::{
    broken, close_when_stored, closing, closing_with, error_frame, follow, publish, publish_ending,
    Frame, FrameStream, Hub,
};
use crate::{EventCaps, Runtime, RuntimeError};

/// The reference API's caps on message content.
pub const MAX_CONTENT_CHARS: usize = 500_000;
pub const MAX_CONTENT_BLOCKS: usize = 20;

/// Events stored in one transaction, at most.
const BATCH: usize = 256;
/// Bytes of events gathered into one transaction before it is stored: what one turn holds
/// in memory at a time, whatever its agent sends.
const BATCH_BYTES: usize = 4 << 20;

impl Runtime {
    /// Starts a turn: `content` (a string, or content blocks of type `text`, `image` or
    /// `document`) goes to the session's agent with the backend's `options`. Returns the
    /// session's frames from the turn's `session_start` to its `done`; the turn runs to its end
    /// whether or not they are read.
    pub async fn send(
        self: &Arc<Self>,
        raw_id: &str,
        content: Value,
        options: QueryOptions,
    ) -> Result<FrameStream, RuntimeError> {
        validate_content(&content)?;
        let session = self.session(raw_id).await?;
        session.status.accept_message()?;
        let hub = self.sessions.hub(session.id);
        hub.refusal()?;
        // Counted as a turn from here: a stop that begins meanwhile waits for it.
        let tracked = self.drain.turns.token();
        let turn = self.sessions.hold(session.id)?;
        // Read again under the lock: a pause, stop or delete that ended just before it is seen.
        let session = self.session(raw_id).await?;
        session.status.accept_message()?;
        let live = self.live(&session, None, Origin::Existing).await?;
        let guard = self.sessions.begin_turn(&live, turn);
        let followers = hub.subscribe();
        let user = [(
            Role::User,
            json!({"type": "user", "content": content}).to_string(),
        )];
        let start =
            json!({"sessionId": session.id, "version": env!("CARGO_PKG_VERSION")}).to_string();
        let mut frames = hub.owed(session.id);
        frames.push((FrameKind::SessionStart, start));
        let started = publish(
            self,
            &hub,
            session.id,
            &user,
            &frames,
            Some(TurnMark::Begins),
        )
        .await?;
        hub.paid();
        let begun = started[started.len() - 1].sequence;
        hooks::observe(
            self,
            HookPoint::MessageIn,
            "message",
            session.id,
            session.agent_name.as_str(),
            || user[0].1.clone(),
        );
        // From here the turn is its own task: a client that goes away cancels nothing.
        let (runtime, agent) = (self.clone(), session.agent_name.to_string());
        let logged = (begun, session.logged_bytes);
        let span = tracing::info_span!("turn", session = %session.id, agent = %agent);
        let mut options = options;
        session.config.apply(&mut options.extra);
        self.drain.turns.spawn(
            async move {
                let id = session.id;
                options.traceparent = traceparent();
                match live.sandbox.query(content, id.to_string(), options).await {
                    Ok(turn) => {
                        live.running(turn.id());
                        let agent = (agent, session.agent_name.clone());
                        run_turn(runtime, id, agent, hub, turn, guard, logged).await;
                    }
                    Err(e) => {
                        tracing::error!(session = %id, "cannot start a turn: {e}");
                        runtime.sessions.discard(id).await;
                        let error = "the sandbox is not available; send the message again";
                        let frames = closing(id, Some(error));
                        publish_ending(&runtime, &hub, id, &[], &frames, guard, None).await;
                    }
                }
            }
            .instrument(span),
        );
        drop(tracked);
        Ok(follow(self.clone(), session.id, followers, begun - 1, true))
    }

    /// Sends `content` to the session and reads its turn to the end, for frontends that want
    /// the whole answer (the queue, agents as tools): `progress` sees each text delta as it
    /// comes (asked for when `options` asks for partial messages).
    pub async fn answer(
        self: &Arc<Self>,
        raw_id: &str,
        content: Value,
        options: QueryOptions,
        mut progress: impl FnMut(&str),
    ) -> Result<Answer, RuntimeError> {
        let mut frames = self.send(raw_id, content, options).await?.into_inner();
        let mut answer = Answer::default();
        while let Some(frame) = frames.recv().await {
            let (kind, data) = match &frame {
                Frame::Logged(event) => (&event.kind, event.data.as_deref().unwrap_or("{}")),
                Frame::Unlogged { kind, data, .. } => (kind, data.as_str()),
            };
            let data: Value = serde_json::from_str(data).unwrap_or_default();
            match kind {
                FrameKind::TextDelta => progress(data["delta"].as_str().unwrap_or_default()),
                FrameKind::Message if data["type"] == "assistant" => {
                    let blocks = data["message"]["content"].as_array();
                    for text in blocks
                        .into_iter()
                        .flatten()
                        .filter_map(|b| b["text"].as_str())
                    {
                        answer.text.push_str(text);
                    }
                }
                FrameKind::Error => {
                    let said = data["error"].as_str().unwrap_or("the turn failed");
                    answer.error = Some(said.to_owned());
                }
                FrameKind::Shutdown => {
                    answer.error = Some("the server stopped during the turn".into());
                    break;
                }
                FrameKind::Done => break,
                _ => {}
            }
        }
        Ok(answer)
    }

    /// One turn of `agent` ([`Self::answer`]): in the session `session` names, which must be
    /// the agent's, or in a new one. The session's id and what its turn said.
    pub async fn ask_agent(
        self: &Arc<Self>,
        agent: &str,
        session: Option<&str>,
        message: String,
        options: QueryOptions,
        progress: impl FnMut(&str),
    ) -> Result<(SessionId, Answer), RuntimeError> {
        let session = match session {
            Some(id) => {
                let session = self.session(id).await?;
                if session.agent_name.as_str() != agent {
                    return Err(RuntimeError::invalid(format!(
                        "session {id} is of agent {}, not {agent}",
                        session.agent_name
                    )));
                }
                session
            }
            None => {
                let new = crate::NewSession {
                    agent: agent.to_owned(),
                    ..crate::NewSession::default()
                };
                self.create(new).await?
            }
        };
        let id = session.id.to_string();
        let answer = self
            .answer(&id, Value::String(message), options, progress)
            .await?;
        Ok((session.id, answer))
    }

    /// Stops the session's running turn, which ends with `error` + `done`; `false` when none
    /// is running.
    pub async fn interrupt(&self, raw_id: &str) -> Result<bool, RuntimeError> {
        let session = self.session(raw_id).await?;
        self.sessions.interrupt(session.id).await
    }
}

/// What a whole turn said ([`Runtime::answer`]): the agent's text, and the error the turn
/// ended with, if it did.
#[derive(Debug, Default)]
pub struct Answer {
    pub text: String,
    pub error: Option<String>,
}

/// The current span's W3C `traceparent`, when traces are exported.
fn traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

fn validate_content(content: &Value) -> Result<(), RuntimeError> {
    match content {
        Value::String(text) if text.chars().count() <= MAX_CONTENT_CHARS => Ok(()),
        Value::String(_) => Err(RuntimeError::invalid(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        ))),
        Value::Array(blocks) if blocks.is_empty() || blocks.len() > MAX_CONTENT_BLOCKS => Err(
            RuntimeError::invalid(format!("content must have 1-{MAX_CONTENT_BLOCKS} blocks")),
        ),
        Value::Array(blocks) => {
            let known = |b: &Value| {
                matches!(
                    b.get("type").and_then(Value::as_str),
                    Some("text" | "image" | "document")
                )
            };
            if blocks.iter().all(known) {
                Ok(())
            } else {
                Err(RuntimeError::invalid(
                    "each content block needs type text, image or document",
                ))
            }
        }
        _ => Err(RuntimeError::invalid(
            "content must be a string or an array of content blocks",
        )),
    }
}

/// Drives one turn to its end: logs and publishes everything the bridge sends, and a `limit`
/// frame for each resource limit the sandbox hit, just before the turn's closing frames; the
/// turn's usage (what its backend reported, its seconds) is stored with its end.
/// `logged` is the session log's length when the turn began and `logged_bytes` its bytes
/// before it (the session caps count from there).
async fn run_turn(
    runtime: Arc<Runtime>,
    session: SessionId,
    (agent, agent_name): (String, ash_core::AgentName),
    hub: Hub,
    mut turn: Turn,
    guard: TurnGuard,
    (logged, logged_bytes): (i64, u64),
) {
    let began = std::time::Instant::now();
    let mut used = UsageCounts {
        messages: 1,
        ..UsageCounts::default()
    };
    let usage = |used: &UsageCounts| TurnUsage {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: DEFAULT_TENANT.to_owned(),
        session_id: session,
        agent_name: agent_name.clone(),
        counts: UsageCounts {
            compute_seconds: began.elapsed().as_secs_f64(),
            ..*used
        },
        created_at: crate::now(),
    };
    let caps = runtime.config.event_caps;
    let mut spent = Spent {
        logged,
        logged_bytes,
        ..Spent::default()
    };
    let mut batch = Batch::new(session, &runtime, &agent);
    loop {
        let next = tokio::select! {
            next = turn.next() => next,
            () = runtime.drain.deadline() => {
                used.add(&batch.used);
                return end_at_shutdown(&runtime, &hub, session, guard, usage(&used)).await;
            }
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
        used.add(&batch.used);
        if let Some(cap) = spent.over(&batch, caps) {
            end_at_cap(&runtime, &hub, session, cap, &turn, guard, usage(&used)).await;
            return runtime.snapshot_later(session);
        }
        if let (Some(at), Some(outcome)) = (batch.closing_at, batch.outcome) {
            let hits = limit_frames(&runtime, guard.sandbox());
            batch.frames.splice(at..at, hits);
            runtime.metrics.turn_ended(outcome);
            publish_ending(
                &runtime,
                &hub,
                session,
                &batch.messages,
                &batch.frames,
                guard,
                Some(usage(&used)),
            )
            .await;
            return runtime.snapshot_later(session);
        }
        match publish(
            &runtime,
            &hub,
            session,
            &batch.messages,
            &batch.frames,
            None,
        )
        .await
        {
            Ok(stored) => spent.logged = stored.last().map_or(spent.logged, |e| e.sequence),
            Err(e) => {
                broken(&runtime, &hub, &e);
                if let Err(why) = guard.sandbox().interrupt(turn.id()).await {
                    tracing::warn!(session = %session, "cannot interrupt a turn the store failed: {why}");
                }
                let order = hub.order.lock().await;
                drop(guard);
                return close_when_stored(&runtime, &hub, session, order).await;
            }
        }
        batch = Batch::new(session, &runtime, &agent);
    }
    tracing::warn!(session = %session, "bridge went away mid-turn");
    let error =
        "the sandbox stopped during this turn; send the message again to continue in a new sandbox";
    let mut frames = limit_frames(&runtime, guard.sandbox());
    frames.extend(closing(session, Some(error)));
    runtime.sessions.discard(session).await;
    runtime.metrics.turn_ended(TurnOutcome::SandboxLost);
    let usage = Some(usage(&used));
    publish_ending(
        &runtime,
        &hub,
        session,
        &batch.messages,
        &frames,
        guard,
        usage,
    )
    .await;
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
    fn over(&mut self, batch: &Batch<'_>, caps: EventCaps) -> Option<(LimitKind, u64)> {
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
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    (kind, limit): (LimitKind, u64),
    turn: &Turn,
    guard: TurnGuard,
    usage: TurnUsage,
) {
    let message = match kind {
        LimitKind::EventBytes => format!("the turn's events reached the cap of {} MiB per turn; the rest was dropped and the turn stopped", limit >> 20),
        LimitKind::Events => format!("the turn reached the cap of {limit} events per turn; the rest was dropped and the turn stopped"),
        LimitKind::SessionEvents => format!("the session's log reached the cap of {limit} events; start a new session or fork this one"),
        _ => format!("the session's log reached the cap of {} MiB; start a new session", limit >> 20),
    };
    let kind = kind.as_str();
    runtime.metrics.limit_hits.with_label_values(&[kind]).inc();
    if let Err(why) = guard.sandbox().interrupt(turn.id()).await {
        tracing::warn!(session = %session, "a turn past its event cap did not stop: {why}");
    }
    let mut frames = limit_frames(runtime, guard.sandbox());
    let data = json!({"kind": kind, "limit": limit, "count": 1, "message": message});
    frames.push((FrameKind::Limit, data.to_string()));
    frames.extend(closing(session, Some(&message)));
    runtime.metrics.turn_ended(TurnOutcome::Limit);
    publish_ending(runtime, hub, session, &[], &frames, guard, Some(usage)).await;
}

/// Ends a turn still running when a stop's grace period is over; the sandbox is stopped
/// with the server.
async fn end_at_shutdown(
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    guard: TurnGuard,
    usage: TurnUsage,
) {
    let error = "the server shut down during this turn; send the message again";
    runtime.metrics.turn_ended(TurnOutcome::Shutdown);
    let frames = closing(session, Some(error));
    publish_ending(runtime, hub, session, &[], &frames, guard, Some(usage)).await;
}

/// A `limit` frame (and a metric) for each limit the sandbox hit since the last look.
fn limit_frames(runtime: &Runtime, sandbox: &Sandbox) -> Vec<(FrameKind, String)> {
    sandbox
        .limit_hits()
        .into_iter()
        .map(|hit| {
            runtime.metrics.limit_hits.with_label_values(&[hit.kind.as_str()]).inc_by(hit.count);
            let message = match hit.kind {
                LimitKind::Memory => format!("the sandbox reached its memory limit ({} MiB) and the kernel killed a process", hit.limit >> 20),
                _ => format!("the sandbox reached its process limit ({}) and a new process was refused", hit.limit),
            };
            let data = json!({"kind": hit.kind.as_str(), "limit": hit.limit, "count": hit.count, "message": message});
            (FrameKind::Limit, data.to_string())
        })
        .collect()
}

/// What one bridge read adds: messages to store and frames to log.
struct Batch<'a> {
    session: SessionId,
    agent: &'a str,
    runtime: &'a Runtime,
    messages: Vec<(Role, String)>,
    frames: Vec<(FrameKind, String)>,
    /// What the backend reported in these messages (before any transformer).
    used: UsageCounts,
    outcome: Option<TurnOutcome>,
    /// Where the turn's closing frames (`error`, `done`) start, once they are in.
    closing_at: Option<usize>,
}

impl<'a> Batch<'a> {
    fn new(session: SessionId, runtime: &'a Runtime, agent: &'a str) -> Self {
        Self {
            session,
            agent,
            runtime,
            messages: Vec::new(),
            frames: Vec::new(),
            used: UsageCounts::default(),
            outcome: None,
            closing_at: None,
        }
    }

    fn add(&mut self, event: Event) {
        match event {
            Event::Message { data, .. } => {
                self.used.add_reported(&data);
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
                    let hook = match &name {
                        FrameKind::ToolUse => Some(HookPoint::ToolPreInvoke),
                        FrameKind::ToolResult => Some(HookPoint::ToolPostInvoke),
                        _ => None,
                    };
                    if let Some(hook) = hook {
                        self.observe(hook, name.as_str(), || payload.clone());
                    }
                    self.frames.push((name, payload));
                }
                self.observe(HookPoint::MessageOut, "message", || text.clone());
                self.frames.push((FrameKind::Message, text));
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
        let frames: usize = self
            .frames
            .iter()
            .map(|(k, d)| k.as_str().len() + d.len())
            .sum();
        frames + self.messages.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    fn observe(&self, hook: HookPoint, name: &str, data: impl FnOnce() -> String) {
        hooks::observe(self.runtime, hook, name, self.session, self.agent, data);
    }

    /// The agent's message after the transformer plugins (`message-out`); `None` when one
    /// failed and its policy withholds the event.
    fn transformed(&self, data: Value) -> Option<Value> {
        let plugins = &self.runtime.plugins;
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
        self.runtime
            .metrics
            .plugin_transform
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            ash_plugin_host::Transformed::Keep => Some(data),
            ash_plugin_host::Transformed::Replace(data) => Some(data),
            ash_plugin_host::Transformed::Drop => {
                // The plugin host logs each failure and the quarantine; count, don't repeat.
                self.runtime.metrics.plugin_withheld.inc();
                tracing::debug!(session = %self.session, "an agent message was withheld");
                None
            }
        }
    }
}

/// The granular events the reference API derives from one SDK message.
fn classify(message: &Value) -> Vec<(FrameKind, Value)> {
    let kind = message.get("type").and_then(Value::as_str);
    let mut out = Vec::new();
    match kind {
        Some("stream_event") => {
            let event = &message["event"];
            if event["type"] == "content_block_delta" {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push((FrameKind::TextDelta, json!({"delta": delta["text"]})))
                    }
                    Some("thinking_delta") => out.push((
                        FrameKind::ThinkingDelta,
                        json!({"delta": delta["thinking"]}),
                    )),
                    Some(other) => {
                        out.extend(FrameKind::agent(other).map(|name| (name, delta.clone())))
                    }
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
                        FrameKind::ToolUse,
                        json!({"id": block["id"], "name": block["name"], "input": block["input"]}),
                    )),
                    Some("thinking") => out.push((
                        FrameKind::ThinkingDelta,
                        json!({"delta": block["thinking"]}),
                    )),
                    Some(other) => {
                        out.extend(FrameKind::agent(other).map(|name| (name, block.clone())))
                    }
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
            out.push((FrameKind::ToolResult, json!({"tool_use_id": block["tool_use_id"], "content": content, "is_error": block["is_error"]})));
        }
        Some("result") => out.push((
            FrameKind::TurnComplete,
            json!({"numTurns": message["num_turns"], "result": message["result"]}),
        )),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_deltas_become_text_delta_events() {
        let m = json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}});
        assert_eq!(
            classify(&m),
            vec![(FrameKind::TextDelta, json!({"delta": "hi"}))]
        );
    }

    #[test]
    fn tool_use_and_result_messages_are_named() {
        let a = json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"c": 1}}]}});
        assert_eq!(
            classify(&a),
            vec![(
                FrameKind::ToolUse,
                json!({"id": "t1", "name": "Bash", "input": {"c": 1}})
            )]
        );
        let r = json!({"type": "result", "num_turns": 2, "result": "ok"});
        assert_eq!(
            classify(&r),
            vec![(
                FrameKind::TurnComplete,
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

    #[test]
    fn an_agent_cannot_forge_the_servers_frames() {
        let delta = |kind: &str| json!({"type": "stream_event", "event": {"type": "content_block_delta", "delta": {"type": kind}}});
        for forged in ["done", "error", "session_start", "shutdown"] {
            assert!(classify(&delta(forged)).is_empty(), "{forged}");
            let block = json!({"type": "assistant", "message": {"content": [{"type": forged}]}});
            assert!(classify(&block).is_empty(), "{forged}");
        }
        let named = classify(&delta("input_json_delta"));
        assert_eq!(named[0].0, FrameKind::Agent("input_json_delta".into()));
    }
}
