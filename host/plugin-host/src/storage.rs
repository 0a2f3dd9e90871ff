//! A storage plugin as the server's store: the WIT world `ash:storage/storage-backend` behind
//! the storage port ([`ash_core::Storage`]).
//!
//! Calls run on tokio's blocking threads, each on an instance of its own (instances are
//! reused, never shared), so concurrent requests reach the store concurrently. The host checks
//! every request against the port's limits before the plugin sees it, and every answer against
//! the contract after: a document for another key, keys out of order or past the limit, a
//! sequence that skips, a commit's results that are too few or too many, a revision that is not
//! one more than expected, or text that is not JSON is the plugin breaking the contract — an `internal` error that counts as the plugin's
//! failure (five in a row quarantine it, and storage is then unavailable: it fails closed).
//! An `error` the plugin returns is just that error.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use ash_core::{
    check_commit, check_data, check_find, check_limit, check_name, Document, Entry, Storage,
    StorageError, Write,
};
use async_trait::async_trait;

use crate::host::bindings::storage::ash::storage::types as wit;
use crate::host::StorageWorld;
use crate::plugin::Plugin;
use crate::{compile, engine, Kind, Manifest, PluginConfig, PluginError};

type Answer<T> = Result<T, wit::Error>;

/// A loaded storage plugin. Cheap to clone.
#[derive(Clone)]
pub struct StoragePlugin {
    plugin: Arc<Plugin<StorageWorld>>,
}

impl StoragePlugin {
    /// Loads the plugin as `Plugins::load` loads hook plugins (manifest, digest, compiled
    /// component cached in `cache`, grants, a first instance); the manifest must be of kind
    /// `storage`.
    pub fn load(config: &PluginConfig, cache: Option<&Path>) -> Result<Self, PluginError> {
        let engine = engine().map_err(|e| PluginError::Manifest(e.to_string()))?;
        let (manifest, bytes, digest) = Manifest::load(&config.path, config.sha256.as_deref())?;
        if manifest.kind != Kind::Storage {
            return Err(PluginError::Manifest(format!(
                "{}: a {} plugin cannot be the store; [storage] plugin needs a storage plugin",
                manifest.id,
                manifest.kind.name()
            )));
        }
        let component = compile(
            &engine,
            &manifest,
            &bytes,
            &digest,
            cache,
            &mut HashSet::new(),
        )?;
        let plugin = Plugin::load(&engine, manifest, &component, config)?;
        Ok(Self {
            plugin: Arc::new(plugin),
        })
    }

    /// The plugin's id, calls, failures and last error, for `/health`.
    pub fn status(&self) -> crate::PluginStatus {
        self.plugin.status()
    }

    /// Runs one call on a blocking thread; `check` turns the plugin's answer into the port's,
    /// or says how it broke the contract.
    async fn call<R, T>(
        &self,
        call: impl FnOnce(
                &crate::host::bindings::storage::StorageBackend,
                &mut wasmtime::Store<crate::host::State>,
            ) -> wasmtime::Result<Answer<R>>
            + Send
            + 'static,
        check: impl FnOnce(R) -> Result<T, String> + Send + 'static,
    ) -> Result<T, StorageError>
    where
        R: Send + 'static,
        T: Send + 'static,
    {
        let plugin = self.plugin.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            plugin.run(call, |answer| match answer {
                Ok(value) => check(value).map(Ok),
                Err(error) => Ok(Err(StorageError::from_code(&error.code, error.message))),
            })
        })
        .await
        .map_err(|e| StorageError::Internal(format!("storage call stopped: {e}")))?;
        match outcome {
            Ok(answer) => answer,
            Err(()) => {
                let status = self.plugin.status();
                Err(if status.quarantined {
                    StorageError::Unavailable(format!(
                        "storage plugin {} is quarantined: {}",
                        status.id,
                        status.last_error.unwrap_or_default()
                    ))
                } else {
                    StorageError::Internal(format!(
                        "storage plugin {} failed: {}",
                        status.id,
                        status.last_error.unwrap_or_default()
                    ))
                })
            }
        }
    }
}

fn json(data: &str) -> Result<(), String> {
    check_data(data).map_err(|e| e.to_string())?;
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map(drop)
        .map_err(|_| "returned data that is not JSON".to_owned())
}

/// Documents of one collection, keys strictly ascending after `after`, at most `limit`.
fn documents(
    docs: Vec<wit::Document>,
    collection: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<Document>, String> {
    if docs.len() > limit as usize {
        return Err(format!(
            "returned {} documents for a limit of {limit}",
            docs.len()
        ));
    }
    let mut last = after.to_owned();
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        if doc.collection != collection {
            return Err(format!(
                "returned a document of collection {:?}",
                doc.collection
            ));
        }
        if doc.key.as_bytes() <= last.as_bytes() {
            return Err("returned keys that are not in ascending order after `after`".into());
        }
        if doc.revision == 0 {
            return Err("returned a document at revision 0".into());
        }
        json(&doc.data)?;
        last.clone_from(&doc.key);
        out.push(Document {
            collection: doc.collection,
            key: doc.key,
            revision: doc.revision,
            data: doc.data,
        });
    }
    Ok(out)
}

