//! `/mcp` fed garbage over raw HTTP: each bad message gets a JSON-RPC error or a 4xx, and the
//! frontend keeps serving. (The official SDKs' own tests are in `e2e_tools.rs`.)

mod common;

use common::Server;
use serde_json::{json, Value};

const ACCEPT: &str = "application/json, text/event-stream";

/// Posts raw `body` to `/mcp` (in the session, when given): the status and the JSON-RPC
/// messages of the reply (an SSE stream's `data:` lines, or a JSON body).
async fn post(
    server: &Server,
    session: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Vec<Value>, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .bearer_auth(&server.key)
        .header("content-type", "application/json")
        .header("accept", ACCEPT)
        .body(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let messages = match serde_json::from_str::<Value>(&text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect(),
    };
    (status, messages, session)
}

fn initialize(version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
    .to_string()
}

/// An initialized session: its id.
async fn session(server: &Server) -> String {
    let (status, messages, session) = post(server, None, &[], initialize("2025-06-18")).await;
    assert_eq!(status, 200, "{messages:?}");
    let session = session.expect("a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = post(server, Some(&session), &[], initialized.to_string()).await;
    assert_eq!(status, 202);
    session
}

async fn still_lists_tools(server: &Server, session: &str) {
    let list = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}).to_string();
    let (status, messages, _) = post(server, Some(session), &[], list).await;
    assert_eq!(status, 200, "{messages:?}");
    assert!(messages[0]["result"]["tools"].is_array(), "{messages:?}");
}

#[tokio::test]
async fn an_unknown_protocol_version_is_answered_with_one_the_server_speaks() {
    let server = Server::start().await;
    let (status, messages, _) = post(&server, None, &[], initialize("1999-01-01")).await;
    assert_eq!(status, 200, "{messages:?}");
    let offered = messages[0]["result"]["protocolVersion"].as_str().unwrap();
    assert!(
        offered.starts_with("20") && offered != "1999-01-01",
        "{messages:?}"
    );
    // On later requests, an unsupported MCP-Protocol-Version header is a 400.
    let session = session(&server).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let (status, _, _) = post(
        &server,
        Some(&session),
        &[("mcp-protocol-version", "1999-01-01")],
        list,
    )
    .await;
    assert_eq!(status, 400);
    still_lists_tools(&server, &session).await;
}

#[tokio::test]
async fn malformed_oversized_and_batched_messages_are_refused_and_the_frontend_keeps_serving() {
    let server = Server::start().await;
    let session = session(&server).await;
    for (what, body) in [
        (
            "not JSON",
            "{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\":".to_owned(),
        ),
        ("not JSON-RPC", json!({"hello": "world"}).to_string()),
        ("a number", "42".to_owned()),
        (
            "an unknown method",
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/teleport"}).to_string(),
        ),
        (
            "a call without a name",
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {}}).to_string(),
        ),
    ] {
        let (status, messages, _) = post(&server, Some(&session), &[], body).await;
        let error = messages.first().and_then(|m| m.get("error"));
        assert!(
            (400..500).contains(&status) || error.is_some_and(|e| e["code"].is_i64()),
            "{what}: {status} {messages:?}"
        );
    }
    // A batch of a thousand calls: batches are not part of the protocol any more.
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/list"}))
        .collect();
    let (status, messages, _) = post(
        &server,
        Some(&session),
        &[],
        Value::Array(batch).to_string(),
    )
    .await;
    let answered = messages
        .iter()
        .filter(|m| m.get("result").is_some())
        .count();
    assert!(
        (400..500).contains(&status) || answered == 0,
        "a batch was run: {status}, {answered} results"
    );
    // Past the 1 MiB cap.
    let big = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "x", "arguments": {"pad": "x".repeat(2 << 20)}}});
    let (status, _, _) = post(&server, Some(&session), &[], big.to_string()).await;
    assert_eq!(status, 413);
    // A session that does not exist.
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}).to_string();
    let (status, _, _) = post(&server, Some("no-such-session"), &[], list).await;
    assert!((400..500).contains(&status), "{status}");
    still_lists_tools(&server, &session).await;
    assert_eq!(server.get("/health").await.0, 200);
}
