//! A Postgres of its own for each test: a fresh schema on the shared test database.

/// The Postgres the tests use: `ASH_TEST_DATABASE_URL`, by default this machine's
/// (127.0.0.1:5432, database `test`).
pub fn postgres_url() -> String {
    std::env::var("ASH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema on the test Postgres, so tests can share one database; [`drop`](Self::drop)
/// removes it.
pub struct TestSchema {
    admin: sqlx::PgPool,
    name: String,
}

impl TestSchema {
    pub async fn create() -> Self {
        let admin = sqlx::PgPool::connect(&postgres_url())
            .await
            .expect("Postgres at ASH_TEST_DATABASE_URL (default 127.0.0.1:5432/test) must be up");
        let name = format!("ash_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .expect("create a test schema");
        Self { admin, name }
    }

    /// The test database's URL with this schema first on the search path.
    pub fn url(&self) -> String {
        let url = postgres_url();
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}options=-c%20search_path%3D{}", self.name)
    }

    pub async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .expect("drop the test schema");
    }
}
