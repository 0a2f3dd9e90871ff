//! The event log and its streams.
//!
//! Every frame a client sees is first appended to the session's log (gap-free sequence
//! numbers, kept across restarts), then published on the session's hub. A stream is a view
//! of the log: it replays what the client missed from storage, then follows the hub, skipping
//! what it already sent, so it never shows a gap or a duplicate; a follower that falls behind
//! the hub goes back to reading the log. The turn never waits for a client: each follower has
//! a bounded buffer, and a client that does not take a frame within [`SLOW_CLIENT_TIMEOUT`] is
//! cut; it can reconnect with `Last-Event-ID` and replay. A client that goes away stops nothing.
//!
//! A turn is logged as `session_start`, the granular events and raw `message` of each agent
//! message, and always ends with `done` (after an `error` when it failed). If the bridge dies
//! mid-turn the turn ends with `error` + `done` at once; if the server dies, the next start
//! closes the turn the same way. If the store fails a batch (it is out of reach), followers end
//! at once with the error, the agent's turn is interrupted, and the turn's `error` + `done` are
//! logged once the store is back (or, after [`OUTAGE_PATIENCE`], left to the next start), under
//! the session's order lock: no later turn's frames come before them.

use std::sync::Arc;
use std::time::Duration;

use ash_core::{FrameKind, Role, SessionEvent, SessionId, TurnOutcome, TurnUsage};
use ash_store::TurnMark;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::sessions::TurnGuard;
use crate::{Runtime, RuntimeError, StoreFault};

/// Frames a follower may trail the newest by before it goes back to reading the log.
const HUB_CAPACITY: usize = 1024;
/// Frames buffered for one client.
const CLIENT_BUFFER: usize = 256;
/// How long a client may leave its buffer full before it is cut.
const SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The error that ends a turn the store failed, once the store takes it.
const STORE_LOST: &str = "storage was unavailable during this turn (out of reach, or its disk full), so the rest of it was lost; send the message again";
/// How long a turn the store failed keeps trying to log its closing frames.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(600);
/// The longest wait between two of those tries.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

/// What a session's hub carries to its followers.
#[derive(Clone, Debug)]
pub(crate) enum Published {
    /// A frame that is in the log.
    Logged(Arc<SessionEvent>),
    /// The turn failed in a way the log could not record (storage down): followers end.
    Broken(String),
    /// Another server appended to the session's log: followers read it.
    Elsewhere,
}

/// A session's live feed of its log, and the lock that keeps its appends in order: whatever
/// is appended under the lock is broadcast in the same order.
#[derive(Clone)]
pub(crate) struct Hub {
    feed: broadcast::Sender<Published>,
    pub(crate) order: Arc<tokio::sync::Mutex<()>>,
    /// Set while a turn the store failed waits to log its end (holding the order lock): the
    /// store's last answer, which every new append gets at once instead of waiting.
    unclosed: Arc<watch::Sender<Option<StoreFault>>>,
    /// A turn the store failed whose end could not be logged at all: the session's next
    /// turn logs it first.
    owed_end: Arc<std::sync::atomic::AtomicBool>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            feed: broadcast::channel(HUB_CAPACITY).0,
            order: Arc::default(),
            unclosed: Arc::new(watch::channel(None).0),
            owed_end: Arc::default(),
        }
    }

    /// The frames a new turn logs before its own: the end of an earlier turn the store failed,
    /// if that is still owed. [`Self::paid`] once they are stored.
    pub(crate) fn owed(&self, session: SessionId) -> Vec<(FrameKind, String)> {
        match self.owed_end.load(std::sync::atomic::Ordering::Acquire) {
            true => closing(session, Some(STORE_LOST)),
            false => Vec::new(),
        }
    }

    pub(crate) fn paid(&self) {
        self.owed_end
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The store's last error while a turn it failed has no end in the log yet: the answer to
    /// anything that would log in this session meanwhile.
    pub(crate) fn refusal(&self) -> Result<(), RuntimeError> {
        refused(*self.unclosed.borrow())
    }

    /// The order lock, or the store's error while a failed turn's end is not logged yet.
    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, RuntimeError> {
        let mut unclosed = self.unclosed.subscribe();
        loop {
            refused(*unclosed.borrow_and_update())?;
            tokio::select! {
                order = self.order.lock() => return Ok(order),
                _ = unclosed.changed() => {}
            }
        }
    }

    /// Tells the followers that another server appended to the log.
    pub(crate) fn wake(&self) {
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(Published::Elsewhere);
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.feed.subscribe()
    }
}
fn refused(unclosed: Option<StoreFault>) -> Result<(), RuntimeError> {
    unclosed.map_or(Ok(()), |fault| Err(RuntimeError::Unclosed(fault)))
}

/// What a follower gets.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A frame of the log; its sequence is the SSE id.
    Logged(Arc<SessionEvent>),
    /// A frame that is not in the log, so it has no id: an `error` when the store failed the
    /// turn, `shutdown` when the server stops. `retry` is how soon to reconnect.
    Unlogged {
        kind: FrameKind,
        data: String,
        retry: Option<Duration>,
    },
}

