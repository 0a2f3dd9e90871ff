//! The storage port's conformance suite on the real backends: a SQLite file, and the real
//! Postgres at `ASH_TEST_DATABASE_URL` (default: this machine's, 127.0.0.1:5432, database
//! `test`), each run in a schema of its own that is dropped afterwards.

use ash_store::conformance::{self, TestSchema};
use std::sync::Arc;

use ash_store::{SqlStorage, Store};

#[tokio::test]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqlStorage::open_sqlite(&dir.path().join("ash.db"))
        .await
        .unwrap();
    conformance::run(&storage, "t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let schema = TestSchema::create().await;
    let storage = SqlStorage::connect_postgres(&schema.url()).await.unwrap();
    conformance::run(&storage, "t/").await;
    // Opening again finds the schema up to date.
    SqlStorage::connect_postgres(&schema.url()).await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_named_with_its_password_hidden_and_what_to_check() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://ash:hunter2@127.0.0.1:{port}/ash");
    let error = SqlStorage::connect_postgres(&url)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!("postgres://ash:***@127.0.0.1:{port}/ash")),
        "{error}"
    );
    assert!(
        error.contains("check that the database server is running"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn records_on_sqlite_conform() {
    let dir = tempfile::tempdir().unwrap();
    let open = async |name: &str| {
        let storage = SqlStorage::open_sqlite(&dir.path().join(name)).await;
        Store::new(Arc::new(storage.unwrap()))
    };
    conformance::run_records(&open("ash.db").await, &open("copy.db").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_postgres_conform() {
    let (one, two) = (TestSchema::create().await, TestSchema::create().await);
    let open = async |schema: &TestSchema| {
        let storage = SqlStorage::connect_postgres(&schema.url()).await;
        Store::new(Arc::new(storage.unwrap()))
    };
    conformance::run_records(&open(&one).await, &open(&two).await).await;
    one.drop().await;
    two.drop().await;
}
