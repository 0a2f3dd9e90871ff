use serde::{Deserialize, Serialize};

use crate::{AgentName, CoreError, FrameKind};

/// The tenant every row belongs to until multi-tenancy arrives.
pub const DEFAULT_TENANT: &str = "default";

/// A session id: a UUID, as the reference API requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, CoreError> {
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| CoreError::InvalidSessionId(raw.to_owned()))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Where a session is in its life. Only `active` sessions take messages; `ended` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Starting,
    Active,
    Paused,
    Stopped,
    Ended,
    Error,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Ended => "ended",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Starting,
            Self::Active,
            Self::Paused,
            Self::Stopped,
            Self::Ended,
            Self::Error,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// A message may be sent only to an active session.
    pub fn accept_message(self) -> Result<(), CoreError> {
        match self {
            Self::Active => Ok(()),
            other => Err(CoreError::SessionNotActive(other)),
        }
    }

    /// Where `transition` leads from this status, or why it may not happen. This is the only
    /// way to a new status: the store writes statuses only through it.
    pub fn apply(self, transition: Transition) -> Result<Self, CoreError> {
        match transition {
            Transition::Pause => self.pause(),
            Transition::Stop => self.stop(),
            Transition::Resume => self.resume(),
            Transition::End => Ok(Self::Ended),
        }
    }

    /// Only an active session can be paused.
    fn pause(self) -> Result<Self, CoreError> {
        match self {
            Self::Active => Ok(Self::Paused),
            other => Err(CoreError::IllegalTransition {
                from: other,
                action: "pause",
            }),
        }
    }

    /// An active or starting session can be stopped; its sandbox goes away, its files stay.
    fn stop(self) -> Result<Self, CoreError> {
        match self {
            Self::Active | Self::Starting => Ok(Self::Stopped),
            other => Err(CoreError::IllegalTransition {
                from: other,
                action: "stop",
            }),
        }
    }

    /// Any session but an ended one can be resumed; resuming an active one changes nothing.
    fn resume(self) -> Result<Self, CoreError> {
        match self {
            Self::Ended => Err(CoreError::SessionEnded),
            _ => Ok(Self::Active),
        }
    }
}

/// A change of a session's status ([`SessionStatus::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Active to paused (by a client, or by the server to free a sandbox).
    Pause,
    /// Active or starting to stopped.
    Stop,
    /// Anything but ended to active.
    Resume,
    /// Anything to ended.
    End,
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Backend options a session keeps for all its turns, given at create or with
/// `PATCH /api/sessions/:id/config`; a message's own options win over them. Fields it does not
/// know are ignored, as the reference server does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100)]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<Vec<String>>,
    /// Subagent definitions by name, as the Claude agent SDK takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub subagents: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub initial_agent: Option<String>,
}

/// The most a config's `subagents` may hold, as JSON.
const MAX_SUBAGENTS_BYTES: usize = 64 * 1024;
/// The most entries of a tool or beta list, and characters of each.
const MAX_LIST: usize = 100;
const MAX_ITEM: usize = 256;

impl SessionConfig {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every value given.
    pub fn check(&self) -> Result<(), CoreError> {
        let bad = |why: String| Err(CoreError::InvalidConfig(why));
        let text = |name: &str, value: &Option<String>, max: usize| match value {
            Some(v) if v.is_empty() || v.chars().count() > max || v.contains(char::is_control) => {
                bad(format!("{name} must be 1-{max} characters on one line"))
            }
            _ => Ok(()),
        };
        text("model", &self.model, 100)?;
        text("initialAgent", &self.initial_agent, 255)?;
        let lists = [
            ("allowedTools", &self.allowed_tools),
            ("disallowedTools", &self.disallowed_tools),
            ("betas", &self.betas),
        ];
        for (name, list) in lists {
            let Some(list) = list else { continue };
            let fine = |item: &String| {
                !item.is_empty()
                    && item.chars().count() <= MAX_ITEM
                    && !item.starts_with('-')
                    && !item.contains(char::is_control)
            };
            if list.is_empty() || list.len() > MAX_LIST || !list.iter().all(fine) {
                return bad(format!(
                    "{name} must be 1-{MAX_LIST} names of 1-{MAX_ITEM} characters, none starting with '-'"
                ));
            }
        }
        if let Some(agents) = &self.subagents {
            if serde_json::to_string(agents).map_or(0, |s| s.len()) > MAX_SUBAGENTS_BYTES {
                return bad(format!(
                    "subagents must be at most {MAX_SUBAGENTS_BYTES} bytes of JSON"
                ));
            }
        }
        Ok(())
    }

