//! The storage port's conformance suite on the real backends: a SQLite file, and the real
//! Postgres at `ASH_TEST_DATABASE_URL` (default: this machine's, 127.0.0.1:5432, database
//! `test`), each run in a schema of its own that is dropped afterwards.

use ash_store::conformance::{self, TestSchema};
use std::sync::Arc;

use ash_core::{Storage, Write};
use ash_store::{Appended, SqlStorage, Store};

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

#[tokio::test]
async fn appends_on_postgres_are_heard_by_the_other_processes_and_not_by_their_own() {
    let schema = TestSchema::create().await;
    let (one, other) = (
        SqlStorage::connect_postgres(&schema.url()).await.unwrap(),
        SqlStorage::connect_postgres(&schema.url()).await.unwrap(),
    );
    let mut heard_by_other = other.appends().await.unwrap().expect("Postgres announces");
    let mut heard_by_one = one.appends().await.unwrap().expect("Postgres announces");
    let append = |stream: &str| Write::Append {
        stream: stream.into(),
        entries: vec!["{}".into()],
    };
    one.commit(&[append("events/a"), append("messages/a")])
        .await
        .unwrap();
    other.commit(&[append("events/b")]).await.unwrap();
    for stream in ["events/a", "messages/a"] {
        let heard = within(heard_by_other.next()).await.unwrap().unwrap();
        assert_eq!(heard, Appended::Stream(stream.into()));
    }
    // Its own appends are not announced back to a process: the first it hears is the other's.
    let heard = within(heard_by_one.next()).await.unwrap().unwrap();
    assert_eq!(heard, Appended::Stream("events/b".into()));
    // SQLite is one process's: it has nothing to announce.
    assert!(
        SqlStorage::open_sqlite(&tempfile::tempdir().unwrap().path().join("x.db"))
            .await
            .unwrap()
            .appends()
            .await
            .unwrap()
            .is_none()
    );
    schema.drop().await;
}

/// `heard`, if it comes within 10 s.
async fn within<T>(
    heard: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(std::time::Duration::from_secs(10), heard).await
}
