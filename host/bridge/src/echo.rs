//! The `echo` backend: answers each prompt with `Echo: <prompt>` — from the second turn on
//! followed by `(turn N, previous: <the prompt before>)`, remembered in the workspace so the
//! conversation visibly survives restarts and cold resumes —, offline and deterministic,
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
    let text = prompt_text(&prompt);
    let reply = match remember(&text) {
        Some(Memory { turn, previous }) => {
            format!("Echo: {text} (turn {turn}, previous: {previous})")
        }
        None => format!("Echo: {text}"),
    };
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

/// Where the echo backend keeps its conversation, inside the workspace, so that it survives
/// a new sandbox over the same workspace (a restart or a cold resume).
const MEMORY_FILE: &str = ".ash/echo-memory.json";
/// The previous prompt is quoted up to this many characters.
const QUOTE_CHARS: usize = 200;

/// What the echo backend remembers of earlier turns.
struct Memory {
    turn: u64,
    previous: String,
}

/// Records this prompt and returns what came before it; `None` on the first turn. Failing to
/// read or write the file only costs the memory, never the turn.
fn remember(prompt: &str) -> Option<Memory> {
    let earlier: Option<Value> = std::fs::read(MEMORY_FILE)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let turns = earlier
        .as_ref()
        .and_then(|m| m["turns"].as_u64())
        .unwrap_or(0);
    let now = json!({"turns": turns + 1, "last": prompt});
    let staging = format!("{MEMORY_FILE}.tmp");
    let saved = std::fs::create_dir_all(".ash")
        .and_then(|()| std::fs::write(&staging, now.to_string()))
        .and_then(|()| std::fs::rename(&staging, MEMORY_FILE));
    if let Err(e) = saved {
        eprintln!("echo: cannot keep the conversation: {e}");
    }
    let previous: String = earlier?["last"]
        .as_str()?
        .chars()
        .take(QUOTE_CHARS)
        .collect();
    Some(Memory {
        turn: turns + 1,
        previous,
    })
}

/// The text of a prompt: the string itself, or the text blocks of a content array.
pub(crate) fn prompt_text(prompt: &Value) -> String {
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
