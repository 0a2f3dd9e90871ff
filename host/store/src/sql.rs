//! The storage port ([`ash_core::Storage`]) on SQL: an SQLite file (the default, in the data
//! dir), or Postgres (`postgres://…`, also CockroachDB's Postgres wire protocol). One set of
//! statements serves both (numbered `$n` parameters, `ON CONFLICT … RETURNING`); [`with_pool!`]
//! runs it on whichever pool this is.
//!
//! Every write is one transaction whose first statement writes, so SQLite takes its write lock
//! at once and Postgres locks the row: a revision check and an append's numbering cannot race.
//! Postgres errors that mean "try again" (serialization failure, deadlock — CockroachDB
//! reports its transaction conflicts as serialization failures) are retried a few times.
//! Errors that mean the database is out of reach (a broken or refused connection, a server
//! shutting down, a pool that cannot get a connection in time) are `unavailable`: the server
//! answers 503, and the pool opens new connections by itself once the database is back. A
//! database whose disk is full is `full` (507). A connection whose transaction could not be
//! committed or rolled back is closed, never reused: nothing later on it can look committed
//! when it is not.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ash_core::{
    check_commit, check_find, check_limit, check_name, Document, Entry, Storage, StorageError,
    Write,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::StoreError;

/// Rows of one multi-row INSERT of stream entries.
const ENTRIES_PER_INSERT: usize = 1000;
/// Attempts of an operation that Postgres asked to retry.
const ATTEMPTS: usize = 5;
/// How long a call waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The storage port on a SQL database. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct SqlStorage {
    pool: Pool,
    /// Set on a Postgres that has LISTEN/NOTIFY: each commit that appends tells the other
    /// processes on the database which streams grew, tagged with this process's mark.
    notify: Option<Arc<str>>,
}

/// The channel appends are announced on; a payload is `<process mark> <stream>`.
const APPENDS: &str = "ash_appends";

/// Runs `$body` with `$pool` bound to this storage's pool, whichever database it is.
macro_rules! with_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A database named by URL: `sqlite:<path>` (or `sqlite://<path>`), or `postgres://…`
/// (`postgresql://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    /// Reads a database URL; anything else is an error that says what is accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path))),
            _ => Err(format!(
                "{:?} is not a database URL this server can use: give sqlite:<path to a file> \
                 or postgres://user:password@host:port/database",
                redact(url)
            )),
        }
    }

    /// Opens (SQLite: creating the file if needed) and migrates the database.
    pub async fn open(&self) -> Result<SqlStorage, StoreError> {
        match self {
            Self::Sqlite(path) => SqlStorage::open_sqlite(path).await,
            Self::Postgres(url) => SqlStorage::connect_postgres(url).await,
        }
    }
}

impl std::fmt::Display for Database {
    /// The URL with its password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl SqlStorage {
    /// Opens (creating if needed) the SQLite file in WAL mode and brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            notify: None,
        })
    }

    /// Connects to Postgres at `url` and brings its schema up to date. An unreachable
    /// database is an error naming the URL with its password hidden, and what to check.
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let connect = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let options: PgConnectOptions = url.parse().map_err(connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect)?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        // CockroachDB speaks the protocol but has no NOTIFY: there, nothing is announced.
        let notifies = sqlx::query("SELECT pg_notify($1, '')")
            .bind(APPENDS)
            .execute(&pool)
            .await
            .is_ok();
        let mark = uuid::Uuid::new_v4().to_string();
        Ok(Self {
            pool: Pool::Postgres(pool),
            notify: notifies.then(|| Arc::from(mark)),
        })
    }

    /// The runner registry of a cluster on this database; `None` on SQLite (one process
    /// needs none).
    pub fn runners(&self) -> Option<crate::Runners> {
        match &self.pool {
            Pool::Postgres(pool) => Some(crate::Runners { pool: pool.clone() }),
            Pool::Sqlite(_) => None,
        }
    }

    /// The appends other processes on this database commit, as they commit them (Postgres's
    /// LISTEN/NOTIFY); `None` where there is no such thing (SQLite: one process).
    pub async fn appends(&self) -> Result<Option<Appends>, StoreError> {
        let (Pool::Postgres(pool), Some(mark)) = (&self.pool, &self.notify) else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|e| StoreError::Storage(db(e)))?;
        listener
            .listen(APPENDS)
            .await
            .map_err(|e| StoreError::Storage(db(e)))?;
        Ok(Some(Appends {
            listener,
            mark: mark.clone(),
        }))
    }
}

/// What another process appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The named stream grew.
    Stream(String),
    /// Announcements may have been missed (the listening connection was lost and is back):
    /// any stream may have grown.
    Missed,
}

/// The appends of other processes on the database, as they commit.
pub struct Appends {
    listener: sqlx::postgres::PgListener,
    mark: Arc<str>,
}