    /// This config with each value `patch` gives replacing its own.
    pub fn patched(self, patch: SessionConfig) -> Self {
        Self {
            model: patch.model.or(self.model),
            allowed_tools: patch.allowed_tools.or(self.allowed_tools),
            disallowed_tools: patch.disallowed_tools.or(self.disallowed_tools),
            betas: patch.betas.or(self.betas),
            subagents: patch.subagents.or(self.subagents),
            initial_agent: patch.initial_agent.or(self.initial_agent),
        }
    }

    /// Adds these values to a turn's backend options where the message gave none of its own.
    pub fn apply(&self, options: &mut serde_json::Map<String, serde_json::Value>) {
        let serde_json::Value::Object(mine) =
            serde_json::to_value(self).expect("a config serialises")
        else {
            return;
        };
        for (name, value) in mine {
            options.entry(name).or_insert(value);
        }
    }
}

/// A session as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    #[schema(value_type = String, format = Uuid)]
    pub id: SessionId,
    pub tenant_id: String,
    #[schema(value_type = String)]
    pub agent_name: AgentName,
    pub sandbox_id: String,
    pub status: SessionStatus,
    pub runner_id: Option<String>,
    pub parent_session_id: Option<String>,
    /// The session's own environment (`extraEnv`), re-applied whenever its sandbox starts.
    #[serde(skip)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The stored credential whose key the session's sandbox gets (`credentialId`), kept so
    /// every new sandbox of the session gets it again; never shown.
    #[serde(skip)]
    pub credential_id: Option<String>,
    /// The backend options of all its turns.
    #[serde(default, skip_serializing_if = "SessionConfig::is_empty")]
    pub config: SessionConfig,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_active_at: String,
    /// Bytes of messages and events the session's log holds, as of its last turn's
    /// beginning or end; a new session's record starts at 0 whatever this says. Never shown.
    #[serde(skip)]
    pub logged_bytes: u64,
}

/// Who wrote a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// A stored conversation message; `content` is the JSON text of the SDK message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub session_id: String,
    pub tenant_id: String,
    pub role: Role,
    pub content: String,
    pub sequence: i64,
    pub created_at: String,
}

