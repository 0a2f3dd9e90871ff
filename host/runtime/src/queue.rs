//! The message queue's runner. Items are records on the storage port, so they outlive the
//! server; each node that holds sandboxes runs one item at a time, the highest priority first,
//! then the oldest. An item is taken by one compare-and-set of its record (pending →
//! processing, naming the node), so two servers on one database never run it at once. Its
//! prompt goes to its session (or to a session made for it, kept for its retries) as one
//! turn, read to its end; a turn that ends with an error is tried again after a wait that
//! doubles each time, while retries are left. What a crash leaves `processing` runs again
//! when that node starts again; a stop puts the item it was running back to pending.

use std::sync::Arc;
use std::time::Duration;

use ash_core::{
    check_queue_item, retry_wait, AgentName, QueueItem, QueueStatus, SessionStatus, DEFAULT_TENANT,
};
use ash_store::Tried;

use crate::{Missing, NewSession, Runtime, RuntimeError};

/// How often the queue looks for due items besides being told of new ones (retries come due,
/// other servers enqueue).
const POLL: Duration = Duration::from_secs(1);
/// The most pending items the queue holds.
pub const MAX_PENDING: u64 = 10_000;

/// What `POST /api/queue` asks for.
#[derive(Debug)]
pub struct NewQueueItem {
    pub agent: String,
    pub prompt: String,
    /// The session the prompt goes to; none: a session is made for it.
    pub session_id: Option<String>,
    pub priority: u32,
    pub max_retries: u32,
}

impl Runtime {
    /// Queues a prompt for an agent (or one of its sessions); it runs once the items before it
    /// have.
    pub async fn enqueue(&self, new: NewQueueItem) -> Result<QueueItem, RuntimeError> {
        check_queue_item(&new.prompt, new.priority, new.max_retries)?;
        let agent = AgentName::try_from(new.agent)?;
        if self.store.get_agent(&agent).await?.is_none() {
            return Err(RuntimeError::NotFound(Missing::Agent));
        }
        let session_id = match new.session_id {
            None => None,
            Some(raw) => {
                let session = self.session(&raw).await?;
                if session.agent_name != agent {
                    return Err(RuntimeError::invalid(format!(
                        "session {} is of agent {}, not {agent}",
                        session.id, session.agent_name
                    )));
                }
                if session.status == SessionStatus::Ended {
                    return Err(RuntimeError::invalid(
                        "the session has ended; queue the prompt for a new one",
                    ));
                }
                Some(session.id)
            }
        };
        let pending = self.store.count_queue_status(QueueStatus::Pending).await?;
        if pending >= MAX_PENDING {
            return Err(RuntimeError::Unavailable(format!(
                "the queue holds {MAX_PENDING} pending items; try again once some have run"
            )));
        }
        let item = QueueItem {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: DEFAULT_TENANT.to_owned(),
            session_id,
            agent_name: agent,
            prompt: new.prompt,
            status: QueueStatus::Pending,
            priority: new.priority,
            retry_count: 0,
            max_retries: new.max_retries,
            error: None,
            // To the microsecond: items queued in one millisecond still list newest first.
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            started_at: None,
            completed_at: None,
            retry_after: None,
            claimed_by: None,
        };
        self.store.insert_queue_item(&item).await?;
        self.queued.notify_one();
        Ok(item)
    }

    /// Takes the first due item this node can run: on a runner of a cluster, an item naming
    /// a session only if the session is here. Else, how long until the next retry is due.
    async fn next_item(&self, node: &str) -> Result<Result<QueueItem, Duration>, RuntimeError> {
        let now = chrono::Utc::now();
        let mut soonest = POLL;
        for item in self.store.pending_queue_items().await? {
            let due = item
                .retry_after
                .as_deref()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&chrono::Utc));
            if let Some(wait) = due.and_then(|at| (at - now).to_std().ok()) {
                soonest = soonest.min(wait);
                continue;
            }
            if let (Some(session), Some(_)) = (item.session_id, &self.config.runner) {
                let held_here = self
                    .store
                    .get_session(session)
                    .await?
                    .is_some_and(|s| s.runner_id == self.config.runner);
                if !held_here {
                    continue;
                }
            }
            if let Some(claimed) = self.store.claim_queue_item(&item, node).await? {
                return Ok(Ok(claimed));
            }
        }
        Ok(Err(soonest))
    }

    /// Runs a claimed item and records how its try ended.
    async fn try_item(self: &Arc<Self>, item: QueueItem, node: &str) {
        let tried = match self.run_item(&item).await {
            Ok(()) => Tried::Completed,
            // The server is stopping: the turn was cut short, not failed.
            Err(_) if self.draining() => Tried::Interrupted,
            Err(error) => Tried::Failed {
                wait: retry_wait(self.config.queue_retry_base, item.retry_count + 1),
                error,
            },
        };
        match self.store.finish_queue_item(&item, node, tried).await {
            Ok(Some(done)) => {
                tracing::info!(item = %done.id, status = done.status.as_str(), retries = done.retry_count, "queue item tried")
            }
            Ok(None) => {
                tracing::warn!(item = %item.id, "a queue item was no longer this server's when its try ended")
            }
            Err(e) => {
                tracing::warn!(item = %item.id, "cannot record how a queue item's try ended ({e}); it runs again when this server starts again")
            }
        }
    }

    /// Sends the item's prompt to its session (made now when it names none, and kept for its
    /// retries) and reads the turn to its end; the turn's error, if it had one.
    async fn run_item(self: &Arc<Self>, item: &QueueItem) -> Result<(), String> {
        let session = match item.session_id {
            Some(session) => session,
            None => {
                let new = NewSession {
                    agent: item.agent_name.to_string(),
                    ..NewSession::default()
                };
                let made = self.create(new).await.map_err(|e| e.to_string())?;
                self.store
                    .queue_item_session(item, made.id)
                    .await
                    .map_err(|e| e.to_string())?;
                made.id
            }
        };
        let id = session.to_string();
        let status = self.session(&id).await.map_err(|e| e.to_string())?.status;
        if matches!(status, SessionStatus::Paused | SessionStatus::Stopped) {
            self.resume(&id).await.map_err(|e| e.to_string())?;
        }
        let prompt = serde_json::Value::String(item.prompt.clone());
        let options = ash_protocol::QueryOptions::default();
        let answer = self
            .answer(&id, prompt, options, |_| {})
            .await
            .map_err(|e| e.to_string())?;
        answer.error.map_or(Ok(()), Err)
    }
}

/// Runs queue items until the server stops. Items this node left `processing` (it crashed)
/// are pending again first.
pub(crate) async fn run(runtime: Arc<Runtime>) {
    let node = runtime.store.node().to_owned();
    match runtime.store.requeue_claimed(&node).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            items = n,
            "queue items this server was running when it stopped run again"
        ),
        Err(e) => tracing::warn!("cannot look for queue items this server left running: {e}"),
    }
    while !runtime.draining() {
        match runtime.next_item(&node).await {
            Ok(Ok(item)) => runtime.try_item(item, &node).await,
            Ok(Err(soonest)) => wait(&runtime, soonest).await,
            Err(e) => {
                tracing::warn!("cannot read the queue: {e}");
                wait(&runtime, POLL).await
            }
        }
    }
}

/// Until an item is queued here, `at_most` has passed, or the server stops.
async fn wait(runtime: &Runtime, at_most: Duration) {
    tokio::select! {
        () = runtime.queued.notified() => {}
        () = tokio::time::sleep(at_most) => {}
        () = runtime.drain.began_now() => {}
    }
}