impl Appends {
    /// The next append of another process. An error means the database is out of reach; the
    /// next call connects again (and answers [`Appended::Missed`] once it has).
    pub async fn next(&mut self) -> Result<Appended, StoreError> {
        loop {
            let notice = self
                .listener
                .try_recv()
                .await
                .map_err(|e| StoreError::Storage(db(e)))?;
            let Some(notice) = notice else {
                return Ok(Appended::Missed);
            };
            match notice.payload().split_once(' ') {
                Some((mark, stream)) if mark != &*self.mark => {
                    return Ok(Appended::Stream(stream.to_owned()))
                }
                _ => {}
            }
        }
    }
}

/// `url` with the password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// What a database error means to the port.
pub(crate) fn db(e: sqlx::Error) -> StorageError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StorageError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("40001" | "40P01") => StorageError::Conflict(format!("retry: {e}")),
            // SQLITE_FULL; Postgres's disk_full.
            Some("13" | "53100") => StorageError::Full(e.to_string()),
            // Connection exceptions, a server shutting down or out of resources.
            Some(code) if ["08", "53", "57"].contains(&&code[..code.len().min(2)]) => {
                StorageError::Unavailable(e.to_string())
            }
            _ => StorageError::Internal(e.to_string()),
        },
        _ => StorageError::Internal(e.to_string()),
    }
}

/// Runs `op` again while it fails with a Postgres "retry" conflict, a few times.
pub(crate) async fn retrying<T, F, Fut>(mut op: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StorageError::Conflict(m)) if m.starts_with("retry: ") && attempt < ATTEMPTS => {
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

fn number(value: u64, what: &str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::Invalid(format!("{what} is too large")))
}

fn document(collection: &str, (key, revision, data): (String, i64, String)) -> Document {
    Document {
        collection: collection.to_owned(),
        key,
        revision: revision as u64,
        data,
    }
}

