//! The `echo` backend: answers each prompt with `Echo: <prompt>`, offline and deterministic,
//! in the same message shapes the Claude agent SDK emits (stream deltas when partial
//! messages are asked for, then `assistant`, then `result`).

use ash_protocol::{Event, QueryOptions};
use std::time::Duration;

use serde_json::{json, Value};

use crate::Events;

pub(crate) struct Turn {
    pub id: String,
    pub prompt: Value,
    pub session_id: String,
    pub options: QueryOptions,
    /// Waited before each delta, so demos and tests can watch (and interrupt) a turn.
    pub delay: Duration,
}

pub(crate) async fn run(turn: Turn, events: Events) {
    let Turn {
        id,
        prompt,
        session_id,
        options,
        delay,
    } = turn;
    let reply = format!("Echo: {}", prompt_text(&prompt));
    let send = |data: Value| {
        let events = events.clone();
        let id = id.clone();
        async move { events.send(Event::Message { id, data }).await.is_ok() }
    };
    if options.include_partial_messages {
        for piece in reply.split_inclusive(' ') {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let delta = json!({"type": "stream_event", "session_id": session_id, "event": {
                "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}});
            if !send(delta).await {
                return;
            }
        }
    }
    let assistant = json!({"type": "assistant", "session_id": session_id, "message": {
        "role": "assistant", "model": "echo", "content": [{"type": "text", "text": reply}]}});
    let result = json!({"type": "result", "subtype": "success", "is_error": false, "num_turns": 1,
        "result": reply, "session_id": session_id});
    if send(assistant).await && send(result).await {
        let _ = events.send(Event::Done { id }).await;
    }
}

/// The text of a prompt: the string itself, or the text blocks of a content array.
fn prompt_text(prompt: &Value) -> String {
    match prompt {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}
