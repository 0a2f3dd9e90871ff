//! Usage end to end: the real `ash` binary and bwrap sandboxes, an agent program (the
//! `command` backend) reporting usage the way the Claude agent SDK does, real SQLite; the
//! totals survive a restart.

mod common;

use common::Server;
use serde_json::{json, Value};

/// Each turn: an assistant message with two tool calls, then a `result` reporting tokens.
const REPORTING_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"looking"},{"type":"tool_use","id":"t1","name":"Bash","input":{}},{"type":"tool_use","id":"t2","name":"Read","input":{}}]}}}\n' "$id"
  printf '{"ev":"message","id":"%s","data":{"type":"result","subtype":"success","is_error":false,"result":"ok","usage":{"input_tokens":100,"output_tokens":20,"cache_creation_input_tokens":5,"cache_read_input_tokens":50}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

fn totals(stats: &Value) -> [i64; 6] {
    let s = &stats["stats"];
    [
        "totalInputTokens",
        "totalOutputTokens",
        "totalCacheCreationTokens",
        "totalCacheReadTokens",
        "totalToolCalls",
        "totalMessages",
    ]
    .map(|k| s[k].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn each_turn_records_what_its_backend_reported_and_the_totals_filter_and_survive_a_restart() {
    let server = Server::start().await;
    let reporting = server.command_session("reporting", REPORTING_AGENT).await;
    server.message(&reporting, "one").await;
    server.message(&reporting, "two").await;
    let echo = server.session("hello-agent").await;
    server.message(&echo, "hi").await;

    let (status, stats) = server.get("/api/usage/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(totals(&stats), [200, 40, 10, 100, 4, 3], "{stats}");
    assert!(stats["stats"]["totalComputeSeconds"].as_f64().unwrap() > 0.0);
    let (_, of_echo) = server
        .get(&format!("/api/usage/stats?sessionId={echo}"))
        .await;
    assert_eq!(
        totals(&of_echo),
        [0, 0, 0, 0, 0, 1],
        "the echo backend reports no tokens"
    );
    let (_, of_agent) = server.get("/api/usage/stats?agentName=reporting").await;
    assert_eq!(totals(&of_agent), [200, 40, 10, 100, 4, 2]);

    let (status, listed) = server
        .get(&format!("/api/usage?sessionId={reporting}&limit=7"))
        .await;
    assert_eq!(status, 200, "{listed}");
    let events = listed["events"].as_array().unwrap();
    assert_eq!(events.len(), 7, "{listed}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "input_tokens",
            "output_tokens",
            "cache_creation_tokens",
            "cache_read_tokens",
            "tool_call",
            "message",
            "compute_seconds"
        ]
    );
    assert_eq!(
        (
            &events[0]["sessionId"],
            &events[0]["agentName"],
            &events[0]["value"]
        ),
        (&json!(reporting), &json!("reporting"), &json!(100.0))
    );
    let newest = events[0]["createdAt"].as_str().unwrap().to_owned();
    let (_, before) = server
        .get(&format!(
            "/api/usage/stats?agentName=reporting&before={newest}"
        ))
        .await;
    assert_eq!(totals(&before)[5], 1, "before the newest turn there is one");
    let (_, after) = server
        .get(&format!(
            "/api/usage/stats?agentName=reporting&after={newest}"
        ))
        .await;
    assert_eq!(totals(&after)[5], 1, "from the newest turn on there is one");

    // Bad filters get a clear 400.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "after=yesterday",
        "before=2026-13-01T00:00:00Z",
        "sessionId=not-a-uuid",
        "agentName=no%20spaces",
    ] {
        let (status, reply) = server.get(&format!("/api/usage?{query}")).await;
        assert_eq!(status, 400, "{query}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }

    let server = server.restart().await;
    assert_eq!(
        totals(&server.get("/api/usage/stats").await.1),
        [200, 40, 10, 100, 4, 3],
        "usage is stored with each turn's end"
    );
}
