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
    /// Whether the schema's tables go to a tablespace of the same name.
    tablespace: bool,
}

impl TestSchema {
    pub async fn create() -> Self {
        Self::make(None).await
    }

    /// A schema whose tables are created in a tablespace of their own at `location` (a folder
    /// the Postgres server's user owns; creating it takes a superuser), so a test can fill
    /// the disk under them.
    pub async fn create_in(location: &std::path::Path) -> Self {
        Self::make(Some(location)).await
    }

    async fn make(location: Option<&std::path::Path>) -> Self {
        let admin = sqlx::PgPool::connect(&postgres_url())
            .await
            .expect("Postgres at ASH_TEST_DATABASE_URL (default 127.0.0.1:5432/test) must be up");
        let name = format!("ash_test_{}", uuid::Uuid::new_v4().simple());
        if let Some(location) = location {
            let location = location.display().to_string().replace('\'', "''");
            sqlx::query(&format!("CREATE TABLESPACE {name} LOCATION '{location}'"))
                .execute(&admin)
                .await
                .expect("create a test tablespace");
        }
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .expect("create a test schema");
        Self {
            admin,
            name,
            tablespace: location.is_some(),
        }
    }

    /// The test database's URL with this schema first on the search path (and its
    /// tablespace the default, when it has one).
    pub fn url(&self) -> String {
        let url = postgres_url();
        let joiner = if url.contains('?') { '&' } else { '?' };
        let name = &self.name;
        let tablespace = match self.tablespace {
            true => format!("%20-c%20default_tablespace%3D{name}"),
            false => String::new(),
        };
        format!("{url}{joiner}options=-c%20search_path%3D{name}{tablespace}")
    }

    pub async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .expect("drop the test schema");
        if self.tablespace {
            sqlx::query(&format!("DROP TABLESPACE {}", self.name))
                .execute(&self.admin)
                .await
                .expect("drop the test tablespace");
        }
    }
}
