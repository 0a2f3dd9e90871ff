use ash_sandbox::SandboxError;
use ash_store::StoreError;

/// Why the runtime refused or failed something. The HTTP edge maps each variant to a status
/// code in one place; other frontends (tools, MCP, workflows) read the variant.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The input breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The input is larger than its cap; the message says which.
    #[error("{0}")]
    TooLarge(String),
    /// A domain rule refused it (a malformed id or name, a status that forbids the change).
    #[error(transparent)]
    Core(#[from] ash_core::CoreError),
    #[error("{0}")]
    NotFound(Missing),
    /// The operator's settings forbid it.
    #[error("{0}")]
    Forbidden(String),
    /// The session's turn lock is held: a turn, or a pause, stop, resume or fork of it, runs.
    #[error("The session is busy (a turn, or a pause, stop or fork of it, is running); wait for its done event, or interrupt it")]
    Busy,
    /// The thing's state forbids it now; the message says what to do first.
    #[error("{0}")]
    Conflict(String),
    /// The session ended, so what is asked cannot be done any more.
    #[error("{0}")]
    Gone(&'static str),
    /// The agent's folder or `ash.toml` cannot be used as it stands.
    #[error("{0}")]
    AgentUnusable(String),
    /// Not now: capacity is full, or a setting the call needs is off. Worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A turn of this session the store failed has no end in the log yet: nothing is logged
    /// in the session before it.
    #[error("{0}")]
    Unclosed(StoreFault),
    #[error("{context}: {source}")]
    Sandbox {
        context: &'static str,
        source: SandboxError,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The sandbox did not answer in time.
    #[error("{0}")]
    Unanswered(String),
    /// Something failed on the server's side; `detail` is for the log, not the client.
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl RuntimeError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            context,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn sandbox(context: &'static str) -> impl FnOnce(SandboxError) -> Self {
        move |source| Self::Sandbox { context, source }
    }

    /// The store failure this is, if it is one (for a turn the store failed).
    pub(crate) fn store_fault(&self) -> Option<StoreFault> {
        match self {
            Self::Store(e) => Some(StoreFault::of(e)),
            Self::Unclosed(fault) => Some(*fault),
            _ => None,
        }
    }
}

/// What was looked for and not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Session,
    Agent,
    /// The session has neither a workspace nor a snapshot.
    Workspace,
    Attachment,
    AgentVersion,
    AgentFile,
    QueueItem,
    Tool,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Session => "Session not found",
            Self::Agent => "Agent not found",
            Self::Workspace => "No workspace available for this session",
            Self::Attachment => "Attachment not found",
            Self::AgentVersion => "Agent version not found",
            Self::AgentFile => "File not found in the agent's folder",
            Self::QueueItem => "Queue item not found",
            Self::Tool => "Tool not found",
        })
    }
}

/// How the store failed, as a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// Its disk is full; writes work again once there is space.
    Full,
    /// It is out of reach; the server reconnects by itself.
    Unavailable,
    /// Anything else.
    Failed,
}

impl StoreFault {
    pub fn of(e: &StoreError) -> Self {
        if e.is_full() {
            Self::Full
        } else if e.is_unavailable() {
            Self::Unavailable
        } else {
            Self::Failed
        }
    }

    /// It may go away by itself.
    pub fn passes(self) -> bool {
        self != Self::Failed
    }
}

impl std::fmt::Display for StoreFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full => "the store's disk is full, so nothing was written; free space where the database keeps its files (writes work again by themselves)",
            Self::Unavailable => "storage is unavailable right now; try again shortly",
            Self::Failed => "storage failed; see the server log",
        })
    }
}
