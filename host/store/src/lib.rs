//! Ash's storage: the records the server keeps ([`Store`]: agents, sessions, their messages and
//! event logs, API keys, credentials), written as documents and streams on the storage port
//! ([`ash_core::Storage`]), so any backend of the port can hold them; the port's built-in SQL
//! backends ([`SqlStorage`]: an SQLite file, the default, or Postgres); copying every record
//! from one backend to another ([`Store::copy_to`]); and the suite every backend of the port
//! must pass ([`conformance`]).
//!
//! Migrations are embedded in the binary and run on open; a newer database than this binary
//! knows is refused rather than guessed at.

pub mod conformance;
mod copy;
mod log;
mod records;
mod runners;
mod sql;

pub use copy::{Copied, CopyError};
pub use log::TurnMark;
pub use records::{DashboardSession, SealedKey, Store, Tried, UsageFilter};
pub use runners::{Beat, Load, Runner, RunnerState, Runners};
pub use sql::{redact, Appended, Appends, Database, SqlStorage};

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error(
        "cannot connect to the database at {url}: {source}; check that the database server is \
         running and reachable from here, that the database exists and that this user may log \
         in (the URL comes from ASH_DATABASE_URL, --database-url or database_url)"
    )]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Storage(#[from] ash_core::StorageError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A turn's end came after another server had closed that turn (its node was declared
    /// dead): nothing was written.
    #[error("the turn of session {0} was closed by another server")]
    TurnClosed(ash_core::SessionId),
    /// A status transition the session's stored status does not allow.
    #[error(transparent)]
    Refused(#[from] ash_core::CoreError),
}

impl StoreError {
    /// The store is out of reach for now; the same call may work later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Storage(ash_core::StorageError::Unavailable(_)))
    }

    /// The store's disk is full; the same call may work once there is space again.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Storage(ash_core::StorageError::Full(_)))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
