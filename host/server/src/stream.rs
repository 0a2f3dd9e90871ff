//! The SSE stream of one turn, in the reference API's vocabulary: `session_start`, the
//! granular events derived from each SDK message (`text_delta`, `tool_use`, …), the raw
//! `message`, then `done` — or `error`. Every frame carries an `id:`.
//!
//! The turn runs in its own task and stores each assistant message before its frames are
//! sent, so a client that disconnects loses nothing and stops nothing. If the bridge dies
//! mid-turn the stream ends with `error` and `done`, and the session's next message gets a
//! new sandbox over the same workspace.

use std::convert::Infallible;
use std::sync::Arc;

use ash_core::{Role, SessionId};
use ash_protocol::Event;
use ash_sandbox::Turn;
use axum::response::sse;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::sessions::TurnGuard;
use crate::AppState;

/// Frames buffered for a client before the turn waits for it.
const CLIENT_BUFFER: usize = 64;

pub(crate) type Frames = ReceiverStream<Result<sse::Event, Infallible>>;

/// Runs the turn in the background and returns its frames.
pub(crate) fn start(
    state: Arc<AppState>,
    session: SessionId,
    turn: Turn,
    guard: TurnGuard,
) -> Frames {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(run(state, session, turn, guard, Out { tx, next_id: 1 }));
    ReceiverStream::new(rx)
}

struct Out {
    tx: mpsc::Sender<Result<sse::Event, Infallible>>,
    next_id: u64,
}

impl Out {
    /// Sends a frame; a client that has gone away is ignored, the turn goes on.
    async fn send(&mut self, name: &str, data: &Value) {
        let frame = sse::Event::default()
            .id(self.next_id.to_string())
            .event(name)
            .data(data.to_string());
        self.next_id += 1;
        let _ = self.tx.send(Ok(frame)).await;
    }
}

async fn run(
    state: Arc<AppState>,
    session: SessionId,
    mut turn: Turn,
    guard: TurnGuard,
    mut out: Out,
) {
    out.send(
        "session_start",
        &json!({"sessionId": session, "version": env!("CARGO_PKG_VERSION")}),
    )
    .await;
    let mut outcome = None;
    while let Some(event) = turn.next().await {
        match event {
            Event::Message { data, .. } => {
                if matches!(
                    data.get("type").and_then(Value::as_str),
                    Some("assistant" | "result")
                ) {
                    if let Err(e) = state
                        .store
                        .append_message(session, Role::Assistant, &data.to_string())
                        .await
                    {
                        tracing::error!(session = %session, "cannot store an assistant message: {e}");
                        out.send("error", &json!({"error": "the server could not store this message; see its log"})).await;
                    }
                }
                for (name, payload) in classify(&data) {
                    out.send(&name, &payload).await;
                }
                out.send("message", &data).await;
            }
            Event::Error { id, error } => {
                out.send("error", &json!({ "error": error })).await;
                if !id.is_empty() {
                    outcome = Some("error");
                }
            }
            Event::Done { .. } => {
                out.send("done", &json!({ "sessionId": session })).await;
                outcome = Some("ok");
            }
            Event::Ready { .. } | Event::Log { .. } => {}
        }
    }
    if outcome.is_none() {
        tracing::warn!(session = %session, "bridge went away mid-turn");
        let error = "the sandbox stopped during this turn; send the message again to continue in a new sandbox";
        out.send("error", &json!({ "error": error })).await;
        out.send("done", &json!({ "sessionId": session })).await;
        state.sessions.discard(session).await;
    }
    state
        .metrics
        .turns
        .with_label_values(&[outcome.unwrap_or("sandbox_lost")])
        .inc();
    drop(guard);
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
