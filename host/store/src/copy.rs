//! Moving every record from one store to another (`ash storage copy`), so an operator can swap
//! backends: each collection document by document (index entries rebuilt from the record),
//! then each session's two streams page by page, keeping every sequence number. The
//! destination must be empty; afterwards it is counted again and must hold exactly what the
//! source held. The source is only read: a failed copy loses nothing, and an empty destination
//! can be dropped and the copy run again.

use ash_core::{AgentVersion, Attachment, QueueItem, Storage, Tool, TurnUsage};

use crate::log::{events_stream, messages_stream, STREAM_PAGE};
use crate::records::{parse, AgentRecord, ApiKeyRecord, CredentialRecord, Record, SessionRecord};
use crate::{Store, StoreError};

/// How many records of each kind a store holds (or a copy moved).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub agents: u64,
    pub agent_versions: u64,
    pub sessions: u64,
    pub api_keys: u64,
    pub credentials: u64,
    pub attachments: u64,
    pub usage: u64,
    pub queue: u64,
    pub tools: u64,
    pub messages: u64,
    pub events: u64,
}

impl Copied {
    /// Documents and stream entries together.
    pub fn total(&self) -> u64 {
        self.agents
            + self.agent_versions
            + self.sessions
            + self.api_keys
            + self.credentials
            + self.attachments
            + self.usage
            + self.queue
            + self.tools
            + self.messages
            + self.events
    }

    fn rows(&self) -> [(&'static str, u64); 11] {
        [
            ("agents", self.agents),
            ("agent versions", self.agent_versions),
            ("sessions", self.sessions),
            ("API keys", self.api_keys),
            ("credentials", self.credentials),
            ("attachments", self.attachments),
            ("usage records", self.usage),
            ("queue items", self.queue),
            ("tools", self.tools),
            ("messages", self.messages),
            ("events", self.events),
        ]
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<String> = self
            .rows()
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        f.write_str(&rows.join(", "))
    }
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the destination already holds {0}: copy into an empty store (a new database, schema or key prefix)")]
    NotEmpty(String),
    #[error(
        "count check failed: the source holds {source_count} {what} but the destination {copied}; \
         was a server still writing to the source? Stop it, empty the destination and copy again"
    )]
    Mismatch {
        what: &'static str,
        source_count: u64,
        copied: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts what is copied and reports it with the total to copy.
struct Progress<'a> {
    done: u64,
    total: u64,
    report: &'a (dyn Fn(u64, u64) + Sync),
}

impl Progress<'_> {
    fn add(&mut self, n: u64) {
        self.done += n;
        (self.report)(self.done, self.total);
    }
}

impl Store {
    /// How many records of each kind this store holds.
    pub async fn count(&self) -> Result<Copied, StoreError> {
        let mut count = Copied {
            agents: self.count_documents(AgentRecord::COLLECTION).await?,
            agent_versions: self.count_documents(AgentVersion::COLLECTION).await?,
            api_keys: self.count_documents(ApiKeyRecord::COLLECTION).await?,
            credentials: self.count_documents(CredentialRecord::COLLECTION).await?,
            attachments: self.count_documents(Attachment::COLLECTION).await?,
            usage: self.count_documents(TurnUsage::COLLECTION).await?,
            queue: self.count_documents(QueueItem::COLLECTION).await?,
            tools: self.count_documents(Tool::COLLECTION).await?,
            ..Copied::default()
        };
        for session in self.scan::<SessionRecord>("").await? {
            count.sessions += 1;
            count.messages += self.stream_length(&messages_stream(session.id())).await?;
            count.events += self.stream_length(&events_stream(session.id())).await?;
        }
        Ok(count)
    }

    async fn count_documents(&self, collection: &str) -> Result<u64, StoreError> {
        self.count_found(collection, None).await
    }