/// A follower's frames, in log order, without gaps or duplicates.
pub type FrameStream = ReceiverStream<Frame>;

/// Appends to the log (beginning a turn when `mark` says so) and publishes the stored frames;
/// returns them.
pub(crate) async fn publish(
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    messages: &[(Role, String)],
    frames: &[(FrameKind, String)],
    mark: Option<TurnMark>,
) -> Result<Vec<Arc<SessionEvent>>, RuntimeError> {
    let order = hub.lock().await?;
    let mark = (mark, None);
    append_and_send(runtime, hub, session, (messages, frames), mark, &order).await
}

/// Publishes a turn's last frames, releasing the turn first (under the order lock): a client
/// that sees `done` — live or read back from the log — can send its next message at once, and
/// that turn's frames still come after this one's.
pub(crate) async fn publish_ending(
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    messages: &[(Role, String)],
    frames: &[(FrameKind, String)],
    guard: TurnGuard,
    usage: Option<TurnUsage>,
) {
    let order = hub.order.lock().await;
    drop(guard);
    let ends = (Some(TurnMark::Ends), usage.as_ref());
    match append_and_send(runtime, hub, session, (messages, frames), ends, &order).await {
        Ok(_) => {}
        Err(RuntimeError::Store(ash_store::StoreError::TurnClosed(_))) => {
            // A coordinator ended this turn in the log (this runner was declared dead): its
            // followers read that end.
            tracing::warn!(session = %session, "this turn was already ended by a coordinator (this runner was declared dead meanwhile); its last frames are dropped");
            hub.wake();
        }
        Err(e) => {
            broken(runtime, hub, &e);
            close_when_stored(runtime, hub, session, order).await;
        }
    }
}

/// What one append logs: messages, then frames.
type Entries<'a> = (&'a [(Role, String)], &'a [(FrameKind, String)]);

/// Logs and publishes the entries, with the turn mark and the usage record (of the turn it
/// ends) given.
async fn append_and_send(
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    (messages, frames): Entries<'_>,
    (mark, usage): (Option<TurnMark>, Option<&TurnUsage>),
    _order: &tokio::sync::MutexGuard<'_, ()>,
) -> Result<Vec<Arc<SessionEvent>>, RuntimeError> {
    let stored = runtime
        .store
        .append_with_usage(session, messages, frames, mark, usage)
        .await?;
    let stored: Vec<_> = stored.into_iter().map(Arc::new).collect();
    for event in &stored {
        let _ = hub.feed.send(Published::Logged(event.clone()));
    }
    Ok(stored)
}

/// The store failed a turn's batch: the session refuses new appends until the turn's end is
/// logged, and its followers end now, with the error.
pub(crate) fn broken(runtime: &Runtime, hub: &Hub, error: &RuntimeError) {
    tracing::warn!("a turn's frames could not be logged: {error}");
    let fault = error.store_fault().unwrap_or(StoreFault::Failed);
    hub.unclosed.send_replace(Some(fault));
    let _ = hub.feed.send(Published::Broken(fault.to_string()));
    runtime.metrics.turn_ended(TurnOutcome::StorageFailed);
}

/// Closes a turn the store failed in the log (`error` + `done`) as soon as the
/// store takes it, trying again with a growing wait while it is unavailable or its disk full,
/// for up to [`OUTAGE_PATIENCE`]. The session's order lock is held until then, and every new
/// append of the session is refused at once with the store's last answer: nothing is logged
/// before this turn's end.
pub(crate) async fn close_when_stored(
    runtime: &Runtime,
    hub: &Hub,
    session: SessionId,
    order: tokio::sync::MutexGuard<'_, ()>,
) {
    let frames = closing(session, Some(STORE_LOST));
    let give_up = tokio::time::Instant::now() + OUTAGE_PATIENCE;
    let mut wait = Duration::from_millis(50);
    loop {
        tokio::time::sleep(wait).await;
        let ends = (Some(TurnMark::Ends), None);
        match append_and_send(runtime, hub, session, (&[], &frames), ends, &order).await {
            Ok(_) => break,
            Err(e) => match e.store_fault().filter(|f| f.passes()) {
                Some(fault) if tokio::time::Instant::now() < give_up => {
                    hub.unclosed.send_replace(Some(fault));
                    wait = (wait * 2).min(OUTAGE_RETRY);
                }
                _ => {
                    tracing::error!(session = %session, "the turn could not be closed in the log: {e}; the session's next turn (or the next start) logs its end first");
                    hub.owed_end
                        .store(true, std::sync::atomic::Ordering::Release);
                    break;
                }
            },
        }
    }
    hub.unclosed.send_replace(None);
    drop(order);
}

/// The frames that close a turn: an error (when there is one) and `done`.
pub(crate) fn closing(session: SessionId, error: Option<&str>) -> Vec<(FrameKind, String)> {
    closing_with(session, error.map(|error| error_frame(error, None, None)))
}

