//! What the server tells plugins, at the hook points of DESIGN §3.4: every agent message goes
//! through the transformers (`message-out`) before it is stored; observers are told of each
//! session's lifecycle (`session-created`, `-paused`, `-resumed`, `-ended`,
//! `sandbox-evicted`), of each user and agent message (`message-in`, `message-out`) and of
//! the agent's tool calls (`tool-pre-invoke`, `tool-post-invoke`). Telling observers never
//! blocks and costs nothing when none is loaded.

use ash_core::{HookPoint, Session, SessionId};
use serde_json::Value;

use crate::Runtime;

/// One event as plugins see it.
pub(crate) fn event(
    hook: HookPoint,
    name: &str,
    session: SessionId,
    agent: &str,
    data: String,
) -> ash_plugin_host::Event {
    ash_plugin_host::Event {
        hook: hook.as_str().to_owned(),
        session_id: session.to_string(),
        agent: agent.to_owned(),
        name: name.to_owned(),
        data,
        at_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
    }
}

/// Tells the observers; `data` is only built when one is loaded.
pub(crate) fn observe(
    runtime: &Runtime,
    hook: HookPoint,
    name: &str,
    session: SessionId,
    agent: &str,
    data: impl FnOnce() -> String,
) {
    if runtime.plugins.has_observers() {
        runtime
            .plugins
            .observe(&event(hook, name, session, agent, data()));
    }
}

/// A lifecycle hook: its data is the session as the API shows it (never its env), plus
/// `reason` when the server, not a client, made the change.
pub(crate) fn lifecycle(
    runtime: &Runtime,
    hook: HookPoint,
    session: &Session,
    reason: Option<&str>,
) {
    observe(
        runtime,
        hook,
        hook.as_str(),
        session.id,
        session.agent_name.as_str(),
        || {
            let mut data = serde_json::to_value(session).unwrap_or_default();
            if let (Some(reason), Value::Object(fields)) = (reason, &mut data) {
                fields.insert("reason".into(), reason.into());
            }
            data.to_string()
        },
    );
}
