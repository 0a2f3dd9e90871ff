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

/// An agent whose every turn sends `$1` messages of `$2` bytes each, then `done`.
const FLOOD_AGENT: &str = r#"#!/bin/sh
exec python3 -c '
import json, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("cmd") != "query":
        continue
    text = "a" * size
    for _ in range(count):
        msg = {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}}
        print(json.dumps({"ev": "message", "id": cmd["id"], "data": msg}), flush=True)
    print(json.dumps({"ev": "done", "id": cmd["id"]}), flush=True)
' "$@"
"#;

/// Deploys the flood agent sending `count` messages of `size` bytes per turn; a session of it.
async fn flood_session(server: &Server, count: u32, size: u32) -> String {
    let manifest = format!(
        "[backend]\nkind = \"command\"\nargv = [\"/bin/sh\", \"agent.sh\", \"{count}\", \"{size}\"]\n"
    );
    let (status, body) = server
        .deploy(
            "flood",
            &[("ash.toml", &manifest), ("agent.sh", FLOOD_AGENT)],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    server.session("flood").await
}

async fn flood(server: &Server, count: u32, size: u32) -> (String, Vec<ash_cli::sse::Frame>) {
    let session = flood_session(server, count, size).await;
    let frames = server.message(&session, "go").await;
    (session, frames)
}

#[tokio::test]
async fn a_turn_past_its_event_byte_cap_is_stopped_with_a_limit_frame_and_nothing_more_is_kept() {
    let server = Server::start_with_env(&[("ASH_TURN_MAX_EVENT_MB", "8")]).await;
    let (session, frames) = flood(&server, 40, 1 << 20).await;
    let limit = limit_of(&frames);
    assert_eq!(limit["kind"], "event_bytes", "{limit}");
    assert_eq!(limit["limit"], 8 << 20);
    assert_eq!(events(&frames).last(), Some(&"done"));
    let kept: usize = frames.iter().map(|f| f.data.len()).sum();
    assert!(
        kept < 16 << 20,
        "the turn kept {kept} bytes past an 8 MiB cap"
    );
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    let stored = messages["messages"].as_array().unwrap().len();
    assert!(stored < 20, "{stored} messages stored past the cap");
    // The server keeps serving.
    let other = server.session("hello-agent").await;
    assert_eq!(
        assistant_text(&server.message(&other, "hi").await),
        "Echo: hi"
    );
}

#[tokio::test]
async fn a_turn_past_its_event_count_cap_is_stopped_and_a_turn_within_it_is_not() {
    let server = Server::start_with_env(&[("ASH_TURN_MAX_EVENTS", "300")]).await;
    let (_, frames) = flood(&server, 1000, 10).await;
    assert_eq!(limit_of(&frames)["kind"], "events");
    assert!(
        frames.len() < 600,
        "{} frames past a cap of 300",
        frames.len()
    );
    // Control: the same agent under the default caps sends everything.
    let roomy = Server::start().await;
    let (_, frames) = flood(&roomy, 1000, 10).await;
    assert!(!events(&frames).contains(&"limit"));
    assert!(frames.len() >= 1000);
}

#[tokio::test]
async fn a_session_at_its_log_cap_ends_its_turns_with_a_limit_frame() {
    // Small turns: each fits in one batch, so the cap must count the session's whole log.
    let server = Server::start_with_env(&[("ASH_SESSION_MAX_EVENTS", "40")]).await;
    let session = flood_session(&server, 10, 10).await;
    let mut kinds = Vec::new();
    for _ in 0..6 {
        let frames = server.message(&session, "go").await;
        kinds.push(frames.iter().any(|f| f.event == "limit"));
    }
    assert!(!kinds[0], "the first turn fits");
    assert!(
        kinds[4] && kinds[5],
        "turns past the session cap: {kinds:?}"
    );
}

#[tokio::test]
async fn a_session_at_its_log_byte_cap_ends_its_turns_with_a_limit_frame_across_restarts() {
    // One ~300 kB message per turn is logged two or three times over (its frames and the
    // stored message): one turn fits under 1 MiB, two do not.
    let server = Server::start_with_env(&[("ASH_SESSION_MAX_EVENT_MB", "1")]).await;
    let session = flood_session(&server, 1, 300000).await;
    let first = server.message(&session, "go").await;
    assert!(!events(&first).contains(&"limit"), "the first turn fits");
    // The count is kept with the session: a restart does not reset it.
    let server = server.restart().await;
    let second = server.message(&session, "go").await;
    let limit = limit_of(&second);
    assert_eq!(limit["kind"], "session_event_bytes", "{limit}");
    assert_eq!(limit["limit"], 1 << 20);
    assert_eq!(events(&second).last(), Some(&"done"));
    // Control: a new session of the same agent has room for the same turn.
    let fresh = server.session("flood").await;
    let frames = server.message(&fresh, "go").await;
    assert!(!events(&frames).contains(&"limit"));
}

/// Holds 150 MiB in the session's sandbox; the exec's reply.
async fn hog(server: &Server, session: &str) -> Value {
    let hog = "python3 -c 'a = bytearray(150 << 20); a[::4096] = b\"x\" * len(a[::4096]); print(\"held\")'";
    let body = serde_json::json!({ "command": hog });
    server
        .post(&format!("/api/sessions/{session}/exec"), body)
        .await
        .1
}

#[tokio::test]
async fn all_sandboxes_together_are_held_to_the_memory_budget() {
    let doctor = std::process::Command::new(common::ASH)
        .arg("doctor")
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&doctor.stdout).contains("ok       resource limits") {
        return; // no cgroups this server may manage here, so no budget to enforce
    }
    let tight = Server::start_with_env(&[
        ("ASH_SANDBOX_MEMORY_MB", "512"),
        ("ASH_SANDBOX_MEMORY_BUDGET_MB", "96"),
    ])
    .await;
    let session = tight.session("hello-agent").await;
    let out = hog(&tight, &session).await;
    assert_ne!(
        out["stdout"], "held\n",
        "150 MiB held under a 96 MiB budget: {out}"
    );
    // Control: the same sandbox limit with room in the budget holds it.
    let roomy = Server::start_with_env(&[("ASH_SANDBOX_MEMORY_MB", "512")]).await;
    let session = roomy.session("hello-agent").await;
    assert_eq!(hog(&roomy, &session).await["stdout"], "held\n");
}
