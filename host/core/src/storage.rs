//! The storage port: what Ash needs of any store, as three things every store can offer —
//! JSON documents with revisions (compare-and-swap writes), secondary-index lookups over them,
//! and append-only streams with gap-free sequence numbers. It is the contract of the WIT world
//! `ash:storage/storage-backend` (wit/storage), method for method: SQLite and Postgres implement
//! it natively (`ash-store`), any other store as a WebAssembly plugin.
//!
//! Every backend enforces the same limits ([`check_name`], [`check_data`], [`MAX_LIMIT`]), so a
//! request one backend takes, every backend takes.

use async_trait::async_trait;

/// A JSON document under a collection and a key, with the revision of its last write (1 for
/// the first; every write adds one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub collection: String,
    pub key: String,
    pub revision: u64,
    pub data: String,
}

/// One entry of a stream: its sequence number (1, 2, 3, … with no gaps) and JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sequence: u64,
    pub data: String,
}

/// Why a storage call failed; the WIT `error` record's `code` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A revision check failed; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store cannot be reached; the same call may work later.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// The request breaks the contract (a name or document too long, a bad argument).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// Anything else, including a backend that broke the contract in its answer.
    #[error("storage failed: {0}")]
    Internal(String),
}

impl StorageError {
    /// The WIT `error.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Conflict(_) => "conflict",
            StorageError::Unavailable(_) => "unavailable",
            StorageError::Invalid(_) => "invalid",
            StorageError::Internal(_) => "internal",
        }
    }

    /// The error a WIT `error` record stands for; an unknown code counts as `internal`.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "conflict" => StorageError::Conflict(message),
            "unavailable" => StorageError::Unavailable(message),
            "invalid" => StorageError::Invalid(message),
            _ => StorageError::Internal(message),
        }
    }
}

/// The longest collection, key, stream, index name or index value, in bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// The largest document or stream entry, in bytes.
pub const MAX_DATA_BYTES: usize = 16 * 1024 * 1024;
/// The most documents or entries one `list`, `find` or `read` returns, and the most entries
/// one `append` takes.
pub const MAX_LIMIT: u32 = 10_000;

/// Refuses an empty or overlong name, or one holding a NUL (which Postgres text cannot
/// hold); `what` names it in the error.
pub fn check_name(what: &str, name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(StorageError::Invalid(format!(
            "{what} must be 1-{MAX_NAME_BYTES} bytes without NUL"
        )));
    }
    Ok(())
}

/// Refuses a document or entry over [`MAX_DATA_BYTES`] or holding a NUL.
pub fn check_data(data: &str) -> Result<(), StorageError> {
    if data.len() > MAX_DATA_BYTES || data.contains('\0') {
        return Err(StorageError::Invalid(format!(
            "a document or entry is at most {MAX_DATA_BYTES} bytes, without NUL"
        )));
    }
    Ok(())
}

/// Refuses a page size of 0 or over [`MAX_LIMIT`].
pub fn check_limit(limit: u32) -> Result<(), StorageError> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(StorageError::Invalid(format!(
            "limit must be 1-{MAX_LIMIT}"
        )));
    }
    Ok(())
}

/// The checks of a `put`: its names, its document and its index entries.
pub fn check_put(
    collection: &str,
    key: &str,
    data: &str,
    index: &[(String, String)],
) -> Result<(), StorageError> {
    check_name("collection", collection)?;
    check_name("key", key)?;
    check_data(data)?;
    for (name, value) in index {
        check_name("index name", name)?;
        check_name("index value", value)?;
    }
    Ok(())
}

/// The checks of an `append`: its stream's name, 1 to [`MAX_LIMIT`] entries, each in limits.
pub fn check_append(stream: &str, entries: &[String]) -> Result<(), StorageError> {
    check_name("stream", stream)?;
    if entries.is_empty() || entries.len() > MAX_LIMIT as usize {
        return Err(StorageError::Invalid(format!(
            "append takes 1-{MAX_LIMIT} entries"
        )));
    }
    entries.iter().try_for_each(|entry| check_data(entry))
}

/// The checks of a `find`: its collection, index name and value, and page size.
pub fn check_find(
    collection: &str,
    index: &str,
    value: &str,
    limit: u32,
) -> Result<(), StorageError> {
    check_name("collection", collection)?;
    check_name("index name", index)?;
    check_name("index value", value)?;
    check_limit(limit)
}

/// A store. Every method is one atomic operation.
#[async_trait]
pub trait Storage: Send + Sync {
    /// The document, or none.
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StorageError>;

    /// Writes a document when its current revision is `expected` (0: it must not exist yet),
    /// replacing its index entries with `index` (pairs of index name and value). Returns the
    /// new revision; a different current revision is a `Conflict` and writes nothing.
    async fn put(
        &self,
        collection: &str,
        key: &str,
        data: &str,
        expected: u64,
        index: &[(String, String)],
    ) -> Result<u64, StorageError>;

    /// Deletes a document and its index entries when its revision is `expected`; `false` when
    /// there was none, a `Conflict` when its revision differs.
    async fn delete(
        &self,
        collection: &str,
        key: &str,
        expected: u64,
    ) -> Result<bool, StorageError>;

    /// Documents of a collection in key order (bytewise), after the key `after` (empty: from
    /// the start), at most `limit`.
    async fn list(
        &self,
        collection: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, StorageError>;

    /// Documents whose index `index` has the value `value`, in key order after `after`.
    async fn find(
        &self,
        collection: &str,
        index: &str,
        value: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, StorageError>;

    /// Appends entries to a stream, atomically and in order; returns the sequence number of
    /// the first. Concurrent appends to one stream never share or skip a number.
    async fn append(&self, stream: &str, entries: &[String]) -> Result<u64, StorageError>;

    /// Entries of a stream with a sequence number above `after`, in order, at most `limit`.
    async fn read(&self, stream: &str, after: u64, limit: u32) -> Result<Vec<Entry>, StorageError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_internal() {
        for error in [
            StorageError::Conflict("a".into()),
            StorageError::Unavailable("b".into()),
            StorageError::Invalid("c".into()),
            StorageError::Internal("d".into()),
        ] {
            let message = error.to_string();
            let back = StorageError::from_code(error.code(), "x".into());
            assert_eq!(back.code(), error.code(), "{message}");
        }
        assert_eq!(
            StorageError::from_code("teapot", "?".into()),
            StorageError::Internal("?".into())
        );
    }

    #[test]
    fn limits_are_checked_alike() {
        assert!(check_name("key", "").is_err());
        assert!(check_name("key", &"k".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(check_name("key", "sessions/1").is_ok());
        assert!(check_limit(0).is_err() && check_limit(MAX_LIMIT + 1).is_err());
        assert!(check_data(&"x".repeat(MAX_DATA_BYTES + 1)).is_err());
    }
}
