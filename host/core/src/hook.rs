//! The hook points of DESIGN §3.4, where plugins see (observe) or change (transform) what
//! passes.

/// One hook point, named in plugin events as [`HookPoint::as_str`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// A user's message, as it is logged.
    MessageIn,
    /// An agent's message, before it is logged (transformers may change or withhold it).
    MessageOut,
    /// An agent's tool call.
    ToolPreInvoke,
    /// A tool call's result.
    ToolPostInvoke,
    SessionCreated,
    SessionPaused,
    SessionResumed,
    SessionEnded,
    /// The server paused a session to make room.
    SandboxEvicted,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageIn => "message-in",
            Self::MessageOut => "message-out",
            Self::ToolPreInvoke => "tool-pre-invoke",
            Self::ToolPostInvoke => "tool-post-invoke",
            Self::SessionCreated => "session-created",
            Self::SessionPaused => "session-paused",
            Self::SessionResumed => "session-resumed",
            Self::SessionEnded => "session-ended",
            Self::SandboxEvicted => "sandbox-evicted",
        }
    }
}
