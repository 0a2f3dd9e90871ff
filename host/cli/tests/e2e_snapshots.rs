//! Workspace snapshots in the snapshot store: after a turn the workspace goes to the store, off
//! the turn's path, and a node that has lost a session's files (or never had them) brings them
//! back from it before the session's sandbox starts.
//!
//! The S3-compatible server is moto's (`scripts/install-moto.sh`), started by each test on
//! loopback: a stand-in for object storage, never AWS.

mod common;

use ash_store::conformance::TestSchema;
use common::{s3_env, FakeS3, Server};

async fn start(env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(&env).await
}

/// The count of `name{outcome="<outcome>"}` in the server's metrics.
async fn counted(server: &Server, name: &str, outcome: &str) -> u64 {
    let wanted = format!("{name}{{outcome=\"{outcome}\"}} ");
    server
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&wanted)?.parse().ok())
        .unwrap_or(0)
}

/// Waits (for at most 30 s) until the server has counted one more upload with `outcome`.
async fn upload_counted(server: &Server, outcome: &str, before: u64) {
    let name = "ash_snapshot_uploads_total";
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while counted(server, name, outcome).await <= before {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {outcome} snapshot upload counted"));
}

/// A port nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn a_node_without_a_sessions_files_brings_them_back_from_the_snapshot_store() {
    let (s3, schema) = (FakeS3::start().await, TestSchema::create().await);
    let database = ("ASH_DATABASE_URL", schema.url());
    let key = ("ASH_API_KEY", "test-key-shared-by-every-node".to_owned());
    let mut env = s3_env(&s3.endpoint);
    env.extend([database.clone(), key.clone()]);

    let first = start(&env).await;
    let session = first.session("hello-agent").await;
    first.exec(&session, "echo kept > notes.txt").await;
    let before = counted(&first, "ash_snapshot_uploads_total", "ok").await;
    let frames = first.message(&session, "remember this").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"));
    upload_counted(&first, "ok", before).await;
    // A pause right after it has nothing new to send (the echo backend's memory of the
    // conversation is a workspace file, so every turn changes something); a file changed and
    // a turn later, the new snapshot is sent.
    for step in ["pause", "resume"] {
        let (status, body) = first
            .post(
                &format!("/api/sessions/{session}/{step}"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    upload_counted(&first, "unchanged", 0).await;
    first.exec(&session, "echo kept > notes.txt").await;
    let sent = counted(&first, "ash_snapshot_uploads_total", "ok").await;
    first.message(&session, "remember this").await;
    upload_counted(&first, "ok", sent).await;
    // The first node and its disk are gone.
    drop(first.stop().await);

    // The control: a node on the same database with its own local snapshot store does not
    // have the files, so the probe below could fail.
    let local = start(&[database.clone(), key.clone()]).await;
    let out = local.exec(&session, "cat notes.txt").await;
    assert_ne!(out["stdout"], "kept\n", "{out}");
    drop(local.stop().await);

    // With the store out of reach, the session is refused with the reason, not begun afresh.
    let mut unreachable = s3_env(&closed_port());
    unreachable.extend([database.clone(), key.clone()]);
    let cut_off = start(&unreachable).await;
    let (status, body) = cut_off
        .post(
            &format!("/api/sessions/{session}/exec"),
            serde_json::json!({"command": "cat notes.txt"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("snapshot store"),
        "{body}"
    );
    drop(cut_off.stop().await);

    let second = start(&env).await;
    // The file routes find it too, before any sandbox of the session runs here.
    let read = second
        .raw_get(&format!(
            "/api/sessions/{session}/files/notes.txt?format=raw"
        ))
        .await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.text().await.unwrap(), "kept\n");
    let out = second.exec(&session, "cat notes.txt").await;
    assert_eq!(out["stdout"], "kept\n", "{out}");
    let restored = counted(&second, "ash_snapshot_restores_total", "ok").await;
    assert_eq!(restored, 1);
    let (_, messages) = second
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    // The conversation is the shared store's: each user message, its echo and its result.
    let messages = messages["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6, "{messages:?}");
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .contains("remember this"));
    let frames = second.message(&session, "and go on").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"));
    drop(second.stop().await);
    schema.drop().await;
}

#[tokio::test]
async fn an_unreachable_snapshot_store_fails_uploads_without_holding_up_turns() {
    let server = start(&s3_env(&closed_port())).await;
    let session = server.session("hello-agent").await;
    for turn in ["one", "two"] {
        let frames = server.message(&session, turn).await;
        assert_eq!(common::events(&frames).last(), Some(&"done"), "{frames:?}");
    }
    upload_counted(&server, "failed", 0).await;
    assert_eq!(
        counted(&server, "ash_snapshot_uploads_total", "ok").await,
        0
    );
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 200);
}
