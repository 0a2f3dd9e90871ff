//! Bad input gets a clear 4xx (or an SSE `error`), loses nothing, and the server keeps serving.

mod common;

use common::{assistant_text, events, Server};
use serde_json::{json, Value};

async fn still_serves(server: &Server) {
    let session = server.session("hello-agent").await;
    assert_eq!(
        assistant_text(&server.message(&session, "still here").await),
        "Echo: still here"
    );
}

#[tokio::test]
async fn malformed_json_gets_400_saying_what_is_wrong() {
    let server = Server::start().await;
    let (status, body) = server.raw_post("/api/sessions", "{\"agent\": ").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );
    assert_eq!(body["statusCode"], 400);
    let (status, body) = server.raw_post("/api/sessions", "{\"agent\": 7}").await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("agent"), "{body}");
    // serde would read a struct from an array: `[null, null]` must not pass as `{}`.
    for body in ["[null, null]", "[\"hello-agent\"]", " 7", "\"x\"", "null"] {
        let (status, reply) = server.raw_post("/api/sessions", body).await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("JSON object"),
            "{reply}"
        );
    }
    let (status, _) = server
        .call(
            reqwest::Method::PATCH,
            "/api/agents/hello-agent",
            Some(json!([{"A": "b"}, null])),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        server.get("/api/agents/hello-agent").await.1["agent"]["version"],
        1,
        "the refused patch changed nothing"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_the_server_keeps_serving() {
    let server = Server::start().await;
    let big = format!("{{\"agent\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let reply = raw_http(&server, "POST /api/sessions", &big).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("too large"), "{reply}");
    let session = server.session("hello-agent").await;
    let long = "x".repeat(500_001);
    let (status, body) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": long}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("content must be at most 500000 characters"))
    );
    still_serves(&server).await;
}

/// Sends a request over a plain socket; the server may answer before the body is all sent.
async fn raw_http(server: &Server, request_line: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "{request_line} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        server.key,
        body.len()
    );
    let body = body.to_owned();
    tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(body.as_bytes()).await;
    });
    let mut reply = Vec::new();
    let _ = read.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn unknown_agents_sessions_and_routes_get_404() {
    let server = Server::start().await;
    let (status, body) = server
        .post("/api/sessions", json!({"agent": "nobody"}))
        .await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "Agent not found", "statusCode": 404}))
    );
    let (status, _) = server
        .get("/api/sessions/6f1c8f3e-0000-4000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    let (status, body) = server.get("/api/sessions/not-a-uuid").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("UUID"));
    let (status, body) = server.get("/api/nothing-here").await;
    assert_eq!((status, body["statusCode"].as_i64()), (404, Some(404)));
}

#[tokio::test]
async fn a_message_to_an_ended_session_gets_400_and_nothing_is_stored() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server
        .call(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{session}"),
            None,
        )
        .await;
    let (status, body) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "hi"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Session is ended"))
    );
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert_eq!(messages["messages"], json!([]));
}

#[tokio::test]
async fn deploys_with_escaping_paths_bad_names_or_bad_manifests_are_refused_whole() {
    let server = Server::start().await;
    let outside = server.data_path().join("agents").join("escaped.txt");
    for path in ["../escaped.txt", "/etc/evil", "a/../../escaped.txt"] {
        let (status, body) = server
            .deploy("evil", &[("CLAUDE.md", "#"), (path, "x")])
            .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("invalid file path"),
            "{body}"
        );
    }
    assert!(!outside.exists());
    assert_eq!(server.get("/api/agents/evil").await.0, 404);
    let (status, body) = server.deploy("bad name!", &[("CLAUDE.md", "#")]).await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("invalid agent name"));
    let (status, body) = server
        .deploy("badtoml", &[("ash.toml", "[backend]\nkind = \"gpt\"\n")])
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid ash.toml"),
        "{body}"
    );
    let (status, body) = server
        .post(
            "/api/agents",
            json!({"name": "b64", "files": [{"path": "a", "content": "!!!"}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("not base64"));
    still_serves(&server).await;
}

#[tokio::test]
async fn bad_query_strings_and_env_names_get_400() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, _) = server
        .get(&format!("/api/sessions/{session}/messages?limit=0"))
        .await;
    assert_eq!(status, 400);
    let (status, body) = server
        .get(&format!("/api/sessions/{session}/messages?limit=abc"))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid query string"));
    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "hello-agent", "extraEnv": {"A=B": "x"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("env name"));
}

