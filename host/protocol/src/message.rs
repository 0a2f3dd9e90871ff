use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version announced in the bridge's `ready` event; the host refuses a bridge that differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// A command from the host to the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Choose the agent backend; sent once, right after `ready`. Answered by `done`.
    Configure { id: String, backend: Backend },
    /// Run one agent turn. Answered by any number of `message` events, then `done` or `error`.
    Query {
        id: String,
        /// A string or an array of content blocks, passed to the backend untouched.
        prompt: Value,
        #[serde(rename = "sessionId")]
        session_id: String,
        #[serde(default, flatten)]
        options: QueryOptions,
    },
    /// Stop the running command named by `target`. Answered by `done`.
    Interrupt { id: String, target: String },
    /// Finish what is running and exit. Answered by `done`, then the bridge exits.
    Shutdown { id: String },
    /// Run a shell command in the workspace. Answered by one `exec_result`.
    Exec {
        id: String,
        command: String,
        /// Killed (with everything it started) after this long.
        timeout_ms: u64,
    },
}

impl Command {
    /// The id every event answering this command carries.
    pub fn id(&self) -> &str {
        match self {
            Command::Configure { id, .. }
            | Command::Query { id, .. }
            | Command::Interrupt { id, .. }
            | Command::Shutdown { id }
            | Command::Exec { id, .. } => id,
        }
    }
}

/// Per-turn options; the named ones are read by the bridge, the rest pass through to the backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryOptions {
    #[serde(
        rename = "includePartialMessages",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub include_partial_messages: bool,
    /// The turn's W3C trace context, when the host exports traces: the bridge hands it to the
    /// Claude CLI as `TRACEPARENT`; a command agent reads it in its query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The agent backend a bridge drives, chosen by the agent's `ash.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// Deterministic, offline: repeats the prompt back in several deltas, waiting
    /// `delay_ms` before each one (0 by default).
    Echo {
        #[serde(default)]
        delay_ms: u64,
    },
    /// A program in the agent folder that speaks this protocol on stdin/stdout.
    Command { argv: Vec<String> },
    /// Streams chat completions from an OpenAI-compatible endpoint. The bridge talks to the
    /// host's model proxy (a Unix socket at [`MODEL_SOCKET`]); the host adds the key, so it
    /// never enters the sandbox.
    Openai {
        model: String,
        /// The endpoint as the host reaches it [default: https://api.openai.com/v1].
        #[serde(default = "openai_base_url")]
        base_url: String,
        /// The variable, in the agent's env or the session's `extraEnv`, that holds the key
        /// [default: OPENAI_API_KEY]. It is kept out of the sandbox.
        #[serde(default = "openai_key_env")]
        api_key_env: String,
    },
    /// Drives the Claude Code CLI in its stream-json mode, one CLI run per turn, resumed from
    /// the CLI's own session (kept in the workspace). Its API calls go through the host's
    /// model proxy, which adds the key.
    #[serde(rename = "claude-code", alias = "claude_code")]
    ClaudeCode {
        /// The CLI, on the sandbox's PATH or an absolute path inside it [default: claude].
        #[serde(default = "claude_path")]
        path: String,
        /// The model for every turn unless a message names one [default: the CLI's].
        #[serde(default)]
        model: Option<String>,
        /// The CLI's `--permission-mode` [default: bypassPermissions: the sandbox is the
        /// boundary, and nobody is there to answer a prompt].
        #[serde(default = "claude_permission_mode")]
        permission_mode: String,
        /// The Anthropic API as the host reaches it [default: https://api.anthropic.com].
        #[serde(default = "anthropic_base_url")]
        base_url: String,
        /// The variable, in the agent's env or the session's `extraEnv`, that holds the key
        /// [default: ANTHROPIC_API_KEY]. It is kept out of the sandbox.
        #[serde(default = "anthropic_key_env")]
        api_key_env: String,
    },
}

impl Backend {
    /// For a backend that calls a model: the endpoint the host's proxy reaches, and the
    /// variable holding its key.
    pub fn model_endpoint(&self) -> Option<(&str, &str)> {
        match self {
            Backend::Openai {
                base_url,
                api_key_env,
                ..
            }
            | Backend::ClaudeCode {
                base_url,
                api_key_env,
                ..
            } => Some((base_url, api_key_env)),
            Backend::Echo { .. } | Backend::Command { .. } => None,
        }
    }
}

/// Where the host's model proxy is inside a sandbox whose backend calls a model.
pub const MODEL_SOCKET: &str = "/run/ash/model.sock";

fn openai_base_url() -> String {
    "https://api.openai.com/v1".into()
}

fn openai_key_env() -> String {
    "OPENAI_API_KEY".into()
}

fn claude_path() -> String {
    "claude".into()
}

fn claude_permission_mode() -> String {
    "bypassPermissions".into()
}

fn anthropic_base_url() -> String {
    "https://api.anthropic.com".into()
}

fn anthropic_key_env() -> String {
    "ANTHROPIC_API_KEY".into()
}

/// An event from the bridge to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// First line on every connection.
    Ready { protocol: u32 },
    /// One agent SDK message, untranslated.
    Message { id: String, data: Value },
    /// The command `id` failed; no further events for it follow. `id` is empty when the
    /// bridge could not tell which command a bad line belonged to. A failed model call
    /// names the endpoint's HTTP `status` and a `hint` of what to check.
    Error {
        id: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
    /// The command `id` finished.
    Done { id: String },
    /// A diagnostic line from the bridge or its backend.
    Log { level: String, text: String },
    /// How an `exec` ended. Output past the cap is dropped and `truncated` set; a command
    /// killed at its timeout has `timed_out` set and exit code 124.
    ExecResult {
        id: String,
        exit_code: i32,
        stdout: String,
        stderr: String,
        timed_out: bool,
        truncated: bool,
    },
}

impl Event {
    /// A plain failure of command `id`.
    pub fn error(id: impl Into<String>, error: impl Into<String>) -> Self {
        Event::Error {
            id: id.into(),
            error: error.into(),
            status: None,
            hint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_round_trips_with_passthrough_options() {
        let line = json!({"cmd": "query", "id": "1", "prompt": "hi", "sessionId": "s",
                          "includePartialMessages": true, "model": "m", "maxTurns": 3});
        let cmd: Command = serde_json::from_value(line.clone()).unwrap();
        let Command::Query { options, .. } = &cmd else {
            panic!("not a query: {cmd:?}")
        };
        assert!(options.include_partial_messages);
        assert_eq!(options.extra["model"], "m");
        assert_eq!(serde_json::to_value(&cmd).unwrap(), line);
    }

    #[test]
    fn unknown_command_is_rejected() {
        let err = serde_json::from_value::<Command>(json!({"cmd": "rm", "id": "1"})).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn query_without_session_is_rejected() {
        let r =
            serde_json::from_value::<Command>(json!({"cmd": "query", "id": "1", "prompt": "x"}));
        assert!(r.unwrap_err().to_string().contains("sessionId"));
    }
}