    /// How many documents of the collection there are (with the index entry, when given),
    /// read page by page and none parsed.
    pub(crate) async fn count_found(
        &self,
        collection: &str,
        index: Option<(&str, &str)>,
    ) -> Result<u64, StoreError> {
        let (mut n, mut pages) = (0, self.pages(collection, index, ""));
        while let Some(page) = pages.next().await? {
            n += page.len() as u64;
        }
        Ok(n)
    }

    async fn stream_length(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.last_entry(stream).await?.map_or(0, |e| e.sequence))
    }

    /// Copies every record into `to`, which must hold none, calling `progress` with the number
    /// of documents and entries copied so far and the number there are; then counts `to` and
    /// checks it holds what this store holds.
    pub async fn copy_to(
        &self,
        to: &Store,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Copied, CopyError> {
        let before = self.count().await?;
        let found = to.count().await?;
        if let Some((what, _)) = found.rows().into_iter().find(|(_, n)| *n > 0) {
            return Err(CopyError::NotEmpty(what.to_owned()));
        }
        let mut progress = Progress {
            done: 0,
            total: before.total(),
            report: progress,
        };
        copy_documents::<AgentRecord>(self, to, &mut progress).await?;
        copy_documents::<AgentVersion>(self, to, &mut progress).await?;
        copy_documents::<ApiKeyRecord>(self, to, &mut progress).await?;
        copy_documents::<CredentialRecord>(self, to, &mut progress).await?;
        copy_documents::<Attachment>(self, to, &mut progress).await?;
        copy_documents::<TurnUsage>(self, to, &mut progress).await?;
        copy_documents::<QueueItem>(self, to, &mut progress).await?;
        copy_documents::<Tool>(self, to, &mut progress).await?;
        for session in copy_documents::<SessionRecord>(self, to, &mut progress).await? {
            for stream in [messages_stream(session.id()), events_stream(session.id())] {
                copy_stream(&*self.storage, &*to.storage, &stream, &mut progress).await?;
            }
        }
        let after = to.count().await?;
        for ((what, source_count), (_, copied)) in before.rows().into_iter().zip(after.rows()) {
            if source_count != copied {
                return Err(CopyError::Mismatch {
                    what,
                    source_count,
                    copied,
                });
            }
        }
        Ok(after)
    }
}

/// Copies one collection, each document's JSON as stored (fields a newer Ash wrote included),
/// under its key, with its index entries rebuilt from the record; returns the records copied.
async fn copy_documents<T: Record>(
    from: &Store,
    to: &Store,
    progress: &mut Progress<'_>,
) -> Result<Vec<T>, CopyError> {
    let (mut copied, mut pages) = (Vec::new(), from.pages(T::COLLECTION, None, ""));
    while let Some(page) = pages.next().await? {
        for doc in &page {
            let record: T = parse(doc)?;
            to.storage
                .put(T::COLLECTION, &doc.key, &doc.data, 0, &record.index())
                .await
                .map_err(StoreError::from)?;
            copied.push(record);
        }
        progress.add(page.len() as u64);
    }
    Ok(copied)
}

/// Copies a stream page by page; each page must land at the numbers it had.
async fn copy_stream(
    from: &dyn Storage,
    to: &dyn Storage,
    stream: &str,
    progress: &mut Progress<'_>,
) -> Result<(), CopyError> {
    let mut after = 0;
    loop {
        let page = from
            .read(stream, after, STREAM_PAGE)
            .await
            .map_err(StoreError::from)?;
        let Some(first) = page.first() else {
            return Ok(());
        };
        let entries: Vec<String> = page.iter().map(|e| e.data.clone()).collect();
        let landed = to
            .append(stream, &entries)
            .await
            .map_err(StoreError::from)?;
        if landed != first.sequence {
            return Err(CopyError::NotEmpty(format!(
                "entries of the stream {stream}"
            )));
        }
        after = page.last().map_or(after, |e| e.sequence);
        progress.add(page.len() as u64);
    }
}
