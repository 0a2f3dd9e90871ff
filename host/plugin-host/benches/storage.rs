//! The hot operations of the storage port on each backend: the SQLite file, the real Postgres
//! (127.0.0.1:5432 `test`, or `ASH_TEST_DATABASE_URL`, in a schema of its own) and the
//! `storage-redis` plugin against the real Redis (127.0.0.1:6379 or `ASH_TEST_REDIS`; build
//! it first with `scripts/build-plugins.sh`). One client, one operation at a time.
//! Then the server's records on each ([`ash_store::Store`]): reading a session, and the storage
//! work of a turn — its first batch (the mark, the user's message, `session_start`) and its
//! last (the reply, its frames, `done`, the mark cleared), one commit each.
//! Run: `cargo bench -p ash-plugin-host --bench storage`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ash_core::{AgentName, Role, Session, SessionId, SessionStatus, Storage, DEFAULT_TENANT};
use ash_plugin_host::{PluginConfig, StoragePlugin};
use ash_store::conformance::{redis_address, TestRedis, TestSchema};
use ash_store::{SqlStorage, Store, TurnMark};

const CALLS: usize = 2_000;

async fn measure<F, Fut>(what: &str, mut op: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..200 {
        op(i).await;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let started = Instant::now();
        op(200 + i).await;
        times.push(started.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "  {what:<34} p50 {:>8.1} µs   p99 {:>8.1} µs",
        at(0.5),
        at(0.99)
    );
}

async fn bench(name: &str, s: &dyn Storage) {
    println!("{name}");
    let session = r#"{"id":"s","agent":"a","status":"active","createdAt":"2026-11-23T00:00:00Z"}"#;
    let index = &[("agent".to_owned(), "a".to_owned())];
    for i in 0..100 {
        s.put("sessions", &format!("s{i}"), session, 0, index)
            .await
            .unwrap();
    }
    measure("get (a session)", |_| async {
        s.get("sessions", "s0").await.unwrap().unwrap();
    })
    .await;
    let revision = std::cell::Cell::new(1);
    measure("put (update, CAS, 1 index entry)", |_| {
        let expected = revision.replace(revision.get() + 1);
        async move {
            s.put("sessions", "s0", session, expected, index)
                .await
                .unwrap();
        }
    })
    .await;
    measure("find (sessions of an agent, 50)", |_| async {
        assert_eq!(
            s.find("sessions", "agent", "a", "", 50)
                .await
                .unwrap()
                .len(),
            50
        );
    })
    .await;
    let frame = r#"{"event":"text_delta","data":{"delta":"Hello there "}}"#.to_owned();
    let batch = vec![frame; 8];
    measure("append (8 frames of a turn)", |_| async {
        s.append("events/s0", &batch).await.unwrap();
    })
    .await;
    measure("read (100 frames)", |i| async move {
        let after = (i as u64 * 7) % 10_000;
        assert_eq!(s.read("events/s0", after, 100).await.unwrap().len(), 100);
    })
    .await;
}

/// The storage work of the server's hot paths, on the records.
async fn records(store: &Store) {
    let now = "2026-12-01T00:00:00.000Z".to_owned();
    let session = Session {
        id: SessionId::new(),
        tenant_id: DEFAULT_TENANT.into(),
        agent_name: AgentName::try_from("bench".to_owned()).unwrap(),
        sandbox_id: "sb".into(),
        status: SessionStatus::Active,
        runner_id: None,
        parent_session_id: None,
        env: Default::default(),
        credential_id: None,
        config: Default::default(),
        created_at: now.clone(),
        last_active_at: now,
        logged_bytes: 0,
    };
    store.insert_session(&session).await.unwrap();
    let id = session.id;
    measure("records: get a session", |_| async {
        store.get_session(id).await.unwrap().unwrap();
    })
    .await;
    let user = [(Role::User, r#"{"type":"user","content":"hi"}"#.to_owned())];
    let start = [("session_start", format!(r#"{{"sessionId":"{id}"}}"#))];
    let reply = [(Role::Assistant, r#"{"type":"assistant"}"#.to_owned())];
    let end = [
        ("message", r#"{"type":"assistant"}"#.to_owned()),
        ("done", format!(r#"{{"sessionId":"{id}"}}"#)),
    ];
    measure("records: a turn's first and last batch", |_| async {
        store
            .append(id, &user, &start, Some(TurnMark::Begins))
            .await
            .unwrap();
        store
            .append(id, &reply, &end, Some(TurnMark::Ends))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqlStorage::open_sqlite(&dir.path().join("ash.db"))
            .await
            .unwrap(),
    );
    bench("SQLite (file, WAL)", &*sqlite).await;
    records(&Store::new(sqlite)).await;

    let schema = TestSchema::create().await;
    let postgres = Arc::new(SqlStorage::connect_postgres(&schema.url()).await.unwrap());
    bench("Postgres (loopback)", &*postgres).await;
    records(&Store::new(postgres)).await;
    schema.drop().await;

    let redis = TestRedis::new();
    let plugin = StoragePlugin::load(
        &PluginConfig {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/plugins/storage-redis"),
            config: [
                ("address".into(), redis_address()),
                ("prefix".into(), redis.prefix.clone()),
            ]
            .into(),
            outbound: vec![redis_address()],
            ..PluginConfig::default()
        },
        None,
    )
    .expect("run scripts/build-plugins.sh first");
    bench("storage-redis plugin (loopback Redis)", &plugin).await;
    records(&Store::new(Arc::new(plugin))).await;
    redis.drop();
}