/// One entry of a session's event log: an SSE frame exactly as clients see it. `sequence`
/// is gap-free per session and is the frame's SSE `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent {
    pub id: String,
    pub session_id: String,
    pub tenant_id: String,
    /// The SSE event name (`session_start`, `text_delta`, `message`, `error`, `done`, …).
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: FrameKind,
    /// The frame's JSON data, as text.
    pub data: Option<String>,
    pub sequence: i64,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_sessions_accept_messages() {
        assert!(SessionStatus::Active.accept_message().is_ok());
        let err = SessionStatus::Ended.accept_message().unwrap_err();
        assert_eq!(err.to_string(), "Session is ended");
    }

    #[test]
    fn the_state_machine_allows_only_legal_moves() {
        use SessionStatus::*;
        use Transition::*;
        assert_eq!(Active.apply(Pause), Ok(Paused));
        assert_eq!(
            Paused.apply(Pause).unwrap_err().to_string(),
            "Cannot pause a session that is paused"
        );
        assert_eq!(Active.apply(Stop), Ok(Stopped));
        assert!(Paused.apply(Stop).is_err());
        for from in [Paused, Stopped, Error, Starting, Active] {
            assert_eq!(from.apply(Resume), Ok(Active), "resume from {from}");
        }
        assert_eq!(Ended.apply(Resume), Err(CoreError::SessionEnded));
        for from in [Paused, Stopped, Error, Starting, Active, Ended] {
            assert_eq!(from.apply(End), Ok(Ended), "end from {from}");
        }
    }

    #[test]
    fn status_text_round_trips() {
        for s in ["starting", "active", "paused", "stopped", "ended", "error"] {
            assert_eq!(SessionStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(SessionStatus::parse("zombie"), None);
    }

    #[test]
    fn session_ids_are_uuids() {
        let id = SessionId::new();
        assert_eq!(SessionId::parse(&id.to_string()).unwrap(), id);
        assert!(SessionId::parse("../etc").is_err());
    }
}

/// What a turn ran into, as its `limit` frame's `kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// The kernel killed a process of the sandbox for memory.
    Memory,
    /// A fork in the sandbox was refused at its process limit.
    Pids,
    /// The turn's events reached the bytes one turn may log.
    EventBytes,
    /// The turn's events reached the count one turn may log.
    Events,
    /// The session's log reached the events it may hold.
    SessionEvents,
    /// The session's log reached the bytes it may hold.
    SessionEventBytes,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::EventBytes => "event_bytes",
            Self::Events => "events",
            Self::SessionEvents => "session_events",
            Self::SessionEventBytes => "session_event_bytes",
        }
    }
}

/// How a turn ended, as the `ash_turns_total` metric counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The agent finished it.
    Ok,
    /// The agent reported an error, or it was interrupted.
    Error,
    /// It passed an event cap of the server.
    Limit,
    /// Its sandbox died.
    SandboxLost,
    /// The store failed its events (out of reach, or its disk full).
    StorageFailed,
    /// A stop's grace period ended it.
    Shutdown,
}

impl TurnOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Limit => "limit",
            Self::SandboxLost => "sandbox_lost",
            Self::StorageFailed => "storage_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Why the server paused a session by itself, as its `lifecycle` frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// It had no turn for the idle timeout.
    Idle,
    /// The node was full and it was the least recently used idle session.
    Evicted,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

/// How a resume brought a session back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePath {
    /// Its sandbox was still up.
    Warm,
    /// A new sandbox started over its workspace or last snapshot.
    Cold,
}

impl ResumePath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// Where a line of a sandbox's log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Stdout,
    Stderr,
    /// What the host says of the sandbox.
    System,
}

impl LogLevel {
    /// The level a bridge's `log` event names (`stderr` for anything else).
    pub fn parse(raw: &str) -> Self {
        match raw {
            "stdout" => Self::Stdout,
            "system" => Self::System,
            _ => Self::Stderr,
        }
    }
}

/// One line of a sandbox's log (`GET /api/sessions/:id/logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub index: u64,
    pub level: LogLevel,
    pub text: String,
    #[schema(format = DateTime)]
    pub ts: String,
}

/// A file sent with a session (`POST /api/sessions/:id/attachments`): kept in the snapshot
/// store and placed in the session's workspace under `attachments/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[schema(format = Uuid)]
    pub id: String,
    pub tenant_id: String,
    /// The message it belongs to, or `unlinked`.
    pub message_id: String,
    #[schema(value_type = String, format = Uuid)]
    pub session_id: SessionId,
    pub filename: String,
    pub mime_type: String,
    pub size: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// The most bytes one attachment holds.
pub const MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;

/// Checks an attachment's file name: one path segment of 1-255 bytes, without control
/// characters, and not `.` or `..`, so it can only name a file in `attachments/`.
pub fn check_attachment_name(name: &str) -> Result<(), CoreError> {
    let fine = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.contains(char::is_control);
    if fine {
        Ok(())
    } else {
        Err(CoreError::InvalidPath(name.to_owned()))
    }
}
