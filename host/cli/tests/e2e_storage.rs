//! Storage backends end to end, with the real `ash` binary: the same session flow (deploy,
//! chat, restart, list) on an SQLite file, on the real Postgres (a schema of its own) and on
//! the `storage-redis` plugin against the real Redis (a key prefix of its own); `ash storage
//! copy` from a populated SQLite store to Postgres; an unreachable database at start; and a
//! database lost while the server runs (through a TCP relay this test cuts and restores).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ash_store::conformance::{redis_address, TestRedis, TestSchema};
use common::{assistant_text, events, open_gate, plugin, start_fails, Server, ASH, GATED_AGENT};
use serde_json::{json, Value};

/// Deploys an echo agent, chats twice, restarts the server and checks that the agent, the
/// session, its messages and its log are all still there and the conversation goes on.
async fn session_flow(server: Server, backend: &str) {
    let (status, body) = server.deploy("keeper", &[("CLAUDE.md", "Echo.")]).await;
    assert_eq!(status, 201, "{body}");
    let session = server.session("keeper").await;
    assert_eq!(
        assistant_text(&server.message(&session, "one").await),
        "Echo: one"
    );
    let (_, log_before) = server.get(&format!("/api/sessions/{session}/events")).await;

    let server = server.restart().await;
    let (_, health) = server.get("/health").await;
    assert_eq!(health["storage"], backend);
    let (status, agents) = server.get("/api/agents").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"keeper") && names.contains(&"hello-agent"),
        "{names:?}"
    );
    let (_, sessions) = server.get("/api/sessions?agent=keeper").await;
    assert_eq!(sessions["sessions"][0]["id"], session.as_str());
    assert_eq!(sessions["sessions"][0]["status"], "active");
    let (_, log_after) = server.get(&format!("/api/sessions/{session}/events")).await;
    assert_eq!(log_after, log_before, "the log survives the restart");

    let frames = server.message(&session, "two").await;
    assert_eq!(assistant_text(&frames), "Echo: two (turn 2, previous: one)");
    let next = (last_sequence(&log_before) + 1).to_string();
    assert_eq!(
        frames[0].id.as_deref(),
        Some(next.as_str()),
        "numbering goes on"
    );
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    let sequences: Vec<i64> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_i64().unwrap())
        .collect();
    assert!(
        sequences.len() >= 4,
        "two turns, each a user and an assistant message"
    );
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
}

