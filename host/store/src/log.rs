//! A session's conversation and event log: two streams of the storage port, `messages/<id>`
//! (what was said) and `events/<id>` (every SSE frame in order; its sequence numbers are the
//! frames' SSE ids, gap-free because the port's are).
//!
//! An append is one commit: the messages, the frames, and — for a batch that begins or ends a
//! turn ([`TurnMark`], said by the caller) — the session's mark (a turn has begun and not ended) with its
//! `lastActiveAt` and the bytes its log holds (counted in memory between marks, so a crash
//! mid-turn forgets at most that turn's); all of it is written or none. The server appends a session's batches one at
//! a time (its hub's order lock), so the marks of consecutive turns cannot interleave, and at
//! the next start [`Store::unfinished_turns`] are exactly the sessions this server marked (each
//! mark names the server that began the turn, [`Store::on_node`], so a server never closes a
//! turn another server on the same database is running). The store never
//! looks at what the frames are.

use ash_core::{
    Entry, Message, Role, SessionEvent, SessionId, StorageError, TurnUsage, Write, DEFAULT_TENANT,
    MAX_LIMIT,
};
use serde::{Deserialize, Serialize};

use crate::records::{too_busy, ATTEMPTS};
use crate::{now, Store, StoreError};

/// Entries read at once where a caller wants a whole stream or a filtered part of it: frames
/// can be large (a bridge line is up to 8 MiB), so pages stay small.
pub(crate) const STREAM_PAGE: u32 = 1000;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageEntry {
    id: String,
    tenant_id: String,
    role: Role,
    content: String,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventEntry {
    id: String,
    tenant_id: String,
    #[serde(rename = "type")]
    kind: String,
    data: Option<String>,
    created_at: String,
}

pub(crate) fn messages_stream(session: SessionId) -> String {
    format!("messages/{session}")
}

pub(crate) fn events_stream(session: SessionId) -> String {
    format!("events/{session}")
}

fn parse<'a, T: Deserialize<'a>>(stream: &str, entry: &'a Entry) -> Result<T, StoreError> {
    serde_json::from_str(&entry.data)
        .map_err(|e| StoreError::Corrupt(format!("{stream} #{}: {e}", entry.sequence)))
}

fn json(entry: &impl Serialize) -> String {
    serde_json::to_string(entry).expect("entries serialise")
}

/// A page cursor of the API (`after` ≥ 0, `limit` ≥ 1) as the port's.
fn cursor(after: i64, limit: i64) -> (u64, u32) {
    (
        after.max(0) as u64,
        limit.clamp(1, i64::from(MAX_LIMIT)) as u32,
    )
}

fn event(session: SessionId, sequence: u64, entry: EventEntry) -> SessionEvent {
    SessionEvent {
        id: entry.id,
        session_id: session.to_string(),
        tenant_id: entry.tenant_id,
        kind: entry.kind.into(),
        data: entry.data,
        sequence: sequence as i64,
        created_at: entry.created_at,
    }
}

/// What an append does to its session's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnMark {
    /// It begins a turn: the session is in one until a commit [`Ends`](Self::Ends) it.
    Begins,
    /// It ends the session's turn (a batch may begin and end one at once).
    Ends,
}

impl Store {
    /// Appends messages, then log events, to a session, each with the next sequence number of
    /// its stream (the first is 1), and returns the stored events; the session's mark (when
    /// `turn` says the batch begins or ends one) is written in the same commit.
    pub async fn append<K: AsRef<str> + Sync>(
        &self,
        session: SessionId,
        messages: &[(Role, String)],
        events: &[(K, String)],
        turn: Option<TurnMark>,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        self.append_with_usage(session, messages, events, turn, None)
            .await
    }

