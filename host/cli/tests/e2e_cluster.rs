//! Several servers on one Postgres: the log is the truth across them. A client can follow a
//! session through any server — a turn running on another one included, woken by Postgres's
//! LISTEN/NOTIFY — and move to another server with `Last-Event-ID` without a gap or a
//! duplicate.

mod common;

use ash_cli::sse::{Frame, Reader};
use ash_store::conformance::TestSchema;
use common::{open_gate, Server, COMMAND_TOML, GATED_AGENT};
use serde_json::json;

/// A server of the real binary on the schema's database, with the cluster's API key.
async fn server_on(schema: &TestSchema) -> Server {
    let url = schema.url();
    let env = [
        ("ASH_DATABASE_URL", url.as_str()),
        ("ASH_API_KEY", "a-key-every-server-of-the-cluster-takes"),
    ];
    Server::start_with_env(&env).await
}

/// Two servers on one fresh Postgres schema.
async fn two_servers() -> (Server, Server, TestSchema) {
    let schema = TestSchema::create().await;
    let (a, b) = (server_on(&schema).await, server_on(&schema).await);
    (a, b, schema)
}

/// A session of an agent whose turns wait at a gate (`open_gate`) after their first message.
async fn gated_session(server: &Server) -> String {
    let files = [("agent.sh", GATED_AGENT), ("ash.toml", COMMAND_TOML)];
    let (status, body) = server.deploy("gated", &files).await;
    assert_eq!(status, 201, "{body}");
    server.session("gated").await
}

/// Sends a message to a gated session on `server`: its stream, and its frames up to the
/// agent's first message (the turn then waits at the gate).
async fn begin_turn(
    server: &Server,
    session: &str,
) -> (
    Reader<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin>,
    Vec<Frame>,
) {
    let mut stream = server.open_stream(session, json!({"content": "go"})).await;
    let started = Server::read_until(&mut stream, |f| says(f, "started")).await;
    (stream, started)
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
    let (mut on_a, started) = begin_turn(&a, &session).await;
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
    let (on_a, first) = begin_turn(&a, &session).await;
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

#[tokio::test]
async fn a_server_starting_leaves_the_turns_of_the_others_running_and_closes_only_its_own() {
    let (a, b, schema) = two_servers().await;
    let session = gated_session(&a).await;
    let (mut on_a, _) = begin_turn(&a, &session).await;
    // A server that starts now finds a's turn open in the log: it is not its own to close.
    let late = server_on(&schema).await;
    open_gate(&a, &session).await;
    let rest = Server::read_until(&mut on_a, |f| f.event == "done").await;
    let events: Vec<_> = rest.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(events, ["message", "done"], "{rest:?}");
    // The control: b's own turn, cut off by a crash, is closed by b's next start.
    let other = gated_session(&b).await;
    let _on_b = begin_turn(&b, &other).await;
    let b = b.crash_and_restart().await;
    let (_, log) = b.get(&format!("/api/sessions/{other}/events")).await;
    let kinds: Vec<_> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("done"), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], "error");
    drop((a, b, late));
    schema.drop().await;
}
