//! `ash mcp`: a stdio bridge to a server's `/mcp`, for MCP clients that start a local process
//! (desktop apps). Each JSON-RPC message on stdin (one per line, at most 1 MiB) is posted to
//! `/mcp` with the key — and, once `initialize` has answered, the session id and protocol
//! version —, and what comes back (a JSON body, or an SSE stream's messages) goes to stdout,
//! one message per line. After `notifications/initialized`, the server's own messages (such
//! as `notifications/tools/list_changed`) come over its GET stream. When stdin ends, the
//! session is deleted. Nothing but MCP messages is written to stdout.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use ash_cli::client::Client;
use ash_cli::sse;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;

/// The largest message taken from stdin, as the server's body cap.
const MAX_MESSAGE: usize = 1024 * 1024;

/// The session, once `initialize` has answered: its id and protocol version.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
}

type Shared = Arc<Mutex<Session>>;

pub async fn run(client: Client) -> anyhow::Result<std::process::ExitCode> {
    let client = Arc::new(client);
    let (out, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            stdout.write_all(line.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
            stdout.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let session = Shared::default();
    let mut stdin =
        ash_protocol::LineReader::new(tokio::io::BufReader::new(tokio::io::stdin()), MAX_MESSAGE);
    let mut calls = tokio::task::JoinSet::new();
    let mut listening = false;
    while let Some(read) = stdin.next::<Value>().await {
        let message = match read {
            Ok(message) => message,
            Err(ash_protocol::ProtocolError::Io(e)) => return Err(e).context("reading stdin"),
            Err(e) => {
                let _ =
                    out.send(error(Value::Null, -32700, &format!("parse error: {e}")).to_string());
                continue;
            }
        };
        let method = message["method"].as_str().unwrap_or_default().to_owned();
        if method == "initialize" {
            // Answered before anything else is sent: it names the session the rest goes to.
            post(&client, &session, message, &out).await;
        } else {
            let (client, session, out) = (client.clone(), session.clone(), out.clone());
            calls.spawn(async move { post(&client, &session, message, &out).await });
        }
        if method == "notifications/initialized" && !listening {
            listening = true;
            let (client, session, out) = (client.clone(), session.clone(), out.clone());
            tokio::spawn(async move { listen(&client, &session, &out).await });
        }
    }
    while calls.join_next().await.is_some() {}
    let id = session.lock().expect("lock").id.clone();
    if let Some(id) = id {
        let _ = client
            .request(Method::DELETE, "/mcp")
            .header("mcp-session-id", id)
            .send()
            .await;
    }
    drop(out);
    writer.await??;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A JSON-RPC error answering `id`.
fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A request to `/mcp` in the session, as far as it is known.
fn request(client: &Client, session: &Shared, method: Method) -> reqwest::RequestBuilder {
    let mut request = client
        .request(method, "/mcp")
        .header("accept", "application/json, text/event-stream");
    let session = session.lock().expect("lock");
    if let Some(id) = &session.id {
        request = request.header("mcp-session-id", id);
    }
    if let Some(version) = &session.version {
        request = request.header("mcp-protocol-version", version);
    }
    request
}

/// Posts one message and writes what answers it.
async fn post(client: &Client, session: &Shared, message: Value, out: &UnboundedSender<String>) {
    let id = message.get("id").cloned();
    let initialize = message["method"] == "initialize";
    let sent = request(client, session, Method::POST)
        .json(&message)
        .send()
        .await;
    let fail = |why: &str| {
        if let Some(id) = &id {
            let _ = out.send(error(id.clone(), -32603, why).to_string());
        }
    };
    let response = match sent {
        Ok(response) => response,
        Err(e) => return fail(&format!("cannot reach the Ash server: {e}")),
    };
    if initialize {
        if let Some(session_id) = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            session.lock().expect("lock").id = Some(session_id.to_owned());
        }
    }
    let status = response.status();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if kind.starts_with("text/event-stream") {
        let mut events = sse::Reader::new(response.bytes_stream());
        while let Some(Ok(frame)) = events.next().await {
            if !frame.data.trim().is_empty() {
                answered(session, initialize, &frame.data);
                let _ = out.send(frame.data);
            }
        }
        return;
    }
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&body) {
        Ok(reply) if reply.get("jsonrpc").is_some() => {
            answered(session, initialize, &body);
            let _ = out.send(reply.to_string());
        }
        // The edge's own refusals (401, 413, …) are not JSON-RPC: say them as errors.
        Ok(refusal) if !status.is_success() => {
            let said = refusal["error"].as_str().unwrap_or("refused");
            fail(&format!("the Ash server answered {status}: {said}"));
        }
        _ if status.is_success() => {}
        _ => fail(&format!("the Ash server answered {status}")),
    }
}

/// Notes the protocol version `initialize` settled on.
fn answered(session: &Shared, initialize: bool, reply: &str) {
    if !initialize {
        return;
    }
    let reply: Value = serde_json::from_str(reply).unwrap_or_default();
    if let Some(version) = reply["result"]["protocolVersion"].as_str() {
        session.lock().expect("lock").version = Some(version.to_owned());
    }
}

/// Writes the server's own messages from its GET stream, until it ends.
async fn listen(client: &Client, session: &Shared, out: &UnboundedSender<String>) {
    let Ok(response) = request(client, session, Method::GET).send().await else {
        return;
    };
    if !response.status().is_success() {
        return;
    }
    let mut events = sse::Reader::new(response.bytes_stream());
    while let Some(Ok(frame)) = events.next().await {
        if !frame.data.trim().is_empty() {
            let _ = out.send(frame.data);
        }
    }
}
