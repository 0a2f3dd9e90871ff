//! The `openai` backend: one streamed chat-completions request per turn to an
//! OpenAI-compatible endpoint, through the host's model proxy — a Unix socket the host binds
//! into the sandbox at [`MODEL_SOCKET`], which adds the API key, so the key never enters the
//! sandbox.
//!
//! The conversation (the workspace's `CLAUDE.md` as the system prompt, then every completed
//! user and assistant turn) is kept in the workspace, so it survives a restart or a cold
//! resume. Messages go out in the Claude agent SDK's shapes (stream deltas when partial
//! messages are asked for, then `assistant`, then `result`), so clients see one vocabulary.
//!
//! An endpoint that answers an error status, ends its stream early or sends a line that is
//! not SSE JSON ends the turn with an error naming the status and what to check; a failed
//! turn is not added to the conversation, so the session stays usable.

use ash_protocol::{Event, QueryOptions, MODEL_SOCKET};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::echo::prompt_text;
use crate::failure::{end_turn, Failure};
use crate::Events;

/// Where the conversation is kept, inside the workspace.
const CONVERSATION_FILE: &str = ".ash/openai-conversation.json";
/// The system prompt file, at the workspace root.
const SYSTEM_PROMPT_FILE: &str = "CLAUDE.md";
/// Messages of earlier turns kept; older ones are dropped from the conversation.
const MAX_MESSAGES: usize = 200;
/// The longest SSE line, and the most of an error body quoted.
const MAX_LINE: usize = 1024 * 1024;
const MAX_QUOTE: usize = 300;
/// The longest reply kept (a runaway stream is cut with an error).
const MAX_REPLY: usize = 4 * 1024 * 1024;

pub(crate) struct Turn {
    pub id: String,
    pub prompt: Value,
    pub session_id: String,
    pub options: QueryOptions,
    pub model: String,
    /// Named in hints: where the key comes from.
    pub api_key_env: String,
}

pub(crate) async fn run(turn: Turn, events: Events) {
    let outcome = converse(&turn, &events).await;
    end_turn(&events, turn.id, outcome).await;
}

