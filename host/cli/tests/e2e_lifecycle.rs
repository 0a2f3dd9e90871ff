//! Pause, stop and resume, warm and cold, through real sandboxes: the files and the
//! conversation (the echo backend quotes the previous prompt) survive every path.

mod common;

use common::{assistant_text, Server};
use serde_json::{json, Value};

async fn act(server: &Server, session: &str, action: &str) -> (u16, Value) {
    server
        .post(&format!("/api/sessions/{session}/{action}"), json!({}))
        .await
}

async fn live_sandboxes(server: &Server) -> i64 {
    server.get("/health").await.1["activeSandboxes"]
        .as_i64()
        .unwrap()
}

async fn metric(server: &Server, line: &str) -> bool {
    server.metrics().await.lines().any(|l| l == line)
}

#[tokio::test]
async fn pause_then_resume_is_warm_and_keeps_the_conversation() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "first").await;
    let (status, body) = act(&server, &session, "pause").await;
    assert_eq!(
        (status, body["session"]["status"].as_str()),
        (200, Some("paused"))
    );
    let (status, body) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Session is paused"))
    );
    let (status, body) = act(&server, &session, "pause").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Cannot pause a session that is paused"))
    );
    assert_eq!(
        live_sandboxes(&server).await,
        1,
        "a paused session keeps its sandbox warm"
    );

    let (status, body) = act(&server, &session, "resume").await;
    assert_eq!(
        (status, body["session"]["status"].as_str()),
        (200, Some("active"))
    );
    assert!(metric(&server, "ash_resume_total{path=\"warm\"} 1").await);
    assert_eq!(server.get("/health").await.1["pool"]["resumeWarmHits"], 1);
    assert_eq!(
        assistant_text(&server.message(&session, "second").await),
        "Echo: second (turn 2, previous: first)"
    );
}

#[tokio::test]
async fn stop_then_resume_is_cold_and_keeps_files_and_conversation() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "before stop").await;
    std::fs::write(server.workspace(&session).join("notes.txt"), "mine").unwrap();
    let (status, body) = act(&server, &session, "stop").await;
    assert_eq!(
        (status, body["session"]["status"].as_str()),
        (200, Some("stopped"))
    );
    assert_eq!(
        live_sandboxes(&server).await,
        0,
        "a stopped session has no sandbox"
    );
    let pool = |health: Value| {
        let p = &health["pool"];
        [&p["cold"], &p["waiting"], &p["running"], &p["total"]].map(|v| v.as_i64().unwrap())
    };
    assert_eq!(
        pool(server.get("/health").await.1),
        [1, 0, 0, 1],
        "cold, waiting, running, total"
    );
    assert!(metric(&server, "ash_pool_sandboxes{state=\"cold\"} 1").await);
    let (status, _) = act(&server, &session, "stop").await;
    assert_eq!(status, 400);

    let (status, body) = act(&server, &session, "resume").await;
    assert_eq!(
        (status, body["session"]["status"].as_str()),
        (200, Some("active"))
    );
    assert!(metric(&server, "ash_resume_total{path=\"cold\"} 1").await);
    assert_eq!(pool(server.get("/health").await.1), [0, 1, 0, 1]);
    assert_eq!(
        assistant_text(&server.message(&session, "after").await),
        "Echo: after (turn 2, previous: before stop)"
    );
    assert_eq!(
        std::fs::read_to_string(server.workspace(&session).join("notes.txt")).unwrap(),
        "mine"
    );
}

#[tokio::test]
async fn a_lost_workspace_comes_back_from_the_snapshot_on_cold_resume() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "remember me").await;
    std::fs::write(server.workspace(&session).join("data.txt"), "precious").unwrap();
    act(&server, &session, "stop").await;
    std::fs::remove_dir_all(server.workspace(&session)).unwrap();

    let (status, _) = act(&server, &session, "resume").await;
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::read_to_string(server.workspace(&session).join("data.txt")).unwrap(),
        "precious"
    );
    assert_eq!(
        assistant_text(&server.message(&session, "back").await),
        "Echo: back (turn 2, previous: remember me)"
    );
}