/// An `error` frame: the reference's `{error}`, with the model endpoint's HTTP `status` and
/// a `hint` of what to check when the bridge knows them.
pub(crate) fn error_frame(
    error: &str,
    status: Option<u16>,
    hint: Option<String>,
) -> (FrameKind, String) {
    let mut data = json!({ "error": error });
    if let Some(status) = status {
        data["status"] = status.into();
    }
    if let Some(hint) = hint {
        data["hint"] = hint.into();
    }
    (FrameKind::Error, data.to_string())
}

pub(crate) fn closing_with(
    session: SessionId,
    error: Option<(FrameKind, String)>,
) -> Vec<(FrameKind, String)> {
    let mut frames = Vec::new();
    frames.extend(error);
    frames.push((FrameKind::Done, json!({ "sessionId": session }).to_string()));
    frames
}

impl Runtime {
    /// The session's log after `after`, then its frames as they are logged, until the stream
    /// is dropped (or the server stops).
    pub async fn stream(
        self: &Arc<Self>,
        raw_id: &str,
        after: i64,
    ) -> Result<FrameStream, RuntimeError> {
        if after < 0 {
            return Err(RuntimeError::invalid("after must be at least 0"));
        }
        let session = self.session(raw_id).await?;
        let followers = self.sessions.hub(session.id).subscribe();
        Ok(follow(self.clone(), session.id, followers, after, false))
    }
}

/// A stream of the log after `after`, then live frames; ends at `done` when `until_done`.
pub(crate) fn follow(
    runtime: Arc<Runtime>,
    session: SessionId,
    hub: broadcast::Receiver<Published>,
    after: i64,
    until_done: bool,
) -> FrameStream {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut follower = Follower {
            tx,
            last: after,
            until_done,
        };
        if let Err(reason) = follower.run(&runtime, session, hub).await {
            tracing::debug!(session = %session, "stream closed: {reason}");
        }
    });
    ReceiverStream::new(rx)
}

struct Follower {
    tx: mpsc::Sender<Frame>,
    last: i64,
    until_done: bool,
}

/// Why a follower stopped early.
type Stop = &'static str;

impl Follower {
    async fn run(
        &mut self,
        runtime: &Runtime,
        session: SessionId,
        mut hub: broadcast::Receiver<Published>,
    ) -> Result<(), Stop> {
        loop {
            // Catch up from the log; a follower that falls behind the hub comes back here.
            loop {
                let page = runtime
                    .store
                    .list_events(session, self.last, 1000, None)
                    .await
                    .map_err(|_| "storage failed during replay")?;
                if page.is_empty() {
                    break;
                }
                for event in page {
                    if self.push(&Arc::new(event)).await? {
                        return Ok(());
                    }
                }
            }
            loop {
                // Frames already published go out first: a turn's end comes before the shutdown.
                let published = tokio::select! {
                    biased;
                    published = hub.recv() => published,
                    () = runtime.drain.closing() => {
                        let last = self.shutdown_frame();
                        let _ = self.tx.send_timeout(last, SLOW_CLIENT_TIMEOUT).await;
                        return Ok(());
                    }
                };
                match published {
                    Ok(Published::Logged(event)) if event.sequence > self.last => {
                        if self.push(&event).await? {
                            return Ok(());
                        }
                    }
                    Ok(Published::Logged(_)) => {}
                    Ok(Published::Broken(error)) => {
                        // Not in the log, so without an `id:`: a client keeps the last id it
                        // saw, and reads the turn's logged end after it once the store is back.
                        let data = json!({ "error": error }).to_string();
                        let frame = Frame::Unlogged {
                            kind: FrameKind::Error,
                            data,
                            retry: None,
                        };
                        let _ = self.tx.send_timeout(frame, SLOW_CLIENT_TIMEOUT).await;
                        return Err("the turn broke");
                    }
                    Ok(Published::Elsewhere) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }

    /// The last frame of a stream the server ends as it stops: not in the log, so without an
    /// `id:`; it names the last id sent, to reconnect with.
    fn shutdown_frame(&self) -> Frame {
        let data = json!({
            "message": "the server is shutting down; reconnect with Last-Event-ID to go on",
            "lastEventId": self.last,
        });
        Frame::Unlogged {
            kind: FrameKind::Shutdown,
            data: data.to_string(),
            retry: Some(Duration::from_secs(1)),
        }
    }

    /// Sends one frame; `true` when it was the `done` this stream waits for.
    async fn push(&mut self, event: &Arc<SessionEvent>) -> Result<bool, Stop> {
        self.tx
            .send_timeout(Frame::Logged(event.clone()), SLOW_CLIENT_TIMEOUT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => "client too slow",
                mpsc::error::SendTimeoutError::Closed(_) => "client went away",
            })?;
        self.last = event.sequence;
        Ok(self.until_done && event.kind == FrameKind::Done)
    }
}
