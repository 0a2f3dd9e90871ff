//! The storage port: what Ash needs of any store, as three things every store can offer —
//! JSON documents with revisions (compare-and-swap writes), secondary-index lookups over them,
//! and append-only streams with gap-free sequence numbers. It is the contract of the WIT world
//! `ash:storage/storage-backend` (wit/storage), method for method: SQLite and Postgres implement
//! it natively (`ash-store`), any other store as a WebAssembly plugin.
//!
//! Reads are single calls; every write goes through [`Storage::commit`], which applies a list of
//! puts, deletes and appends atomically — all of them or none — so a caller that must write a
//! document and a stream together (a session's mark and its turn's frames) needs one round
//! trip and can never leave half of it behind. `put`, `delete` and `append` are commits of one.
//!
//! Every backend enforces the same limits ([`check_name`], [`check_data`], [`MAX_LIMIT`],
//! [`check_commit`]), so a request one backend takes, every backend takes.

use std::collections::HashSet;

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

/// One write of a [`Storage::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Writes a document when its current revision is `expected` (0: it must not exist yet),
    /// replacing its index entries with `index`; its result is the new revision.
    Put {
        collection: String,
        key: String,
        data: String,
        expected: u64,
        index: Vec<(String, String)>,
    },
    /// Deletes a document and its index entries when its revision is `expected`; its result is
    /// 1, or 0 when there was none.
    Delete {
        collection: String,
        key: String,
        expected: u64,
    },
    /// Appends entries to a stream in order; its result is the first entry's sequence number.
    Append {
        stream: String,
        entries: Vec<String>,
    },
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
    /// The store's disk is full; nothing was written, and the same call may work once there
    /// is space again.
    #[error("the store's disk is full: {0}")]
    Full(String),
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
            StorageError::Full(_) => "full",
            StorageError::Invalid(_) => "invalid",
            StorageError::Internal(_) => "internal",
        }
    }

    /// The error a WIT `error` record stands for; an unknown code counts as `internal`.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "conflict" => StorageError::Conflict(message),
            "unavailable" => StorageError::Unavailable(message),
            "full" => StorageError::Full(message),
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
/// one commit appends.
pub const MAX_LIMIT: u32 = 10_000;
/// The most writes in one commit.
pub const MAX_WRITES: usize = 100;
/// The most index entries one document has.
pub const MAX_INDEX_ENTRIES: usize = 64;

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