async fn converse(turn: &Turn, events: &Events) -> Result<(), Failure> {
    let send = |data: Value| async move {
        events
            .send(Event::Message {
                id: turn.id.clone(),
                data,
            })
            .await
            .map_err(|_| "the host went away".to_owned())
    };
    let model = turn
        .options
        .extra
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&turn.model)
        .to_owned();
    let mut history = load_history();
    history.push(json!({"role": "user", "content": prompt_text(&turn.prompt)}));
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Ok(system) = std::fs::read_to_string(SYSTEM_PROMPT_FILE) {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(history.iter().cloned());
    // The last chunk carries the tokens the endpoint counted, reported in the turn's `result`.
    let body = json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": messages});

    let mut response = post("/chat/completions", body.to_string()).await?;
    let status = response.status();
    if !status.is_success() {
        let quoted = quote(response.into_body()).await;
        return Err(Failure::upstream(
            format!("the model endpoint answered {status}: {quoted}"),
            status.as_u16(),
            &turn.api_key_env,
        ));
    }
    let mut reply = String::new();
    let mut usage = json!({});
    let mut lines = Lines::default();
    let mut finished = false;
    while let Some(frame) = response.frame().await {
        let frame = frame.map_err(|e| format!("the model endpoint's stream broke: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for line in lines.push(data)? {
            let Some(payload) = line.strip_prefix("data:").map(str::trim) else {
                continue; // comments, `event:` and blank lines
            };
            if payload == "[DONE]" {
                finished = true;
                break;
            }
            let chunk: Value = serde_json::from_str(payload).map_err(|_| {
                format!(
                    "the model endpoint sent a stream line that is not JSON: {} (is base_url an OpenAI-compatible /v1 endpoint?)",
                    cut(payload)
                )
            })?;
            if let Some(error) = chunk.get("error") {
                return Err(format!(
                    "the model endpoint failed mid-stream: {}",
                    cut(&error.to_string())
                )
                .into());
            }
            if let Some(counted) = chunk.get("usage").filter(|u| u.is_object()) {
                usage = json!({
                    "input_tokens": counted["prompt_tokens"],
                    "output_tokens": counted["completion_tokens"],
                    "cache_read_input_tokens": counted["prompt_tokens_details"]["cached_tokens"],
                });
            }
            let piece = chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default();
            if piece.is_empty() {
                continue;
            }
            reply.push_str(piece);
            if reply.len() > MAX_REPLY {
                return Err(format!("the reply passed {MAX_REPLY} bytes and was cut").into());
            }
            if turn.options.include_partial_messages {
                send(
                    json!({"type": "stream_event", "session_id": turn.session_id, "event": {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}}),
                )
                .await?;
            }
        }
        if finished {
            break;
        }
    }
    if !finished {
        return Err(
            "the model endpoint's stream ended before [DONE]; send the message again"
                .to_owned()
                .into(),
        );
    }
    history.push(json!({"role": "assistant", "content": reply}));
    save_history(&history);
    let turns = history.iter().filter(|m| m["role"] == "user").count();
    send(
        json!({"type": "assistant", "session_id": turn.session_id, "message": {
        "role": "assistant", "model": model, "content": [{"type": "text", "text": reply}]}}),
    )
    .await?;
    send(
        json!({"type": "result", "subtype": "success", "is_error": false, "num_turns": turns,
        "result": reply, "session_id": turn.session_id, "usage": usage}),
    )
    .await?;
    Ok(())
}

/// Sends one request to the host's model proxy.
async fn post(path: &str, body: String) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::UnixStream::connect(MODEL_SOCKET)
        .await
        .map_err(|e| format!("the host's model proxy at {MODEL_SOCKET} is not reachable: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the host's model proxy failed: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", "model-proxy")
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("the host's model proxy failed: {e}"))
}

/// The start of an error body, as text.
async fn quote(body: hyper::body::Incoming) -> String {
    let limited = http_body_util::Limited::new(body, 64 * 1024);
    match limited.collect().await {
        Ok(collected) => cut(&String::from_utf8_lossy(&collected.to_bytes())),
        Err(_) => "(no readable body)".into(),
    }
}

fn cut(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Splits a byte stream into lines, capped.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn push(&mut self, data: &[u8]) -> Result<Vec<String>, String> {
        self.pending.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_owned());
        }
        if self.pending.len() > MAX_LINE {
            return Err(format!(
                "the model endpoint sent a line longer than {MAX_LINE} bytes"
            ));
        }
        Ok(lines)
    }
}

/// The earlier turns; a missing or unreadable file is an empty conversation.
fn load_history() -> Vec<Value> {
    std::fs::read(CONVERSATION_FILE)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<Value>>(&bytes).ok())
        .unwrap_or_default()
}

/// Keeps the conversation (the newest [`MAX_MESSAGES`]), written whole; failing costs only
/// the memory, never the turn.
fn save_history(history: &[Value]) {
    let kept = &history[history.len().saturating_sub(MAX_MESSAGES)..];
    let staging = format!("{CONVERSATION_FILE}.tmp");
    let saved = std::fs::create_dir_all(".ash")
        .and_then(|()| std::fs::write(&staging, Value::from(kept.to_vec()).to_string()))
        .and_then(|()| std::fs::rename(&staging, CONVERSATION_FILE));
    if let Err(e) = saved {
        eprintln!("openai: cannot keep the conversation: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_capped() {
        let mut lines = Lines::default();
        assert!(lines.push(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(
            lines.push(b":1}\r\n\ndata: [DONE]\n").unwrap(),
            ["data: {\"a\":1}", "", "data: [DONE]"]
        );
        assert!(lines.push(&vec![b'x'; MAX_LINE + 1]).is_err());
    }
}
