//! The snapshot store on a local folder: what is stored comes back whole, and anything
//! damaged in the store is refused, never handed out.

use ash_snapshots::{SnapshotError, SnapshotStore};
use bytes::Bytes;

const SESSION: &str = "0b6a8f8e-3a1c-4a4e-9d43-1c2f7b9e5d10";

fn store() -> (tempfile::TempDir, SnapshotStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(Some(dir.path().to_str().unwrap()), dir.path()).unwrap();
    (dir, store)
}

/// The one bundle file of the session in the store.
fn bundle_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join(SESSION))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap()
}

#[tokio::test]
async fn a_snapshot_comes_back_as_stored_and_the_newest_replaces_the_last() {
    let (dir, store) = store();
    assert!(store.get(SESSION).await.unwrap().is_none());
    store
        .put(SESSION, Bytes::from_static(b"first"))
        .await
        .unwrap();
    store
        .put(SESSION, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(store.get(SESSION).await.unwrap().unwrap(), "second");
    let bundles = std::fs::read_dir(dir.path().join(SESSION)).unwrap().count();
    assert_eq!(
        bundles, 2,
        "the newest bundle and latest.json; the old bundle is gone"
    );
    store.delete(SESSION).await.unwrap();
    assert!(store.get(SESSION).await.unwrap().is_none());
}

#[tokio::test]
async fn a_bundle_truncated_or_changed_in_the_store_is_refused() {
    let (dir, store) = store();
    store
        .put(SESSION, Bytes::from_static(b"the files"))
        .await
        .unwrap();
    let file = bundle_file(dir.path());
    std::fs::write(&file, b"the fil").unwrap();
    let err = store.get(SESSION).await.unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    std::fs::write(&file, b"THE FILES").unwrap();
    let err = store.get(SESSION).await.unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
    // The control: the same bytes as written are accepted.
    std::fs::write(&file, b"the files").unwrap();
    assert_eq!(store.get(SESSION).await.unwrap().unwrap(), "the files");
}

#[tokio::test]
async fn a_manifest_that_is_garbage_or_names_another_file_is_refused() {
    let (dir, store) = store();
    store.put(SESSION, Bytes::from_static(b"x")).await.unwrap();
    let latest = dir.path().join(SESSION).join("latest.json");
    for garbage in [
        "not json".to_owned(),
        r#"{"bundle":"../../etc/passwd","size":1,"sha256":"00"}"#.to_owned(),
        "x".repeat(5000),
    ] {
        std::fs::write(&latest, &garbage).unwrap();
        let err = store.get(SESSION).await.unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    }
}

#[test]
fn a_relative_folder_or_a_bucketless_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["snapshots", "s3://", "s3:///prefix"] {
        assert!(SnapshotStore::open(Some(bad), dir.path()).is_err(), "{bad}");
    }
}