#[async_trait]
impl Storage for StoragePlugin {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StorageError> {
        check_name("collection", collection)?;
        check_name("key", key)?;
        let (c, k) = (collection.to_owned(), key.to_owned());
        self.call(
            move |exports, store| exports.ash_storage_store().call_get(store, &c, &k),
            {
                let (collection, key) = (collection.to_owned(), key.to_owned());
                move |doc: Option<wit::Document>| match doc {
                    None => Ok(None),
                    Some(doc) if doc.collection != collection || doc.key != key => Err(format!(
                        "returned {}/{} for {collection}/{key}",
                        doc.collection, doc.key
                    )),
                    Some(doc) => documents(vec![doc], &collection, "", 1).map(|mut d| d.pop()),
                }
            },
        )
        .await
    }

    async fn list(
        &self,
        collection: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Document>, StorageError> {
        check_name("collection", collection)?;
        check_limit(limit)?;
        let (c, a) = (collection.to_owned(), after.to_owned());
        let (collection, after) = (collection.to_owned(), after.to_owned());
        self.call(
            move |exports, store| exports.ash_storage_store().call_list(store, &c, &a, limit),
            move |docs| documents(docs, &collection, &after, limit),
        )
        .await
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
        let (c, i, v, a) = (
            collection.to_owned(),
            index.to_owned(),
            value.to_owned(),
            after.to_owned(),
        );
        let (collection, after) = (collection.to_owned(), after.to_owned());
        self.call(
            move |exports, store| {
                exports
                    .ash_storage_store()
                    .call_find(store, &c, &i, &v, &a, limit)
            },
            move |docs| documents(docs, &collection, &after, limit),
        )
        .await
    }

    async fn read(&self, stream: &str, after: u64, limit: u32) -> Result<Vec<Entry>, StorageError> {
        check_name("stream", stream)?;
        check_limit(limit)?;
        let s = stream.to_owned();
        self.call(
            move |exports, store| {
                exports
                    .ash_storage_store()
                    .call_read(store, &s, after, limit)
            },
            move |entries: Vec<wit::Entry>| {
                if entries.len() > limit as usize {
                    return Err(format!(
                        "returned {} entries for a limit of {limit}",
                        entries.len()
                    ));
                }
                let mut out = Vec::with_capacity(entries.len());
                for (i, entry) in entries.into_iter().enumerate() {
                    if entry.sequence != after + 1 + i as u64 {
                        return Err("returned sequence numbers that skip or repeat".into());
                    }
                    json(&entry.data)?;
                    out.push(Entry {
                        sequence: entry.sequence,
                        data: entry.data,
                    });
                }
                Ok(out)
            },
        )
        .await
    }

    async fn commit(&self, writes: &[Write]) -> Result<Vec<u64>, StorageError> {
        check_commit(writes)?;
        let sent: Vec<wit::Write> = writes.iter().map(to_wit).collect();
        let expected: Vec<Expect> = writes.iter().map(Expect::of).collect();
        self.call(
            move |exports, store| exports.ash_storage_store().call_commit(store, &sent),
            move |results: Vec<u64>| {
                if results.len() != expected.len() {
                    return Err(format!(
                        "returned {} results for a commit of {} writes",
                        results.len(),
                        expected.len()
                    ));
                }
                for (result, expect) in results.iter().zip(&expected) {
                    expect.check(*result)?;
                }
                Ok(results)
            },
        )
        .await
    }
}

/// What the result of one write must be.
enum Expect {
    Revision(u64),
    Deleted,
    Sequence,
}

impl Expect {
    fn of(write: &Write) -> Self {
        match write {
            Write::Put { expected, .. } => Self::Revision(expected + 1),
            Write::Delete { .. } => Self::Deleted,
            Write::Append { .. } => Self::Sequence,
        }
    }

    fn check(&self, result: u64) -> Result<(), String> {
        match self {
            Self::Revision(revision) if result != *revision => Err(format!(
                "returned revision {result} for a write expecting {}",
                revision - 1
            )),
            Self::Deleted if result > 1 => Err(format!("returned {result} for a delete")),
            Self::Sequence if result == 0 => Err("returned sequence number 0 for an append".into()),
            _ => Ok(()),
        }
    }
}

fn to_wit(write: &Write) -> wit::Write {
    match write.clone() {
        Write::Put {
            collection,
            key,
            data,
            expected,
            index,
        } => wit::Write::Put(wit::PutDocument {
            collection,
            key,
            data,
            expected,
            index,
        }),
        Write::Delete {
            collection,
            key,
            expected,
        } => wit::Write::Delete(wit::DeleteDocument {
            collection,
            key,
            expected,
        }),
        Write::Append { stream, entries } => {
            wit::Write::Append(wit::AppendEntries { stream, entries })
        }
    }
}
