//! `POST /api/sessions/:id/exec`: commands run inside the session's real sandbox.

mod common;

use common::Server;
use serde_json::{json, Value};

async fn exec(server: &Server, session: &str, body: Value) -> (u16, Value) {
    server
        .post(&format!("/api/sessions/{session}/exec"), body)
        .await
}

#[tokio::test]
async fn exec_runs_in_the_workspace_inside_the_sandbox() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, out) = exec(
        &server,
        &session,
        json!({"command": "pwd; id -u; cat CLAUDE.md; echo oops >&2; exit 3"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["exitCode"], 3);
    assert_eq!(
        out["stdout"],
        "/workspace\n1000\n# hello-agent\n\nYou are a friendly example agent. Answer briefly.\n"
    );
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["timedOut"], false);
}

#[tokio::test]
async fn a_command_that_runs_forever_is_killed_at_its_timeout_with_its_children() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, out) = exec(
        &server,
        &session,
        json!({"command": "sleep 600 & sleep 600; echo never", "timeout": 300}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (out["exitCode"].as_i64(), out["timedOut"].as_bool()),
        (Some(124), Some(true))
    );
    let (_, count) = exec(
        &server,
        &session,
        json!({"command": "ls /proc | grep -c '^[0-9]'"}),
    )
    .await;
    let processes: u32 = count["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(
        processes <= 5,
        "the killed command's children live on: {processes} processes"
    );
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_and_flagged() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, out) = exec(
        &server,
        &session,
        json!({"command": "head -c 3000000 /dev/zero | tr '\\0' a"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(out["truncated"], true);
}

#[tokio::test]
async fn bad_exec_requests_get_400() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    for body in [
        json!({"command": ""}),
        json!({"command": "true", "timeout": 0}),
        json!({"command": "true", "timeout": 300001}),
    ] {
        let (status, out) = exec(&server, &session, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {out}");
    }
    server
        .post(&format!("/api/sessions/{session}/pause"), json!({}))
        .await;
    let (status, out) = exec(&server, &session, json!({"command": "true"})).await;
    assert_eq!(
        (status, out["error"].as_str()),
        (400, Some("Session is paused"))
    );
}
