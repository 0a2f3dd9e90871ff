//! Resource limits in real sandboxes: a memory bomb and a fork bomb stay inside their limits,
//! each hit arrives as a typed `limit` frame, and the server keeps serving other sessions.

mod common;

use common::{assistant_text, events, Server};
use serde_json::Value;

/// An agent whose every turn runs `$1` (a shell snippet from ash.toml's argv), then answers.
const BOMB_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  sh -c "$1" >/dev/null 2>&1
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"survived"}]}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

fn manifest(snippet: &str, limits: &str) -> String {
    format!("[backend]\nkind = \"command\"\nargv = [\"/bin/sh\", \"agent.sh\", {snippet:?}]\n\n[limits]\n{limits}\n")
}

async fn bomb(
    server: &Server,
    name: &str,
    snippet: &str,
    limits: &str,
) -> Vec<ash_cli::sse::Frame> {
    let (status, body) = server
        .deploy(
            name,
            &[
                ("ash.toml", &manifest(snippet, limits)),
                ("agent.sh", BOMB_AGENT),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.session(name).await;
    server.message(&session, "go").await
}

fn limit_of(frames: &[ash_cli::sse::Frame]) -> Value {
    let frame = frames
        .iter()
        .find(|f| f.event == "limit")
        .unwrap_or_else(|| panic!("no limit frame in {:?}", events(frames)));
    serde_json::from_str(&frame.data).unwrap()
}

#[tokio::test]
async fn a_memory_bomb_is_killed_at_the_agents_limit_and_reported() {
    let server = Server::start().await;
    let frames = bomb(
        &server,
        "membomb",
        "x=$(yes | head -c 400000000)",
        "memory_mb = 64",
    )
    .await;
    let hit = limit_of(&frames);
    assert_eq!(
        (hit["kind"].as_str(), hit["limit"].as_u64()),
        (Some("memory"), Some(64 << 20)),
        "{hit}"
    );
    assert_eq!(events(&frames).last(), Some(&"done"));
    assert_eq!(assistant_text(&frames), "survived");
    let other = server.session("hello-agent").await;
    assert_eq!(
        assistant_text(&server.message(&other, "still fine").await),
        "Echo: still fine"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("ash_limit_hits_total{kind=\"memory\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit_and_is_reported() {
    let server = Server::start().await;
    let snippet = "for i in $(seq 200); do sleep 60 & done; kill $(jobs -p)";
    let frames = bomb(&server, "forkbomb", snippet, "max_processes = 32").await;
    let hit = limit_of(&frames);
    assert_eq!(
        (hit["kind"].as_str(), hit["limit"].as_u64()),
        (Some("pids"), Some(32)),
        "{hit}"
    );
    assert_eq!(events(&frames).last(), Some(&"done"));
    let other = server.session("hello-agent").await;
    assert_eq!(
        assistant_text(&server.message(&other, "unharmed").await),
        "Echo: unharmed"
    );
}

#[tokio::test]
async fn limits_out_of_range_are_refused_at_deploy() {
    let server = Server::start().await;
    let (status, body) = server
        .deploy("greedy", &[("ash.toml", "[limits]\nmemory_mb = 4\n")])
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("limits.memory_mb"),
        "{body}"
    );
}
