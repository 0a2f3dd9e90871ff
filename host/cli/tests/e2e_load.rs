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