#[tokio::test]
async fn a_paused_session_resumes_cold_after_a_server_restart() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "one").await;
    act(&server, &session, "pause").await;
    let server = server.restart().await;
    let (_, shown) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(shown["session"]["status"], "paused");
    let (status, _) = act(&server, &session, "resume").await;
    assert_eq!(status, 200);
    assert!(metric(&server, "ash_resume_total{path=\"cold\"} 1").await);
    assert_eq!(
        assistant_text(&server.message(&session, "two").await),
        "Echo: two (turn 2, previous: one)"
    );
}

#[tokio::test]
async fn an_ended_session_cannot_be_resumed_and_leaves_nothing_on_disk() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    act(&server, &session, "pause").await;
    server
        .call(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{session}"),
            None,
        )
        .await;
    let (status, body) = act(&server, &session, "resume").await;
    assert_eq!(status, 410);
    assert!(body["error"].as_str().unwrap().contains("ended"));
    assert!(!server.workspace(&session).exists());
    assert!(
        !server.data_path().join("snapshots").join(&session).exists(),
        "snapshots outlived the session"
    );
    let (status, _) = act(&server, &session, "pause").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn resuming_an_active_session_changes_nothing() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, body) = act(&server, &session, "resume").await;
    assert_eq!(
        (status, body["session"]["status"].as_str()),
        (200, Some("active"))
    );
    assert!(!metric(&server, "ash_resume_total{path=\"warm\"} 1").await);
}

#[tokio::test]
async fn pause_or_stop_during_a_turn_gets_409_and_the_turn_goes_on() {
    let server = Server::start().await;
    server
        .deploy("slow", &[("ash.toml", common::SLOW_ECHO_TOML)])
        .await;
    let session = server.session("slow").await;
    let body = json!({"content": "a b c d e f g h", "includePartialMessages": true});
    let mut stream = server.open_stream(&session, body).await;
    Server::read_until(&mut stream, |f| f.event == "text_delta").await;
    for action in ["pause", "stop"] {
        let (status, body) = act(&server, &session, action).await;
        assert_eq!(status, 409, "{action}: {body}");
    }
    act(&server, &session, "interrupt").await;
    Server::read_until(&mut stream, |f| f.event == "done").await;
    let (status, _) = act(&server, &session, "pause").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn fork_copies_files_and_conversation_and_both_go_their_own_way() {
    let server = Server::start().await;
    let parent = server.session("hello-agent").await;
    server.message(&parent, "shared past").await;
    std::fs::write(server.workspace(&parent).join("plan.txt"), "v1").unwrap();
    let (status, body) = act(&server, &parent, "fork").await;
    assert_eq!(status, 201, "{body}");
    let child = body["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            body["session"]["status"].as_str(),
            body["session"]["parentSessionId"].as_str()
        ),
        (Some("paused"), Some(parent.as_str()))
    );
    assert_eq!(
        std::fs::read_to_string(server.workspace(&child).join("plan.txt")).unwrap(),
        "v1"
    );
    let (_, messages) = server.get(&format!("/api/sessions/{child}/messages")).await;
    assert_eq!(
        messages["messages"].as_array().unwrap().len(),
        3,
        "the conversation is copied"
    );

    act(&server, &child, "resume").await;
    assert_eq!(
        assistant_text(&server.message(&child, "child says").await),
        "Echo: child says (turn 2, previous: shared past)"
    );
    assert_eq!(
        assistant_text(&server.message(&parent, "parent says").await),
        "Echo: parent says (turn 2, previous: shared past)"
    );
    server
        .call(
            reqwest::Method::DELETE,
            &format!("/api/sessions/{parent}"),
            None,
        )
        .await;
    let (status, _) = act(&server, &parent, "fork").await;
    assert_eq!(status, 410);
}
