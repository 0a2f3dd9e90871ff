//! The SQLite file: an `ash.db` written before the records moved onto the storage port
//! (migrations 1–4, the relational tables) opens with everything it held — agents, sessions,
//! messages, the event log, keys and credentials, and a turn it left open; a file that is not a
//! database is refused, naming it.

use std::sync::Arc;

use ash_core::{AgentName, Role, SessionId, SessionStatus};
use ash_store::{SqlStorage, Store};
use sqlx::sqlite::SqliteConnectOptions;

const SESSION: &str = "6f1c1f38-1a55-4c39-9d29-2f6c1c0e0a11";
const OPEN: &str = "0b7e9d2a-5f3c-4a8e-8d1b-9c2e4f6a7b80";

/// Writes a database as the server did before migration 5.
async fn old_database(path: &std::path::Path) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(&pool).await.unwrap();
    let rows = format!(
        r#"
        INSERT INTO agents VALUES ('a1', 'default', 'hello-agent', 3, '/data/agents/hello-agent', '{{"K":"v"}}', '2026-01-01T00:00:00.000Z', '2026-01-02T00:00:00.000Z');
        INSERT INTO sessions VALUES ('{SESSION}', 'default', 'hello-agent', '{SESSION}', 'paused', NULL, NULL, '{{"E":"1"}}', '2026-01-03T00:00:00.000Z', '2026-01-03T00:01:00.000Z', 'c1');
        INSERT INTO sessions VALUES ('{OPEN}', 'default', 'hello-agent', '{OPEN}', 'active', NULL, '{SESSION}', '{{}}', '2026-01-04T00:00:00.000Z', '2026-01-04T00:00:00.000Z', NULL);
        INSERT INTO messages VALUES ('m1', 'default', '{SESSION}', 'user', '{{"type":"user","content":"hi"}}', 1, '2026-01-03T00:00:01.000Z');
        INSERT INTO messages VALUES ('m2', 'default', '{SESSION}', 'assistant', '{{"type":"assistant"}}', 2, '2026-01-03T00:00:02.000Z');
        INSERT INTO session_events VALUES ('e1', 'default', '{SESSION}', 'session_start', '{{"sessionId":"{SESSION}"}}', 1, '2026-01-03T00:00:01.000Z');
        INSERT INTO session_events VALUES ('e2', 'default', '{SESSION}', 'text_delta', '{{"delta":"Echo"}}', 2, '2026-01-03T00:00:02.000Z');
        INSERT INTO session_events VALUES ('e3', 'default', '{SESSION}', 'done', NULL, 3, '2026-01-03T00:00:02.000Z');
        INSERT INTO session_events VALUES ('e4', 'default', '{OPEN}', 'session_start', '{{}}', 1, '2026-01-04T00:00:01.000Z');
        INSERT INTO api_keys VALUES ('k1', 'default', 'abc123', 'auto-generated', '2026-01-01T00:00:00.000Z');
        INSERT INTO credentials VALUES ('c1', 'default', 'openai', 'Y2lwaGVy', 'bm9uY2U=', 'dGFn', 'c2FsdA==', 'team', 1, '2026-01-01T00:00:00.000Z', NULL);
        "#
    );
    sqlx::raw_sql(&rows).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn an_old_database_keeps_every_record_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ash.db");
    old_database(&path).await;
    let store = Store::new(Arc::new(SqlStorage::open_sqlite(&path).await.unwrap()));

    let agent = AgentName::try_from("hello-agent".to_owned()).unwrap();
    let got = store.get_agent(&agent).await.unwrap().unwrap();
    assert_eq!((got.id.as_str(), got.version), ("a1", 3));
    assert_eq!(got.env["K"], "v");

    let id = SessionId::parse(SESSION).unwrap();
    let session = store.get_session(id).await.unwrap().unwrap();
    assert_eq!(session.status, SessionStatus::Paused);
    assert_eq!(
        (session.env["E"].as_str(), session.credential_id.as_deref()),
        ("1", Some("c1"))
    );
    let listed = store.list_sessions(Some(&agent)).await.unwrap();
    assert_eq!(listed.len(), 2, "the agent index is rebuilt");
    assert_eq!(listed[1].id, id, "newest first");

    let messages = store.list_messages(id, 0, 10).await.unwrap();
    assert_eq!(
        messages
            .iter()
            .map(|m| (m.sequence, m.role))
            .collect::<Vec<_>>(),
        [(1, Role::User), (2, Role::Assistant)]
    );
    let events = store.list_events(id, 0, 10, None).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.sequence, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(1, "session_start"), (2, "text_delta"), (3, "done")]
    );
    assert_eq!(events[2].data, None);
    let next = store
        .append(
            id,
            &[(Role::User, "{}".to_owned())],
            &[("session_start", "{}".to_owned())],
            Some(ash_store::TurnMark::Begins),
        )
        .await
        .unwrap();
    assert_eq!(next[0].sequence, 4, "numbering goes on where it was");
    assert_eq!(store.list_messages(id, 2, 10).await.unwrap()[0].sequence, 3);

    assert_eq!(
        store.unfinished_turns().await.unwrap().len(),
        2,
        "the turn left open, and the one just begun"
    );
    assert_eq!(
        store.api_key_tenant("abc123").await.unwrap().as_deref(),
        Some("default")
    );
    let (credential, sealed) = store.get_credential("c1").await.unwrap().unwrap();
    assert!(credential.active);
    assert_eq!(sealed.nonce, "bm9uY2U=");
    assert_eq!(
        store.count_unended_sessions().await.unwrap(),
        [(SessionStatus::Active, 1), (SessionStatus::Paused, 1)]
    );
}

#[tokio::test]
async fn a_garbage_file_is_refused_with_the_path_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ash.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqlStorage::open_sqlite(&path)
        .await
        .err()
        .expect("garbage must not open")
        .to_string();
    assert!(
        err.contains("ash.db") || err.contains("not a database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x42u8; 8192],
        "and is left as it was"
    );
}
