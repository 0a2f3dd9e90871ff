//! The storage port's conformance suite on the `storage-redis` plugin (built from
//! `plugins/storage-redis` by `scripts/build-plugins.sh`) against the real Redis at
//! `ASH_TEST_REDIS` (default 127.0.0.1:6379), under a key prefix of its own that is deleted
//! afterwards.

use std::path::PathBuf;
use std::sync::Arc;

use ash_plugin_host::{PluginConfig, StoragePlugin};
use ash_store::conformance::{redis_address, TestRedis};

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/storage-redis")
}

fn load(prefix: &str, granted: &[&str]) -> Result<StoragePlugin, ash_plugin_host::PluginError> {
    StoragePlugin::load(
        &PluginConfig {
            path: plugin_dir(),
            config: [
                ("address".to_owned(), redis_address()),
                ("prefix".to_owned(), prefix.to_owned()),
            ]
            .into(),
            outbound: granted.iter().map(|g| g.to_string()).collect(),
            ..PluginConfig::default()
        },
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_plugin_conforms() {
    let redis = TestRedis::new();
    let storage =
        load(&redis.prefix, &[&redis_address()]).expect("run scripts/build-plugins.sh first");
    ash_store::conformance::run(&storage, "t/").await;
    assert_eq!(
        storage.status().failures,
        0,
        "{:?}",
        storage.status().last_error
    );
    redis.drop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_the_redis_plugin_conform() {
    let (one, two) = (TestRedis::new(), TestRedis::new());
    let open = |redis: &TestRedis| {
        let plugin = load(&redis.prefix, &[&redis_address()]).expect("loads");
        ash_store::Store::new(Arc::new(plugin))
    };
    ash_store::conformance::run_records(&open(&one), &open(&two)).await;
    one.drop();
    two.drop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_grant_the_redis_plugin_reports_the_store_unavailable() {
    let storage = load("ash-test-ungranted:", &[]).expect("loads");
    let error = ash_core::Storage::get(&storage, "c", "k")
        .await
        .unwrap_err();
    assert!(
        matches!(error, ash_core::StorageError::Unavailable(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("cannot reach Redis"), "{error}");
}

#[test]
fn a_storage_plugin_is_not_a_hook_plugin() {
    let config = PluginConfig {
        path: plugin_dir(),
        ..PluginConfig::default()
    };
    let error = ash_plugin_host::Plugins::load(&[config], None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("[storage]"), "{error}");
}
