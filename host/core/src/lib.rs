//! The Ash domain: agents, sessions and messages, and the rules that keep them consistent.
//!
//! This crate does no I/O. Values are parsed once at the edge into types that cannot hold
//! an invalid state (an [`AgentName`] matches the reference API's pattern, a [`RelativePath`]
//! cannot leave its root, a [`SessionStatus`] only moves along legal transitions), so the
//! server and the store never re-validate.

mod agent;
mod credential;
mod error;
mod frame;
mod hook;
mod queue;
mod session;
mod storage;
mod tool;
mod usage;

pub use agent::{
    check_agent_config, merge_agent_config, Agent, AgentManifest, AgentName, AgentVersion,
    LimitOverrides, PoolSettings, RelativePath, VersionFields, MANIFEST_FILE,
    MAX_AGENT_CONFIG_BYTES, MAX_AGENT_VERSIONS, MAX_MANIFEST_BYTES, MAX_PREWARM,
};
pub use credential::{ApiKey, Credential, CredentialType};
pub use error::CoreError;
pub use frame::FrameKind;
pub use hook::HookPoint;
pub use queue::{
    check_queue_item, retry_wait, runs_before, QueueItem, QueueStatus, MAX_QUEUE_PRIORITY,
    MAX_QUEUE_PROMPT_CHARS, MAX_QUEUE_RETRIES,
};
pub use session::{
    check_attachment_name, Attachment, LimitKind, LogLevel, LogLine, Message, ParkReason,
    ResumePath, Role, Session, SessionConfig, SessionEvent, SessionId, SessionStatus, Transition,
    TurnOutcome, DEFAULT_TENANT, MAX_ATTACHMENT_BYTES,
};
pub use storage::{
    check_append, check_commit, check_data, check_find, check_limit, check_name, check_put,
    Document, Entry, Storage, StorageError, Write, MAX_DATA_BYTES, MAX_INDEX_ENTRIES, MAX_LIMIT,
    MAX_NAME_BYTES, MAX_WRITES,
};
pub use tool::{
    check_tool_name, AgentTool, CredentialHeader, HttpConnector, Tool, ToolKind,
    DEFAULT_TOOL_RESULT_BYTES, DEFAULT_TOOL_TIMEOUT_MS, MAX_TOOL_RESULT_BYTES, MAX_TOOL_TIMEOUT_MS,
};
pub use usage::{TurnUsage, UsageCounts, UsageEvent, UsageKind};
