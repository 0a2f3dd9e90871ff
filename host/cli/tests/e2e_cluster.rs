//! Several servers on one Postgres: the log is the truth across them. A client can follow a
//! session through any server — a turn running on another one included, woken by Postgres's
//! LISTEN/NOTIFY — and move to another server with `Last-Event-ID` without a gap or a
//! duplicate.

mod common;

use ash_cli::sse::Frame;
use ash_store::conformance::TestSchema;
use common::{open_gate, Server, COMMAND_TOML, GATED_AGENT};
use serde_json::json;

/// Two servers of the real binary on one fresh Postgres schema, with one API key.
async fn two_servers() -> (Server, Server, TestSchema) {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let env = [
        ("ASH_DATABASE_URL", url.as_str()),
        ("ASH_API_KEY", "a-key-every-server-of-the-cluster-takes"),
    ];
    let a = Server::start_with_env(&env).await;
    let b = Server::start_with_env(&env).await;
    (a, b, schema)
}

/// A session of an agent whose turns wait at a gate (`open_gate`) after their first message.
async fn gated_session(server: &Server) -> String {
    let files = [("agent.sh", GATED_AGENT), ("ash.toml", COMMAND_TOML)];
    let (status, body) = server.deploy("gated", &files).await;
    assert_eq!(status, 201, "{body}");
    server.session("gated").await
}

fn ids(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f.id.as_deref().expect("a logged frame").parse().unwrap())
        .collect()
}

fn says(frame: &Frame, text: &str) -> bool {
    frame.event == "message" && frame.data.contains(text)
}

#[tokio::test]
async fn a_turn_running_on_one_server_streams_live_through_another() {
    let (a, b, schema) = two_servers().await;
    let session = gated_session(&a).await;
    let mut through_b = b.open_log_stream(&session, None).await;
    let mut on_a = a.open_stream(&session, json!({"content": "go"})).await;
    let started = Server::read_until(&mut on_a, |f| says(f, "started")).await;
    // The gate is still shut, so this frame can only have come live, woken by a's commit.
    let seen_on_b = Server::read_until(&mut through_b, |f| says(f, "started")).await;
    assert_eq!(ids(&seen_on_b), ids(&started));
    open_gate(&a, &session).await;
    let mut whole = started;
    whole.extend(Server::read_until(&mut on_a, |f| f.event == "done").await);
    let mut followed = seen_on_b;
    followed.extend(Server::read_until(&mut through_b, |f| f.event == "done").await);
    assert_eq!(ids(&followed), ids(&whole), "{followed:?}");
    let events: Vec<_> = followed.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(events.first(), Some(&"session_start"));
    drop((a, b));
    schema.drop().await;
}

#[tokio::test]
async fn a_client_moves_to_another_server_mid_turn_and_gets_exactly_the_rest() {
    let (a, b, schema) = two_servers().await;
    let session = gated_session(&a).await;
    let mut on_a = a.open_stream(&session, json!({"content": "go"})).await;
    let first = Server::read_until(&mut on_a, |f| says(f, "started")).await;
    drop(on_a); // the connection to a is gone; the turn goes on there
    let last_seen = *ids(&first).last().unwrap();
    let mut on_b = b.open_log_stream(&session, Some(last_seen)).await;
    open_gate(&a, &session).await;
    let rest = Server::read_until(&mut on_b, |f| f.event == "done").await;
    assert!(says(&rest[0], "finished"), "{rest:?}");
    let mut all = ids(&first);
    all.extend(ids(&rest));
    let expected: Vec<i64> = (all[0]..all[0] + all.len() as i64).collect();
    assert_eq!(all, expected, "no gap and no duplicate across the move");
    drop((a, b));
    schema.drop().await;
}