#[async_trait]
impl Storage for SqlStorage {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StorageError> {
        check_name("collection", collection)?;
        check_name("key", key)?;
        let row: Option<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT key, revision, data FROM documents WHERE collection = $1 AND key = $2",
            )
            .bind(collection)
            .bind(key)
            .fetch_optional(pool)
            .await
        })
        .map_err(db)?;
        Ok(row.map(|row| document(collection, row)))
    }

    async fn list(
        &self,
        collection: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, StorageError> {
        check_name("collection", collection)?;
        check_limit(limit)?;
        let rows: Vec<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT key, revision, data FROM documents
                 WHERE collection = $1 AND key > $2 ORDER BY key LIMIT $3",
            )
            .bind(collection)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| document(collection, row))
            .collect())
    }

    async fn find(
        &self,
        collection: &str,
        index: &str,
        value: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, StorageError> {
        check_find(collection, index, value, limit)?;
        let rows: Vec<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.key, d.revision, d.data FROM document_index i
                 JOIN documents d ON d.collection = i.collection AND d.key = i.key
                 WHERE i.collection = $1 AND i.name = $2 AND i.value = $3 AND i.key > $4
                 ORDER BY i.key LIMIT $5",
            )
            .bind(collection)
            .bind(index)
            .bind(value)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| document(collection, row))
            .collect())
    }

    async fn read(&self, stream: &str, after: u64, limit: u32) -> Result<Vec<Entry>, StorageError> {
        check_name("stream", stream)?;
        check_limit(limit)?;
        let rows: Vec<(i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT sequence, data FROM stream_entries
                 WHERE stream = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
            )
            .bind(stream)
            .bind(number(after, "after")?)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(sequence, data)| Entry {
                sequence: sequence as u64,
                data,
            })
            .collect())
    }

    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>, StorageError> {
        check_commit(writes)?;
        retrying(|| async {
            with_pool!(self, pool => {
                let mut conn = pool.acquire().await.map_err(db)?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db)?;
                let outcome: Result<Vec<u64>, StorageError> = async {
                let mut results = Vec::with_capacity(writes.len());
                for write in writes {
                    results.push(match write {
                        Write::Put { collection, key, data, expected, index } => {
                            let statement = if *expected == 0 {
                                "INSERT INTO documents (collection, key, revision, data) VALUES ($1, $2, 1, $3)
                                 ON CONFLICT (collection, key) DO NOTHING"
                            } else {
                                "UPDATE documents SET revision = revision + 1, data = $3
                                 WHERE collection = $1 AND key = $2 AND revision = $4"
                            };
                            let mut query = sqlx::query(statement).bind(collection).bind(key).bind(data);
                            if *expected != 0 {
                                query = query.bind(number(*expected, "expected")?);
                            }
                            if query.execute(&mut *tx).await.map_err(db)?.rows_affected() != 1 {
                                return Err(StorageError::Conflict(format!(
                                    "{collection}/{key} is not at revision {expected}"
                                )));
                            }
                            sqlx::query("DELETE FROM document_index WHERE collection = $1 AND key = $2")
                                .bind(collection)
                                .bind(key)
                                .execute(&mut *tx)
                                .await
                                .map_err(db)?;
                            if !index.is_empty() {
                                let mut insert = sqlx::QueryBuilder::new(
                                    "INSERT INTO document_index (collection, name, value, key) ",
                                );
                                insert.push_values(index, |mut row, (name, value)| {
                                    row.push_bind(collection)
                                        .push_bind(name)
                                        .push_bind(value)
                                        .push_bind(key);
                                });
                                insert.push(" ON CONFLICT DO NOTHING");
                                insert.build().execute(&mut *tx).await.map_err(db)?;
                            }
                            expected + 1
                        }
                        Write::Delete { collection, key, expected } => {
                            let gone = sqlx::query(
                                "DELETE FROM documents WHERE collection = $1 AND key = $2 AND revision = $3",
                            )
                            .bind(collection)
                            .bind(key)
                            .bind(number(*expected, "expected")?)
                            .execute(&mut *tx)
                            .await
                            .map_err(db)?
                            .rows_affected();
                            if gone == 1 {
                                sqlx::query("DELETE FROM document_index WHERE collection = $1 AND key = $2")
                                    .bind(collection)
                                    .bind(key)
                                    .execute(&mut *tx)
                                    .await
                                    .map_err(db)?;
                                1
                            } else {
                                let current: Option<i64> = sqlx::query_scalar(
                                    "SELECT revision FROM documents WHERE collection = $1 AND key = $2",
                                )
                                .bind(collection)
                                .bind(key)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(db)?;
                                if let Some(current) = current {
                                    return Err(StorageError::Conflict(format!(
                                        "{collection}/{key} is at revision {current}, not {expected}"
                                    )));
                                }
                                0
                            }
                        }
                        Write::Append { stream, entries } => {
                            let count = entries.len() as i64;
                            let last: i64 = sqlx::query_scalar(
                                "INSERT INTO streams (stream, last) VALUES ($1, $2)
                                 ON CONFLICT (stream) DO UPDATE SET last = streams.last + $2
                                 RETURNING last",
                            )
                            .bind(stream)
                            .bind(count)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db)?;
                            let first = last - count + 1;
                            for (chunk, rows) in entries.chunks(ENTRIES_PER_INSERT).enumerate() {
                                let start = first + (chunk * ENTRIES_PER_INSERT) as i64;
                                let mut insert = sqlx::QueryBuilder::new(
                                    "INSERT INTO stream_entries (stream, sequence, data) ",
                                );
                                insert.push_values(rows.iter().enumerate(), |mut row, (i, data)| {
                                    row.push_bind(stream)
                                        .push_bind(start + i as i64)
                                        .push_bind(data.as_str());
                                });
                                insert.build().execute(&mut *tx).await.map_err(db)?;
                            }
                            first as u64
                        }
                    });
                }
                if let Some(mark) = &self.notify {
                    // Delivered at commit, and only if it commits.
                    let mut grew: Vec<String> = writes
                        .iter()
                        .filter_map(|write| match write {
                            Write::Append { stream, .. } => Some(format!("{mark} {stream}")),
                            _ => None,
                        })
                        .collect();
                    grew.dedup();
                    if !grew.is_empty() {
                        // One statement whatever the count (stream names hold no newline).
                        let announce = "SELECT pg_notify($1, payload) FROM regexp_split_to_table($2, E'\\n') AS payload";
                        sqlx::query(announce)
                            .bind(APPENDS)
                            .bind(grew.join("\n"))
                            .execute(&mut *tx)
                            .await
                            .map_err(db)?;
                    }
                }
                Ok(results)
                }
                .await;
                let ended = match outcome {
                    Ok(_) => tx.commit().await,
                    Err(_) => tx.rollback().await,
                };
                if let Err(e) = ended {
                    // The connection may still be inside the transaction (SQLite keeps it
                    // after a COMMIT that failed for a full disk, holding the write lock) or
                    // outside it with sqlx believing otherwise: either way later writes on it
                    // would not be what they seem. It is closed, never reused.
                    let _ = conn.close().await;
                    return Err(outcome.err().unwrap_or_else(|| db(e)));
                }
                outcome
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact("postgres://ash:s3cret@db.example:5432/ash"),
            "postgres://ash:***@db.example:5432/ash"
        );
        assert_eq!(
            redact("postgres://ash@127.0.0.1/test"),
            "postgres://ash@127.0.0.1/test"
        );
        assert_eq!(
            redact("postgres://p%40ss:x@h/d"),
            "postgres://p%40ss:***@h/d"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn database_urls_name_sqlite_files_or_postgres() {
        assert_eq!(
            Database::parse("sqlite:///var/lib/ash/ash.db"),
            Ok(Database::Sqlite("/var/lib/ash/ash.db".into()))
        );
        assert_eq!(
            Database::parse("sqlite:ash.db"),
            Ok(Database::Sqlite("ash.db".into()))
        );
        let pg = "postgresql://ash:pw@db/ash";
        assert_eq!(Database::parse(pg), Ok(Database::Postgres(pg.into())));
        assert_eq!(
            Database::parse(pg).unwrap().to_string(),
            "postgresql://ash:***@db/ash"
        );
        let refused = Database::parse("mysql://root:pw@db/ash").unwrap_err();
        assert!(refused.contains("mysql://root:***@db/ash") && refused.contains("postgres://"));
        assert!(Database::parse("sqlite:").is_err());
    }
}