    /// [`Self::append`], writing the usage record of the turn it ends in the same commit, so
    /// a turn's end and its usage are stored together or not at all.
    pub async fn append_with_usage<K: AsRef<str> + Sync>(
        &self,
        session: SessionId,
        messages: &[(Role, String)],
        events: &[(K, String)],
        turn: Option<TurnMark>,
        usage: Option<&TurnUsage>,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let bytes = messages.iter().map(|(_, c)| c.len()).sum::<usize>()
            + events.iter().map(|(_, d)| d.len()).sum::<usize>();
        let now = now();
        let said: Vec<String> = messages
            .iter()
            .map(|(role, content)| {
                json(&MessageEntry {
                    id: uuid::Uuid::new_v4().to_string(),
                    tenant_id: DEFAULT_TENANT.to_owned(),
                    role: *role,
                    content: content.clone(),
                    created_at: now.clone(),
                })
            })
            .collect();
        let entries: Vec<EventEntry> = events
            .iter()
            .map(|(kind, data)| EventEntry {
                id: uuid::Uuid::new_v4().to_string(),
                tenant_id: DEFAULT_TENANT.to_owned(),
                kind: kind.as_ref().to_owned(),
                data: Some(data.clone()),
                created_at: now.clone(),
            })
            .collect();
        let mut writes = Vec::with_capacity(4);
        if !said.is_empty() {
            writes.push(Write::Append {
                stream: messages_stream(session),
                entries: said,
            });
        }
        if let Some(usage) = usage {
            writes.push(crate::records::usage_write(usage));
        }
        if !entries.is_empty() {
            writes.push(Write::Append {
                stream: events_stream(session),
                entries: entries.iter().map(json).collect(),
            });
        }
        for attempt in 0..ATTEMPTS {
            // A retry comes only after the mark (the first write) met a conflict.
            if attempt > 0 {
                writes.remove(0);
            }
            let mark = match turn {
                Some(turn) => {
                    let open = turn == TurnMark::Begins;
                    self.turn_mark(session, open, &now, attempt > 0, bytes as u64)
                        .await?
                }
                None => None,
            };
            let mark = mark.map(|(write, mark)| {
                writes.insert(0, write);
                mark
            });
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            match self.storage.commit(&writes).await {
                Ok(results) => {
                    match mark {
                        Some(mark) => self.marked(mark),
                        None => self.logged_unmarked(session, bytes as u64),
                    }
                    let Some(&first) = results.last().filter(|_| !entries.is_empty()) else {
                        return Ok(Vec::new());
                    };
                    return Ok(entries
                        .into_iter()
                        .zip(first..)
                        .map(|(entry, sequence)| event(session, sequence, entry))
                        .collect());
                }
                // Only the mark checks a revision: the session changed since it was read.
                Err(StorageError::Conflict(_)) if mark.is_some() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_busy("sessions", &session.to_string()))
    }

    /// Log events with a sequence above `after`, oldest first, at most `limit`, of one type if
    /// given (found by reading the log from `after` on).
    pub async fn list_events(
        &self,
        session: SessionId,
        after: i64,
        limit: i64,
        kind: Option<&str>,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let stream = events_stream(session);
        let (mut after, limit) = cursor(after, limit);
        let mut events = Vec::new();
        loop {
            let page_size = if kind.is_some() { STREAM_PAGE } else { limit };
            let page = self.storage.read(&stream, after, page_size).await?;
            for entry in &page {
                let parsed: EventEntry = parse(&stream, entry)?;
                if kind.is_none_or(|kind| kind == parsed.kind) {
                    events.push(event(session, entry.sequence, parsed));
                    if events.len() == limit as usize {
                        return Ok(events);
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == page_size as usize => after = last.sequence,
                _ => return Ok(events),
            }
        }
    }

    /// Messages with a sequence above `after`, oldest first, at most `limit`.
    pub async fn list_messages(
        &self,
        session: SessionId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let stream = messages_stream(session);
        let (after, limit) = cursor(after, limit);
        let page = self.storage.read(&stream, after, limit).await?;
        page.iter()
            .map(|entry| {
                let message: MessageEntry = parse(&stream, entry)?;
                Ok(Message {
                    id: message.id,
                    session_id: session.to_string(),
                    tenant_id: message.tenant_id,
                    role: message.role,
                    content: message.content,
                    sequence: entry.sequence as i64,
                    created_at: message.created_at,
                })
            })
            .collect()
    }

    /// Copies every message of `from` to the new session `to`, keeping their sequence numbers.
    pub async fn copy_messages(&self, from: SessionId, to: SessionId) -> Result<u64, StoreError> {
        let (source, target) = (messages_stream(from), messages_stream(to));
        let mut after = 0;
        loop {
            let page = self.storage.read(&source, after, STREAM_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(after);
            };
            after = last.sequence;
            let copies = page
                .iter()
                .map(|entry| {
                    let mut message: MessageEntry = parse(&source, entry)?;
                    message.id = uuid::Uuid::new_v4().to_string();
                    Ok(json(&message))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.storage.append(&target, &copies).await?;
        }
    }

    /// Sessions in the middle of a turn this server began (it stopped before the turn's end
    /// was appended).
    pub async fn unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError> {
        let marked = self.sessions_in_a_turn().await?;
        Ok(marked.iter().map(|session| session.id()).collect())
    }

    /// The newest entry of a stream. Entries are numbered 1, 2, … without gaps, so this gallops
    /// to a number past the end and bisects back: about 2·log₂(n) one-entry reads.
    pub(crate) async fn last_entry(&self, stream: &str) -> Result<Option<Entry>, StoreError> {
        let at = |n: u64| self.storage.read(stream, n - 1, 1);
        let Some(mut last) = at(1).await?.pop() else {
            return Ok(None);
        };
        let mut missing = 2;
        while let Some(entry) = at(missing).await?.pop() {
            last = entry;
            missing *= 2;
        }
        while missing - last.sequence > 1 {
            let middle = last.sequence + (missing - last.sequence) / 2;
            match at(middle).await?.pop() {
                Some(entry) => last = entry,
                None => missing = middle,
            }
        }
        Ok(Some(last))
    }
}
