//! Load on one node: many sessions at once, each a real sandbox. Loopback only, bounded in
//! count, and every request has a deadline, so the test stops by itself.

mod common;

use common::{assistant_text, Server};
use futures_util::{stream, StreamExt};

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sessions_each_complete_a_turn() {
    let server =
        Server::start_with_env(&[("ASH_MAX_SANDBOXES", "1100"), ("ASH_LOG", "warn")]).await;
    let ids: Vec<String> = stream::iter(0..SESSIONS)
        .map(|_| server.session("hello-agent"))
        .buffer_unordered(16)
        .collect()
        .await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["activeSandboxes"], SESSIONS, "{health}");

    let replies: Vec<(usize, String)> = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let server = &server;
            async move {
                (
                    i,
                    assistant_text(&server.message(id, &format!("hello {i}")).await),
                )
            }
        })
        .buffer_unordered(SESSIONS)
        .collect()
        .await;
    assert_eq!(replies.len(), SESSIONS);
    for (i, reply) in replies {
        assert_eq!(reply, format!("Echo: hello {i}"));
    }
    let (_, metrics) = server.get("/health").await;
    assert_eq!(metrics["pool"]["running"], 0);
}

/// A `command` agent whose turns send 15,000 tiny `text_delta`-sized messages each.
const FLOOD_AGENT: &str = r#"#!/bin/sh
exec python3 -c '
import json, sys
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("cmd") != "query":
        continue
    for i in range(15000):
        msg = {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": str(i)}]}}
        print(json.dumps({"ev": "message", "id": cmd["id"], "data": msg}), flush=True)
    print(json.dumps({"ev": "done", "id": cmd["id"]}), flush=True)
'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_s_event_flood_does_not_fail_other_sessions_turns() {
    let server = Server::start_with_env(&[("ASH_LOG", "warn")]).await;
    let flooder = server.command_session("flood", FLOOD_AGENT).await;
    let others: Vec<String> = stream::iter(0..16)
        .map(|_| server.session("hello-agent"))
        .buffer_unordered(16)
        .collect()
        .await;
    let flood = async {
        let mut frames = 0;
        for _ in 0..2 {
            frames += server.message(&flooder, "flood").await.len();
        }
        frames
    };
    // Each other session takes its turns one after another, all sixteen at once.
    let turns = stream::iter(others.iter())
        .map(|session| {
            let server = &server;
            async move {
                let mut replies = Vec::new();
                for i in 0..10 {
                    replies.push(assistant_text(
                        &server.message(session, &format!("t{i}")).await,
                    ));
                }
                replies
            }
        })
        .buffer_unordered(16)
        .concat();
    let (flooded, replies): (usize, Vec<String>) = tokio::join!(flood, turns);
    assert_eq!(replies.len(), 160);
    // Control: the flood did happen, both turns of it in full.
    assert!(flooded >= 30_000, "the flood logged only {flooded} frames");
    for reply in &replies {
        assert!(
            reply.starts_with("Echo: t"),
            "a turn beside the flood failed: {reply:?}"
        );
    }
}
