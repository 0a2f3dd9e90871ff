//! Ash's built-in stores: one SQLite file in WAL mode (the default), and the storage port
//! ([`SqlStorage`]) on that file or on Postgres, with the suite every backend of the port must
//! pass ([`conformance`]).
//!
//! Writes that must not race are single statements (a message's sequence number is
//! assigned inside its own INSERT), so concurrent turns never lose or duplicate a row.
//! Migrations are embedded in the binary and run on open; a newer database than this
//! binary knows is refused rather than guessed at.

pub mod conformance;
mod documents;
mod sqlite;

pub use documents::{redact, SqlStorage};
pub use sqlite::{SealedKey, Store};

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