/// The sequence of the last event in a `GET /events` answer.
fn last_sequence(log: &Value) -> i64 {
    log["events"].as_array().unwrap().last().unwrap()["sequence"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn sqlite_keeps_agents_sessions_and_logs_across_a_restart() {
    session_flow(Server::start().await, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_agents_sessions_and_logs_across_a_restart() {
    let schema = TestSchema::create().await;
    let server = Server::start_with_env(&[("ASH_DATABASE_URL", &schema.url())]).await;
    assert!(
        !server.data_path().join("ash.db").exists(),
        "no SQLite file when on Postgres"
    );
    session_flow(server, "postgres").await;
    schema.drop().await;
}

/// Settings that put the records on the Redis plugin under `prefix`.
fn redis_settings(prefix: &str) -> String {
    let address = redis_address();
    format!(
        "[storage]\nplugin = {:?}\noutbound = [{address:?}]\nconfig = {{ address = {address:?}, prefix = {prefix:?} }}\n",
        plugin("storage-redis")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_plugin_keeps_agents_sessions_and_logs_across_a_restart() {
    let redis = TestRedis::new();
    let server = common::start_with(&redis_settings(&redis.prefix)).await;
    let (_, health) = server.get("/health").await;
    let plugins = health["plugins"].as_array().unwrap();
    assert!(
        plugins
            .iter()
            .any(|p| p["id"] == "storage-redis" && p["kind"] == "storage"),
        "{health}"
    );
    session_flow(server, "plugin").await;
    redis.drop();
}

/// Runs `ash storage copy`.
async fn copy(from: &str, to: &str) -> std::process::Output {
    tokio::process::Command::new(ASH)
        .args(["storage", "copy", "--from", from, "--to", to])
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_copy_moves_a_populated_sqlite_store_to_postgres_which_then_serves_it() {
    let server = Server::start().await;
    let first = server.session("hello-agent").await;
    let second = server.session("hello-agent").await;
    server.message(&first, "one").await;
    server.message(&second, "uno").await;
    server.message(&second, "dos").await;
    let (_, sessions_before) = server.get("/api/sessions").await;
    let (_, log_before) = server.get(&format!("/api/sessions/{second}/events")).await;
    let (data, key) = server.stop().await;

    let sqlite = format!("sqlite:{}", data.path().join("ash.db").display());
    let schema = TestSchema::create().await;
    let output = copy(&sqlite, &schema.url()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "copied 1 agents, 0 agent versions, 2 sessions, 1 API keys, 0 credentials, 0 attachments, 3 usage records, 0 queue items, "
        ),
        "{stdout}"
    );

    let again = copy(&sqlite, &schema.url()).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("destination already holds"),
        "a second copy must be refused"
    );

    let mut server = Server::start_in(data, &[("ASH_DATABASE_URL", &schema.url())]).await;
    server.key = key;
    let (status, sessions_after) = server.get("/api/sessions").await;
    assert_eq!(status, 200, "the old key still works");
    assert_eq!(sessions_after, sessions_before);
    let (_, log_after) = server.get(&format!("/api/sessions/{second}/events")).await;
    assert_eq!(log_after, log_before);
    assert_eq!(
        assistant_text(&server.message(&second, "tres").await),
        "Echo: tres (turn 3, previous: dos)",
        "the workspace in the data dir and the copied log go on together"
    );
    schema.drop().await;
}

#[tokio::test]
async fn storage_copy_refuses_a_source_file_that_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite:{}", dir.path().join("nope.db").display());
    let to = format!("sqlite:{}", dir.path().join("to.db").display());
    let output = copy(&missing, &to).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no SQLite file"), "{stderr}");
}

/// Runs `ash start` expecting it to fail; returns its stderr.
#[tokio::test]
async fn an_unreachable_database_at_start_is_named_without_its_password_and_the_server_exits() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://ash:s3cret@127.0.0.1:{port}/ash");
    let stderr = start_fails(&[("ASH_DATABASE_URL", &url)]).await;
    assert!(
        stderr.contains(&format!("postgres://ash:***@127.0.0.1:{port}/ash")),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that the database server is running"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test]
async fn a_database_url_of_another_kind_is_refused_with_the_forms_it_takes() {
    let stderr = start_fails(&[("ASH_DATABASE_URL", "mysql://root:pw@db/ash")]).await;
    assert!(stderr.contains("mysql://root:***@db/ash"), "{stderr}");
    assert!(
        stderr.contains("sqlite:<path") && stderr.contains("postgres://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_hook_plugin_cannot_be_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("ash.toml");
    let toml = format!("[storage]\nplugin = {:?}\n", plugin("transform-redact"));
    std::fs::write(&settings, toml).unwrap();
    let stderr = start_fails(&[("ASH_CONFIG", settings.to_str().unwrap())]).await;
    assert!(stderr.contains("cannot be the store"), "{stderr}");
}

#[tokio::test]
async fn a_storage_plugin_that_cannot_reach_its_store_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("ash.toml");
    let toml = format!("[storage]\nplugin = {:?}\n", plugin("storage-redis"));
    std::fs::write(&settings, toml).unwrap();
    let stderr = start_fails(&[
        ("ASH_CONFIG", settings.to_str().unwrap()),
        ("ASH_API_KEY", "a-key-so-no-key-lookup-is-needed"),
    ])
    .await;
    assert!(
        stderr.contains("storage is unavailable: cannot reach Redis"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_settings_file_naming_two_stores_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("ash.toml");
    let toml = format!(
        "database_url = \"sqlite:/tmp/x.db\"\n[storage]\nplugin = {:?}\n",
        plugin("storage-redis")
    );
    std::fs::write(&settings, toml).unwrap();
    let stderr = start_fails(&[("ASH_CONFIG", settings.to_str().unwrap())]).await;
    assert!(
        stderr.contains("both database_url and [storage]"),
        "{stderr}"
    );
}

/// A TCP relay to the test Postgres that can be cut (every connection dropped, new ones
/// closed at once) and restored, as a database going away and coming back looks to a client.
struct Relay {
    url: String,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    /// Notified each time a connection is refused while cut.
    refused: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn start(schema: &TestSchema) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = ash_store::conformance::postgres_url();
        let authority = target
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let url = schema
            .url()
            .replace(&authority, &format!("127.0.0.1:{port}"));
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0);
        let accepting = up.clone();
        let refused = Arc::new(tokio::sync::Notify::new());
        let refusing = refused.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    refusing.notify_one();
                    continue;
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                let authority = authority.clone();
                tokio::spawn(async move {
                    let mut db = tokio::net::TcpStream::connect(authority).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut db) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self {
            url,
            up,
            cut,
            refused,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_while_running_gives_503_then_recovers_by_itself_losing_nothing() {
    let schema = TestSchema::create().await;
    let relay = Relay::start(&schema).await;
    let server = Server::start_with_env(&[("ASH_DATABASE_URL", &relay.url)]).await;
    let session = server.session("hello-agent").await;
    server.message(&session, "before").await;
    let (_, log_before) = server.get(&format!("/api/sessions/{session}/events")).await;

    relay.cut();
    let (status, body) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["statusCode"], 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("storage is unavailable"),
        "{body}"
    );
    let (status, _) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "lost"}),
        )
        .await;
    assert_eq!(status, 503, "a message is refused, not half-taken");

    relay.restore();
    let (status, log_after) = server.get(&format!("/api/sessions/{session}/events")).await;
    assert_eq!(status, 200, "{log_after}");
    assert_eq!(log_after, log_before, "nothing acknowledged was lost");
    let frames = server.message(&session, "after").await;
    assert_eq!(
        assistant_text(&frames),
        "Echo: after (turn 2, previous: before)"
    );
    assert_eq!(
        frames[0].id.as_deref(),
        Some((last_sequence(&log_before) + 1).to_string().as_str()),
        "the refused message left no frame"
    );
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert!(
        !messages.to_string().contains("lost"),
        "the refused message left no trace"
    );
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_the_store_fails_ends_for_its_client_and_is_closed_in_the_log_once_it_is_back() {
    let schema = TestSchema::create().await;
    let relay = Relay::start(&schema).await;
    let server = Server::start_with_env(&[("ASH_DATABASE_URL", &relay.url)]).await;
    let session = server.command_session("gated", GATED_AGENT).await;
    let mut stream = server.open_stream(&session, json!({"content": "go"})).await;
    let seen = Server::read_until(&mut stream, |f| f.event == "message").await;
    let last_logged: i64 = seen.last().unwrap().id.as_deref().unwrap().parse().unwrap();

    relay.cut();
    open_gate(&server, &session).await;
    let rest = Server::read_until(&mut stream, |f| f.event == "error").await;
    let error = &rest.last().unwrap().data;
    assert!(error.contains("storage is unavailable"), "{error}");
    assert_eq!(
        rest.last().unwrap().id,
        None,
        "a frame the log does not hold carries no id"
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next()).await;
    assert!(
        ended.expect("the stream ends").is_none(),
        "nothing follows the error"
    );

    tokio::time::timeout(std::time::Duration::from_secs(30), relay.refused.notified())
        .await
        .expect("the server tries the store again");
    relay.restore();
    let mut log = server.open_log_stream(&session, Some(last_logged)).await;
    let closing = Server::read_until(&mut log, |f| f.event == "done").await;
    assert_eq!(
        events(&closing),
        ["error", "done"],
        "the turn is closed in the log"
    );
    assert!(closing[0]
        .data
        .contains("storage was unavailable during this turn"));

    let mut next = server
        .open_stream(&session, json!({"content": "again"}))
        .await;
    Server::read_until(&mut next, |f| f.event == "message").await;
    open_gate(&server, &session).await;
    let frames = Server::read_until(&mut next, |f| f.event == "done").await;
    assert!(
        assistant_text(&frames).contains("finished"),
        "the session goes on"
    );
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_with_another_data_dir_gets_its_bundled_agent_again() {
    let schema = TestSchema::create().await;
    let env = [
        ("ASH_DATABASE_URL", schema.url()),
        ("ASH_API_KEY", "k".repeat(32)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(&env).await.stop().await;
    let elsewhere = Server::start_with_env(&env).await;
    let session = elsewhere.session("hello-agent").await;
    assert_eq!(
        assistant_text(&elsewhere.message(&session, "hi").await),
        "Echo: hi"
    );
    schema.drop().await;
}
