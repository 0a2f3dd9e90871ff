//! The event log and its streams: exact replay, live follow, interrupt, disconnects, crashes.

mod common;

use common::{events, open_gate, streamed_text, Server, GATED_AGENT};
use serde_json::{json, Value};

fn seq(frame: &ash_cli::sse::Frame) -> i64 {
    frame.id.as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn replay_after_a_disconnect_is_exact_no_gap_no_duplicate() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let mut seen = server.message(&session, "first turn here").await;
    seen.extend(server.message(&session, "second").await);
    let ids: Vec<i64> = seen.iter().map(seq).collect();
    assert_eq!(
        ids,
        (1..=seen.len() as i64).collect::<Vec<_>>(),
        "ids are the log's gap-free sequence"
    );
    let cut = 5;
    let last = seen.len() as i64;
    let mut replay = server.open_log_stream(&session, Some(cut)).await;
    let got = Server::read_until(&mut replay, |f| seq(f) == last).await;
    assert_eq!(got, seen[cut as usize..].to_vec());
}

#[tokio::test]
async fn the_stream_endpoint_follows_new_turns_live() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let before = server.message(&session, "one").await;
    let mut live = server
        .open_log_stream(&session, Some(before.len() as i64))
        .await;
    let turn = server.message(&session, "two").await;
    let followed = Server::read_until(&mut live, |f| f.event == "done").await;
    assert_eq!(followed, turn);
}

#[tokio::test]
async fn the_events_endpoint_pages_and_filters_the_log() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "a b c").await;
    let (status, body) = server
        .get(&format!("/api/sessions/{session}/events?type=text_delta"))
        .await;
    assert_eq!(status, 200);
    let deltas = body["events"].as_array().unwrap();
    assert_eq!(
        deltas.len(),
        events(&frames)
            .iter()
            .filter(|e| **e == "text_delta")
            .count()
    );
    assert_eq!(deltas[0]["type"], "text_delta");
    assert_eq!(deltas[0]["sessionId"], session);
    let (_, page) = server
        .get(&format!("/api/sessions/{session}/events?after=2&limit=3"))
        .await;
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    let (status, _) = server
        .get(&format!("/api/sessions/{session}/events?limit=5000"))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_stop_the_turn() {
    let server = Server::start().await;
    let session = server.command_session("gated", GATED_AGENT).await;
    let mut stream = server.open_stream(&session, json!({"content": "go"})).await;
    let seen = Server::read_until(&mut stream, |f| f.event == "message").await;
    drop(stream);
    open_gate(&server, &session).await;
    let mut rejoin = server
        .open_log_stream(&session, Some(seq(seen.last().unwrap())))
        .await;
    let rest = Server::read_until(&mut rejoin, |f| f.event == "done").await;
    assert_eq!(events(&rest), ["message", "done"]);
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert!(
        messages.to_string().contains("finished"),
        "the turn's reply was not stored: {messages}"
    );
}

#[tokio::test]
async fn sigkill_mid_turn_loses_no_logged_event_and_the_next_start_closes_the_turn() {
    let server = Server::start().await;
    let session = server.command_session("gated", GATED_AGENT).await;
    let mut stream = server.open_stream(&session, json!({"content": "go"})).await;
    let seen = Server::read_until(&mut stream, |f| f.event == "message").await;
    let last = seq(seen.last().unwrap());
    let server = server.crash_and_restart().await;

    let (_, log) = server.get(&format!("/api/sessions/{session}/events")).await;
    let logged: Vec<(i64, String)> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sequence"].as_i64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = seen.iter().map(|f| (seq(f), f.event.clone())).collect();
    assert_eq!(
        logged[..seen.len()],
        expected[..],
        "every event a client saw survives the crash"
    );

    let mut rejoin = server.open_log_stream(&session, Some(last)).await;
    let rest = Server::read_until(&mut rejoin, |f| f.event == "done").await;
    assert_eq!(events(&rest), ["error", "done"]);
    assert_eq!(seq(&rest[0]), last + 1);
    assert!(rest[0].data.contains("server stopped"), "{}", rest[0].data);
    let (_, shown) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(shown["session"]["status"], "active");

    let mut next = server
        .open_stream(&session, json!({"content": "again"}))
        .await;
    Server::read_until(&mut next, |f| f.event == "message").await;
    open_gate(&server, &session).await;
    let end = Server::read_until(&mut next, |f| f.event == "done").await;
    assert_eq!(
        seq(end.last().unwrap()),
        last + 6,
        "the log goes on without a gap"
    );
}

#[tokio::test]
async fn interrupt_stops_a_running_turn_with_error_then_done() {
    let server = Server::start().await;
    server
        .deploy("slow", &[("ash.toml", common::SLOW_ECHO_TOML)])
        .await;
    let session = server.session("slow").await;
    let words = "word ".repeat(200);
    let seen = server.interrupt_mid_turn(&session, &words).await;
    let tail: Vec<&str> = events(&seen).into_iter().rev().take(2).collect();
    assert_eq!(tail, ["done", "error"]);
    assert!(
        streamed_text(&seen).len() < words.len(),
        "the turn ran to the end"
    );
    let (_, body) = server
        .post(&format!("/api/sessions/{session}/interrupt"), json!({}))
        .await;
    assert_eq!(body, json!({"interrupted": false}));
    let after = server.message(&session, "next").await;
    assert_eq!(events(&after).last(), Some(&"done"));
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_the_turn_or_other_sessions() {
    let server = Server::start().await;
    let stalled = server.session("hello-agent").await;
    let busy = "x ".repeat(12_000);
    let stuck = server
        .open_stream(
            &stalled,
            json!({"content": busy, "includePartialMessages": true}),
        )
        .await;
    let other = server.session("hello-agent").await;
    for i in 0..5 {
        let frames = server.message(&other, &format!("turn {i}")).await;
        assert_eq!(events(&frames).last(), Some(&"done"));
    }
    let mut watcher = server.open_log_stream(&stalled, None).await;
    let all = Server::read_until(&mut watcher, |f| f.event == "done").await;
    assert!(
        all.len() > 12_000,
        "the stalled client's turn did not run to the end"
    );
    drop(stuck);
}

#[tokio::test]
async fn bad_resume_cursors_get_400() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let response = reqwest::Client::new()
        .get(format!("{}/api/sessions/{session}/stream", server.url))
        .bearer_auth(&server.key)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"));
}

#[tokio::test]
async fn an_agent_that_ignores_an_interrupt_gets_504_and_its_turn_goes_on() {
    let server = Server::start().await;
    let session = server.command_session("deaf", GATED_AGENT).await;
    let mut stream = server.open_stream(&session, json!({"content": "go"})).await;
    Server::read_until(&mut stream, |f| f.event == "message").await;
    let (status, body) = server
        .post(&format!("/api/sessions/{session}/interrupt"), json!({}))
        .await;
    assert_eq!(status, 504, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("did not answer the interrupt"), "{error}");
    open_gate(&server, &session).await;
    let frames = Server::read_until(&mut stream, |f| f.event == "done").await;
    assert!(common::assistant_text(&frames).contains("finished"));
}
