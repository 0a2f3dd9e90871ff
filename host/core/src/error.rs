/// A rule of the domain was broken; each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("invalid agent name {0:?}: use 1-255 characters from a-z, A-Z, 0-9, '_' and '-'")]
    InvalidAgentName(String),
    #[error(
        "invalid file path {0:?}: paths must be relative, without '..', and at most 4096 bytes"
    )]
    InvalidPath(String),
    #[error("invalid session id {0:?}: session ids are UUIDs")]
    InvalidSessionId(String),
    #[error("invalid ash.toml: {0}")]
    InvalidManifest(String),
    #[error("Session is {0}")]
    SessionNotActive(crate::SessionStatus),
    #[error("Cannot {action} a session that is {from}")]
    IllegalTransition {
        from: crate::SessionStatus,
        action: &'static str,
    },
    #[error("Session has ended and cannot be resumed; create a new session")]
    SessionEnded,
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("invalid agent version: {0}")]
    InvalidVersion(String),
    #[error("{0}")]
    InvalidQueueItem(String),
    #[error("invalid tool: {0}")]
    InvalidTool(String),
}
