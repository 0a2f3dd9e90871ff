//! The storage port's conformance suite on the `storage-redis` plugin (built from
//! `plugins/storage-redis` by `scripts/build-plugins.sh`) against the real Redis at
//! `ASH_TEST_REDIS` (default 127.0.0.1:6379), under a key prefix of its own that is deleted
//! afterwards.

use std::io::{Read, Write};
use std::path::PathBuf;

use ash_plugin_host::{PluginConfig, StoragePlugin};

fn redis_address() -> String {
    std::env::var("ASH_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/storage-redis")
}

/// Deletes every key under `prefix` (one Lua call over a raw connection).
fn delete_prefix(prefix: &str) {
    let script =
        "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0";
    let pattern = format!("{prefix}*");
    let args = ["EVAL", script, "0", pattern.as_str()];
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut redis = std::net::TcpStream::connect(redis_address()).unwrap();
    redis.write_all(request.as_bytes()).unwrap();
    let mut reply = [0u8; 4];
    redis.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b":0\r\n", "cleanup");
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
    let prefix = format!(
        "ash-test-{}-{}:",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap()
            .as_nanos()
    );
    let storage = load(&prefix, &[&redis_address()]).expect("run scripts/build-plugins.sh first");
    ash_store::conformance::run(&storage, "t/").await;
    assert_eq!(
        storage.status().failures,
        0,
        "{:?}",
        storage.status().last_error
    );
    delete_prefix(&prefix);
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
