//! A storage plugin that breaks the contract, errs, traps or never returns (`test-hostile`,
//! built by `scripts/build-plugins.sh`, loaded as a store): every call gets a typed error,
//! nothing panics, and five failures in a row make storage `unavailable` (it fails closed).

use std::path::{Path, PathBuf};

use ash_core::{Storage, StorageError};
use ash_plugin_host::{PluginConfig, StoragePlugin};

/// `test-hostile` packaged as a storage plugin in `dir`, in `mode`.
fn hostile(dir: &Path, mode: &str) -> StoragePlugin {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/test-hostile");
    std::fs::copy(
        built.join("test_hostile.wasm"),
        dir.join("test_hostile.wasm"),
    )
    .expect("run scripts/build-plugins.sh first");
    std::fs::write(
        dir.join("plugin.toml"),
        "id = \"test-hostile\"\nversion = \"0.1.0\"\nkind = \"storage\"\n\
         world = \"ash:storage/storage-backend@0.2.0\"\ncomponent = \"test_hostile.wasm\"\n\
         [capabilities]\nconfig = [\"mode\"]\n[limits]\nmemory_mb = 16\ndeadline_ms = 100\n",
    )
    .unwrap();
    StoragePlugin::load(
        &PluginConfig {
            path: dir.to_owned(),
            config: [("mode".to_owned(), mode.to_owned())].into(),
            ..PluginConfig::default()
        },
        None,
    )
    .unwrap()
}

fn internal<T: std::fmt::Debug>(outcome: Result<T, StorageError>, says: &str) {
    match outcome {
        Err(StorageError::Internal(message)) => {
            assert!(message.contains(says), "{message} should say {says:?}")
        }
        other => panic!("expected an internal error saying {says:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_the_contract_are_typed_errors_and_quarantine_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = hostile(dir.path(), "garbage");
    internal(store.get("c", "k").await, "returned c/not-k for c/k");
    internal(
        store.put("c", "k", "{}", 0, &[]).await,
        "returned revision 7",
    );
    internal(store.list("c", "", 10).await, "not in ascending order");
    internal(
        store.append("s", &["{}".to_owned()]).await,
        "sequence number 0",
    );
    let last = store.read("s", 4, 10).await;
    assert!(
        matches!(&last, Err(StorageError::Unavailable(m)) if m.contains("quarantined") && m.contains("skip or repeat")),
        "the fifth failure in a row quarantines: {last:?}"
    );
    let after = store.get("c", "k").await;
    assert!(
        matches!(after, Err(StorageError::Unavailable(_))),
        "{after:?}"
    );
    assert!(store.status().quarantined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_answered_out_of_contract_is_internal() {
    let dir = tempfile::tempdir().unwrap();
    let store = hostile(dir.path(), "garbage");
    internal(store.delete("c", "k", 1).await, "returned 5 for a delete");
    let writes = [
        ash_core::Write::Append {
            stream: "s".into(),
            entries: vec!["{}".into()],
        },
        ash_core::Write::Delete {
            collection: "c".into(),
            key: "k".into(),
            expected: 1,
        },
    ];
    internal(store.commit(&writes).await, "sequence number 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_with_an_unknown_code_is_internal_and_not_the_plugins_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = hostile(dir.path(), "error");
    for _ in 0..6 {
        internal(store.get("c", "k").await, "the hostile store refuses");
    }
    assert_eq!(
        store.status().failures,
        0,
        "an answered error is not a failure"
    );
    assert!(!store.status().quarantined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_traps_or_never_returns_fails_the_call_and_the_server_carries_on() {
    for (mode, says) in [("trap", "trap"), ("loop", "deadline"), ("memory", "memory")] {
        let dir = tempfile::tempdir().unwrap();
        let store = hostile(dir.path(), mode);
        let outcome = store.put("c", "k", "{}", 0, &[]).await;
        match outcome {
            Err(StorageError::Internal(message)) => {
                assert!(message.to_lowercase().contains(says), "{mode}: {message}")
            }
            other => panic!("{mode}: {other:?}"),
        }
    }
}