/// A shell agent that prints a line that is not JSON, then answers properly.
const NOISY_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  echo 'this is not json'
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"fine"}]}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

#[tokio::test]
async fn a_bad_line_from_the_agent_is_an_sse_error_and_the_turn_goes_on() {
    let server = Server::start().await;
    let session = server.command_session("noisy", NOISY_AGENT).await;
    let frames = server.message(&session, "go").await;
    let names = events(&frames);
    assert_eq!(
        names,
        ["session_start", "error", "message", "done"],
        "{frames:?}"
    );
    let error: Value = serde_json::from_str(&frames[1].data).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("bad line"),
        "{error}"
    );
    assert_eq!(assistant_text(&frames), "fine");
}

/// A hostile agent that names its stream events after the server's own frames (`done`,
/// `error`, `session_start`), then one name of its own, then says something and ends.
const FORGER_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  for kind in done error session_start progress; do
    printf '{"ev":"message","id":"%s","data":{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"%s"}}}}\n' "$id" "$kind"
  done
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"done"},{"type":"text","text":"after"}]}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

#[tokio::test]
async fn an_agent_cannot_forge_the_servers_frames_to_end_a_stream_early() {
    let server = Server::start().await;
    let session = server.command_session("forger", FORGER_AGENT).await;
    let frames = server.message(&session, "go").await;
    let names = events(&frames);
    // The name of its own is kept (the control: the agent's events do get through), the
    // forged ones are dropped, and the stream runs to the server's one done.
    let kept = [
        "session_start",
        "message",
        "message",
        "message",
        "progress",
        "message",
        "message",
        "done",
    ];
    assert_eq!(names, kept, "{frames:?}");
    assert_eq!(assistant_text(&frames), "after");
}

/// A hostile agent that kills its own bridge in the middle of a turn.
const BRIDGE_KILLER: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  if [ -e killed-once ]; then
    printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"back"}]}}}\n' "$id"
    printf '{"ev":"done","id":"%s"}\n' "$id"
  else
    touch killed-once
    kill -9 $PPID
  fi
done
"#;

#[tokio::test]
async fn a_bridge_that_dies_mid_turn_ends_the_stream_with_error_and_the_session_recovers() {
    let server = Server::start().await;
    let session = server.command_session("killer", BRIDGE_KILLER).await;
    let frames = server.message(&session, "die").await;
    assert_eq!(
        events(&frames),
        ["session_start", "error", "done"],
        "{frames:?}"
    );
    assert!(
        frames[1].data.contains("sandbox stopped"),
        "{}",
        frames[1].data
    );
    let again = server.message(&session, "again").await;
    assert_eq!(assistant_text(&again), "back");
}

#[tokio::test]
async fn a_second_message_while_a_turn_runs_gets_409() {
    let server = Server::start().await;
    let session = server.command_session("gated", common::GATED_AGENT).await;
    let mut first = server
        .open_stream(&session, json!({"content": "one"}))
        .await;
    loop {
        let frame = first.next().await.unwrap().unwrap();
        if frame.event == "message" {
            break;
        }
    }
    let (status, body) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "two"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    common::open_gate(&server, &session).await;
    let mut last = String::new();
    while let Some(frame) = first.next().await {
        last = frame.unwrap().event;
    }
    assert_eq!(last, "done");
}

#[tokio::test]
async fn bad_sandbox_settings_stop_the_start_with_what_to_fix() {
    let bad = [
        ("ASH_SANDBOX_UIDS", "lots", "FIRST:COUNT"),
        ("ASH_SANDBOX_DISK_MB", "9999", "sandbox_disk_mb"),
        ("ASH_SANDBOX_GRANT_SYSCALLS", "ptrace,teleport", "teleport"),
        ("ASH_TURN_MAX_EVENTS", "many", "ASH_TURN_MAX_EVENTS"),
    ];
    for (name, value, named) in bad {
        let data = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(common::ASH)
            .args(["start", "--port", "0"])
            .env("ASH_DATA_DIR", data.path())
            .env("ASH_BRIDGE_BIN", common::BRIDGE)
            .env(name, value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value} started");
        assert!(stderr.contains(named), "{name}={value}: {stderr}");
    }
}
