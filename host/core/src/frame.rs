//! The names of the frames in a session's log: the SSE event names clients see.
//!
//! The server's own frames are variants; an agent may name its own events too
//! ([`FrameKind::agent`]), but never with a name the server uses, so an agent cannot forge a
//! `done` that ends a client's stream early, an `error`, or a `session_start`.

use serde::{Deserialize, Serialize};

/// The longest event name an agent may give.
const MAX_AGENT_NAME: usize = 64;

/// One frame's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FrameKind {
    /// A turn begins (after the user's message is logged).
    SessionStart,
    /// An agent message as the SDK sent it.
    Message,
    TextDelta,
    ThinkingDelta,
    ToolUse,
    ToolResult,
    /// The agent's `result`: the turn's last message.
    TurnComplete,
    /// A resource limit or event cap was hit.
    Limit,
    /// The server changed the session (e.g. paused it to free its sandbox).
    Lifecycle,
    Error,
    /// The turn ended; always its last frame.
    Done,
    /// The server is stopping (never in the log).
    Shutdown,
    /// A name the agent gave its event: `[A-Za-z0-9_]`, at most 64 bytes, none of the above.
    Agent(String),
}

impl FrameKind {
    const OWN: [Self; 12] = [
        Self::SessionStart,
        Self::Message,
        Self::TextDelta,
        Self::ThinkingDelta,
        Self::ToolUse,
        Self::ToolResult,
        Self::TurnComplete,
        Self::Limit,
        Self::Lifecycle,
        Self::Error,
        Self::Done,
        Self::Shutdown,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::SessionStart => "session_start",
            Self::Message => "message",
            Self::TextDelta => "text_delta",
            Self::ThinkingDelta => "thinking_delta",
            Self::ToolUse => "tool_use",
            Self::ToolResult => "tool_result",
            Self::TurnComplete => "turn_complete",
            Self::Limit => "limit",
            Self::Lifecycle => "lifecycle",
            Self::Error => "error",
            Self::Done => "done",
            Self::Shutdown => "shutdown",
            Self::Agent(name) => name,
        }
    }

    /// A name taken from agent data, if it may be used: only `[A-Za-z0-9_]`, at most 64 bytes,
    /// and not a name of the server's own frames.
    pub fn agent(raw: &str) -> Option<Self> {
        let well_formed = !raw.is_empty()
            && raw.len() <= MAX_AGENT_NAME
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let own = Self::OWN.iter().any(|kind| kind.as_str() == raw);
        (well_formed && !own).then(|| Self::Agent(raw.to_owned()))
    }
}

/// A name read back from the log: one of the server's, else the agent's (checked when it was
/// logged).
impl From<String> for FrameKind {
    fn from(name: String) -> Self {
        Self::OWN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or(Self::Agent(name))
    }
}

impl From<FrameKind> for String {
    fn from(kind: FrameKind) -> Self {
        match kind {
            FrameKind::Agent(name) => name,
            own => own.as_str().to_owned(),
        }
    }
}

impl AsRef<str> for FrameKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_own_name_reads_back_as_itself() {
        for kind in FrameKind::OWN {
            assert_eq!(FrameKind::from(kind.as_str().to_owned()), kind);
        }
        assert_eq!(
            FrameKind::from("progress".to_owned()),
            FrameKind::Agent("progress".into())
        );
    }

    #[test]
    fn an_agent_cannot_take_a_server_name_or_break_the_sse_line() {
        assert_eq!(
            FrameKind::agent("progress"),
            Some(FrameKind::Agent("progress".into()))
        );
        for forged in [
            "done",
            "error",
            "session_start",
            "shutdown",
            "limit",
            "message",
        ] {
            assert_eq!(FrameKind::agent(forged), None, "{forged}");
        }
        for broken in ["", "a b", "x\ndata: forged", &"a".repeat(65)] {
            assert_eq!(FrameKind::agent(broken), None, "{broken:?}");
        }
    }
}