/// The checks of a `put`: its names, its document and its index entries (at most
/// [`MAX_INDEX_ENTRIES`]).
pub fn check_put(
    collection: &str,
    key: &str,
    data: &str,
    index: &[(String, String)],
) -> Result<(), StorageError> {
    check_name("collection", collection)?;
    check_name("key", key)?;
    check_data(data)?;
    if index.len() > MAX_INDEX_ENTRIES {
        return Err(StorageError::Invalid(format!(
            "a document has at most {MAX_INDEX_ENTRIES} index entries"
        )));
    }
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

/// The checks of a commit: 1 to [`MAX_WRITES`] writes, each in limits, at most [`MAX_LIMIT`]
/// entries in all, and no document or stream written twice (so every backend can check all
/// revisions before it writes anything).
pub fn check_commit(writes: &[Write]) -> Result<(), StorageError> {
    if writes.is_empty() || writes.len() > MAX_WRITES {
        return Err(StorageError::Invalid(format!(
            "a commit holds 1-{MAX_WRITES} writes"
        )));
    }
    let (mut documents, mut streams, mut entries) = (HashSet::new(), HashSet::new(), 0);
    for write in writes {
        let once = match write {
            Write::Put {
                collection,
                key,
                data,
                index,
                ..
            } => {
                check_put(collection, key, data, index)?;
                documents.insert((collection, key))
            }
            Write::Delete {
                collection, key, ..
            } => {
                check_name("collection", collection)?;
                check_name("key", key)?;
                documents.insert((collection, key))
            }
            Write::Append {
                stream,
                entries: these,
            } => {
                check_append(stream, these)?;
                entries += these.len();
                streams.insert(stream)
            }
        };
        if !once {
            return Err(StorageError::Invalid(
                "a commit writes each document and each stream at most once".into(),
            ));
        }
    }
    if entries > MAX_LIMIT as usize {
        return Err(StorageError::Invalid(format!(
            "a commit appends at most {MAX_LIMIT} entries"
        )));
    }
    Ok(())
}

/// The one result a commit of one write gave.
fn only(results: Vec<u64>) -> Result<u64, StorageError> {
    match results[..] {
        [result] => Ok(result),
        _ => Err(StorageError::Internal(format!(
            "a commit of one write gave {} results",
            results.len()
        ))),
    }
}

/// A store. Every method is one atomic operation.
#[async_trait]
pub trait Storage: Send + Sync {
    /// The document, or none.
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StorageError>;

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

    /// Entries of a stream with a sequence number above `after`, in order, at most `limit`.
    async fn read(&self, stream: &str, after: u64, limit: u32) -> Result<Vec<Entry>, StorageError>;

    /// Applies the writes atomically and in order — all of them, or none — and returns one
    /// result per write (see [`Write`]). A put or delete whose revision check fails is a
    /// `Conflict`, and nothing is written. Concurrent appends to one stream never share or
    /// skip a number.
    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>, StorageError>;

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
    ) -> Result<u64, StorageError> {
        only(
            self.commit(&[Write::Put {
                collection: collection.to_owned(),
                key: key.to_owned(),
                data: data.to_owned(),
                expected,
                index: index.to_vec(),
            }])
            .await?,
        )
    }

    /// Deletes a document and its index entries when its revision is `expected`; `false` when
    /// there was none, a `Conflict` when its revision differs.
    async fn delete(
        &self,
        collection: &str,
        key: &str,
        expected: u64,
    ) -> Result<bool, StorageError> {
        let write = Write::Delete {
            collection: collection.to_owned(),
            key: key.to_owned(),
            expected,
        };
        Ok(only(self.commit(&[write]).await?)? == 1)
    }

    /// Appends entries to a stream, atomically and in order; returns the sequence number of
    /// the first.
    async fn append(&self, stream: &str, entries: &[String]) -> Result<u64, StorageError> {
        let write = Write::Append {
            stream: stream.to_owned(),
            entries: entries.to_vec(),
        };
        only(self.commit(&[write]).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_internal() {
        for error in [
            StorageError::Conflict("a".into()),
            StorageError::Unavailable("b".into()),
            StorageError::Full("e".into()),
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

    #[test]
    fn a_commit_writes_each_document_and_stream_once_within_limits() {
        let put = |key: &str| Write::Put {
            collection: "c".into(),
            key: key.into(),
            data: "{}".into(),
            expected: 0,
            index: Vec::new(),
        };
        let append = |stream: &str, n: usize| Write::Append {
            stream: stream.into(),
            entries: vec!["{}".into(); n],
        };
        assert!(check_commit(&[put("a"), put("b"), append("s", 1), append("t", 1)]).is_ok());
        assert!(check_commit(&[]).is_err());
        assert!(
            check_commit(&[put("a"), put("a")]).is_err(),
            "a document twice"
        );
        let delete = Write::Delete {
            collection: "c".into(),
            key: "a".into(),
            expected: 1,
        };
        assert!(
            check_commit(&[put("a"), delete]).is_err(),
            "put and delete of one"
        );
        assert!(
            check_commit(&[append("s", 1), append("s", 1)]).is_err(),
            "a stream twice"
        );
        let many: Vec<Write> = (0..=MAX_WRITES).map(|i| put(&i.to_string())).collect();
        assert!(check_commit(&many).is_err());
        assert!(check_commit(&[append("s", 6_000), append("t", 6_000)]).is_err());
    }
}
