//! The message queue (`/api/queue`): prompts for agents, run one at a time in priority order,
//! each retried with a growing wait when its turn fails.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AgentName, CoreError, SessionId};

/// Where a queue item is. `pending` → `processing` → `completed` or `failed`; a failed turn
/// with retries left goes back to `pending`; only a `pending` item can be `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl QueueStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, CoreError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                CoreError::InvalidQueueItem(format!(
                    "status must be pending, processing, completed, failed or cancelled, not {raw:?}"
                ))
            })
    }
}

/// One queued prompt, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueItem {
    #[schema(format = Uuid)]
    pub id: String,
    pub tenant_id: String,
    /// The session the prompt goes to; for an item that named none, the session made for it
    /// once it runs.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub session_id: Option<SessionId>,
    #[schema(value_type = String)]
    pub agent_name: AgentName,
    pub prompt: String,
    pub status: QueueStatus,
    pub priority: u32,
    pub retry_count: u32,
    pub max_retries: u32,
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    /// Not before this time (RFC 3339) is a pending item that failed tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub retry_after: Option<String>,
    /// The server running it, while it is `processing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

/// The longest prompt an item holds, as a message's content may be.
pub const MAX_QUEUE_PROMPT_CHARS: usize = 500_000;
/// The most retries an item may ask for, and the highest priority.
pub const MAX_QUEUE_RETRIES: u32 = 100;
pub const MAX_QUEUE_PRIORITY: u32 = 1_000_000;
/// The longest wait between two tries of an item.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Checks what an item asks for.
pub fn check_queue_item(prompt: &str, priority: u32, max_retries: u32) -> Result<(), CoreError> {
    let bad = |why: String| Err(CoreError::InvalidQueueItem(why));
    if prompt.trim().is_empty() {
        return bad("prompt must not be empty".into());
    }
    if prompt.chars().count() > MAX_QUEUE_PROMPT_CHARS {
        return bad(format!(
            "prompt must be at most {MAX_QUEUE_PROMPT_CHARS} characters"
        ));
    }
    if priority > MAX_QUEUE_PRIORITY {
        return bad(format!("priority must be 0-{MAX_QUEUE_PRIORITY}"));
    }
    if max_retries > MAX_QUEUE_RETRIES {
        return bad(format!("maxRetries must be 0-{MAX_QUEUE_RETRIES}"));
    }
    Ok(())
}

/// The wait before try `retry` (1 for the first retry): `base` doubled for each retry before
/// it, at most [`MAX_RETRY_WAIT`].
pub fn retry_wait(base: Duration, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_WAIT)
}

/// Which pending item runs first: the highest priority, then the oldest.
pub fn runs_before(a: &QueueItem, b: &QueueItem) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.created_at.cmp(&b.created_at))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_five_minutes() {
        let base = Duration::from_secs(5);
        let waits: Vec<u64> = [1, 2, 3, 7, 8, 50, u32::MAX]
            .map(|n| retry_wait(base, n).as_secs())
            .into();
        assert_eq!(waits, [5, 10, 20, 300, 300, 300, 300]);
    }

    #[test]
    fn items_are_checked() {
        assert!(check_queue_item("go", 0, 3).is_ok());
        for (prompt, priority, retries) in [
            ("", 0, 0),
            ("  \n", 0, 0),
            ("go", MAX_QUEUE_PRIORITY + 1, 0),
            ("go", 0, MAX_QUEUE_RETRIES + 1),
        ] {
            assert!(
                check_queue_item(prompt, priority, retries).is_err(),
                "{prompt:?}"
            );
        }
        assert!(QueueStatus::parse("done").is_err());
        assert_eq!(QueueStatus::parse("failed").unwrap(), QueueStatus::Failed);
    }
}
