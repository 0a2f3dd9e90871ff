//! The hot operations of the storage port on each backend: the SQLite file, the real Postgres
//! (127.0.0.1:5432 `test`, or `ASH_TEST_DATABASE_URL`, in a schema of its own) and the
//! `storage-redis` plugin against the real Redis (127.0.0.1:6379 or `ASH_TEST_REDIS`; build
//! it first with `scripts/build-plugins.sh`). One client, one operation at a time.
//! Run: `cargo bench -p ash-plugin-host --bench storage`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ash_core::Storage;
use ash_plugin_host::{PluginConfig, StoragePlugin};

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

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = ash_store::Store::open(&dir.path().join("ash.db"))
        .await
        .unwrap();
    bench("SQLite (file, WAL)", &sqlite.storage()).await;

    let url = std::env::var("ASH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&url).await.expect("Postgres");
    let schema = format!("ash_bench_{}", std::process::id());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let joiner = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{joiner}options=-c%20search_path%3D{schema}");
    let postgres = ash_store::SqlStorage::connect_postgres(&scoped)
        .await
        .unwrap();
    bench("Postgres (loopback)", &postgres).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();

    let redis = std::env::var("ASH_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let prefix = format!("ash-bench-{}:", std::process::id());
    let plugin = StoragePlugin::load(
        &PluginConfig {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/plugins/storage-redis"),
            config: [("address".into(), redis.clone()), ("prefix".into(), prefix)].into(),
            outbound: vec![redis],
            ..PluginConfig::default()
        },
        None,
    )
    .expect("run scripts/build-plugins.sh first");
    bench("storage-redis plugin (loopback Redis)", &plugin).await;
}
