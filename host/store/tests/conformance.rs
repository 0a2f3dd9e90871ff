//! The storage port's conformance suite on the real backends: a SQLite file, and the real
//! Postgres at `ASH_TEST_DATABASE_URL` (default: this machine's, 127.0.0.1:5432, database
//! `test`), each run in a schema of its own that is dropped afterwards.

use ash_store::{conformance, SqlStorage, Store};

fn postgres_url() -> String {
    std::env::var("ASH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema on the test database, dropped when the test is done.
struct Schema {
    admin: sqlx::PgPool,
    name: String,
}

impl Schema {
    async fn create() -> Self {
        let admin = sqlx::PgPool::connect(&postgres_url())
            .await
            .expect("Postgres at ASH_TEST_DATABASE_URL (default 127.0.0.1:5432/test) must be up");
        let name = format!("ash_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .unwrap();
        Self { admin, name }
    }

    /// The test database's URL with this schema first on the search path.
    fn url(&self) -> String {
        let url = postgres_url();
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}options=-c%20search_path%3D{}", self.name)
    }

    async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ash.db")).await.unwrap();
    conformance::run(&store.storage(), "t/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let schema = Schema::create().await;
    let storage = SqlStorage::connect_postgres(&schema.url()).await.unwrap();
    conformance::run(&storage, "t/").await;
    // Opening again finds the schema up to date.
    SqlStorage::connect_postgres(&schema.url()).await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_named_with_its_password_hidden() {
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
    assert!(!error.contains("hunter2"), "{error}");
}
