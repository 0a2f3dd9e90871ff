//! The `claude-code` backend: one run of the Claude Code CLI per turn, in its stream-json
//! mode, with every message it prints passed to the host untranslated (the host derives the
//! granular events from them).
//!
//! The CLI reads the workspace as its project: `CLAUDE.md` is its system prompt, and
//! `.claude/` (settings, skills, agents) and `.mcp.json` are honoured. Its own state (the
//! conversation transcripts) lives in `.ash/claude/` in the workspace, and each turn resumes
//! the CLI session the last finished turn left, so a conversation survives restarts and cold
//! resume (a turn that was interrupted or crashed is not resumed from).
//!
//! The sandbox has no network: the CLI's `ANTHROPIC_BASE_URL` points at a loopback port the
//! bridge forwards to the host's model proxy ([`MODEL_SOCKET`]), which adds the key. The
//! CLI is given a placeholder key, never the real one.
//!
//! A turn ends with `done` when the CLI's `result` says it succeeded; otherwise with an
//! `error` naming the API status and a hint (from the CLI's `result`), or how the CLI died.
//! Interrupting a turn kills the CLI and everything it started.

use std::path::Path;
use std::process::Stdio;

use ash_protocol::{Event, LineReader, ProtocolError, QueryOptions, MAX_LINE_BYTES, MODEL_SOCKET};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::failure::{end_turn, Failure};
use crate::Events;

/// The CLI's home for its own state, inside the workspace (so it is snapshotted with it).
const STATE_DIR: &str = ".ash/claude";
/// The CLI's `HOME`, also in the workspace: the CLI ignores a project's `.claude/` when the
/// project is the home folder, as the sandbox's `/workspace` is for everything else.
const HOME_DIR: &str = ".ash/home";
/// The CLI session the next turn resumes.
const SESSION_FILE: &str = ".ash/claude-session";
/// What the CLI is given as its API key: the host's proxy replaces it with the real one.
const PLACEHOLDER_KEY: &str = "ash-model-proxy-adds-the-key";
/// API retries the CLI makes before a turn fails, unless the agent's env says otherwise.
const DEFAULT_RETRIES: &str = "2";
/// The most of the CLI's stderr quoted when it dies.
const STDERR_TAIL: usize = 2048;

/// The backend as configured: the CLI, its defaults, and the loopback forwarder to the
/// model proxy (stopped when this is dropped).
pub(crate) struct Claude {
    path: String,
    model: Option<String>,
    permission_mode: String,
    key_env: String,
    base_url: String,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for Claude {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl Claude {
    pub(crate) async fn start(
        path: String,
        model: Option<String>,
        permission_mode: String,
        key_env: String,
    ) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on loopback for the Claude Code CLI: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let forwarder = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Without the proxy the CLI sees a closed connection and reports it.
                    if let Ok(mut proxy) = tokio::net::UnixStream::connect(MODEL_SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut proxy).await;
                    }
                });
            }
        });
        Ok(Self {
            path,
            model,
            permission_mode,
            key_env,
            base_url: format!("http://{address}"),
            forwarder,
        })
    }

    /// Everything one turn needs, taken now so the turn runs on its own.
    pub(crate) fn turn(&self, id: String, prompt: Value, options: QueryOptions) -> Turn {
        Turn {
            id,
            prompt,
            options,
            path: self.path.clone(),
            model: self.model.clone(),
            permission_mode: self.permission_mode.clone(),
            key_env: self.key_env.clone(),
            base_url: self.base_url.clone(),
        }
    }
}

pub(crate) struct Turn {
    id: String,
    prompt: Value,
    options: QueryOptions,
    path: String,
    model: Option<String>,
    permission_mode: String,
    key_env: String,
    base_url: String,
}

pub(crate) async fn run(turn: Turn, events: Events) {
    let outcome = drive(&turn, &events).await;
    end_turn(&events, turn.id, outcome).await;
}

/// The CLI's process group, killed when the turn ends or is interrupted (dropped): the CLI
/// and the tools it started go with it, and the drop returns once the CLI has exited.
struct Group {
    pid: i32,
    /// Readable once the CLI has exited (it stays for tokio to reap).
    exited: Option<std::os::fd::OwnedFd>,
}

impl Group {
    fn new(pid: u32) -> Self {
        use std::os::fd::FromRawFd;
        let pid = pid as i32;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative result is a new fd that nothing else owns.
        let exited = (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        Self { pid, exited }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: signals the process group this turn created; no memory is touched.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        if let Some(fd) = &self.exited {
            let mut exited = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; a SIGKILLed process exits at once, the 1 s bound is
            // for a process stuck in the kernel.
            unsafe { libc::poll(&mut exited, 1, 1000) };
        }
    }
}

async fn drive(turn: &Turn, events: &Events) -> Result<(), Failure> {
    let args = arguments(turn)?;
    let workspace =
        std::env::current_dir().map_err(|e| format!("the workspace is not readable: {e}"))?;
    let home = workspace.join(HOME_DIR);
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot make {HOME_DIR}: {e}"))?;
    let mut command = tokio::process::Command::new(&turn.path);
    command
        .args(&args)
        .env("HOME", &home)
        .env("CLAUDE_CONFIG_DIR", workspace.join(STATE_DIR))
        .env("ANTHROPIC_BASE_URL", &turn.base_url)
        .env("ANTHROPIC_API_KEY", PLACEHOLDER_KEY)
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("CLAUDE_CODE_MAX_RETRIES").is_none() {
        command.env("CLAUDE_CODE_MAX_RETRIES", DEFAULT_RETRIES);
    }
    if let Some(traceparent) = &turn.options.traceparent {
        command.env("TRACEPARENT", traceparent);
    }
    if let Some(budget) = turn.options.extra.get("thinking").map(thinking_budget) {
        command.env("MAX_THINKING_TOKENS", budget?);
    }
    let mut child = command.spawn().map_err(|e| {
        format!(
            "cannot run the Claude Code CLI `{}`: {e} (install it in the sandbox's /usr, e.g. with scripts/install-claude.sh, or set the backend's path)",
            turn.path
        )
    })?;
    let _group = child.id().map(Group::new);

    let message = json!({"type": "user", "session_id": "", "parent_tool_use_id": null,
                         "message": {"role": "user", "content": turn.prompt}});
    let mut stdin = child.stdin.take().expect("piped");
    // Written beside the reading, so a CLI that prints before it reads cannot stall either
    // side; a CLI that exits without reading is judged by how it exited.
    tokio::spawn(async move {
        let _ = stdin.write_all(format!("{message}\n").as_bytes()).await;
    });
    let stderr = tokio::spawn(tail(child.stderr.take().expect("piped")));

    let mut lines = LineReader::new(
        BufReader::new(child.stdout.take().expect("piped")),
        MAX_LINE_BYTES - 1024,
    );
    let mut result = None;
    let mut session = None;
    while let Some(line) = lines.next::<Value>().await {
        let data = match line {
            Ok(data) => data,
            Err(ProtocolError::Io(_)) => break,
            Err(e) => {
                let warning = format!("the Claude Code CLI printed a line that was skipped: {e}");
                let _ = events.send(Event::error("", warning)).await;
                continue;
            }
        };
        match data.get("type").and_then(Value::as_str) {
            Some("system") if data["subtype"] == "init" => {
                session = data["session_id"].as_str().map(str::to_owned);
            }
            Some("result") => {
                // Only a run that got to its result left a transcript the next can resume.
                if let Some(session) = &session {
                    remember_session(session);
                }
                result = Some(data.clone());
            }
            _ => {}
        }
        events
            .send(Event::Message {
                id: turn.id.clone(),
                data,
            })
            .await
            .map_err(|_| "the host went away".to_owned())?;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("the Claude Code CLI could not be waited for: {e}"))?;
    match result {
        Some(result) if result["is_error"] != true => Ok(()),
        Some(result) => Err(failed_turn(&result, &turn.key_env)),
        None => {
            let stderr = stderr.await.unwrap_or_default();
            Err(Failure {
                message: format!(
                    "the Claude Code CLI ended ({status}) before finishing the turn: {}",
                    stderr.trim()
                ),
                status: None,
                hint: Some(
                    "see the server log for the sandbox's output; send the message again".into(),
                ),
            })
        }
    }
}

/// The CLI's command line for this turn.
fn arguments(turn: &Turn) -> Result<Vec<String>, Failure> {
    let mut args: Vec<String> = [
        "--print",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--setting-sources",
        "project",
        "--permission-mode",
    ]
    .map(String::from)
    .into();
    args.push(turn.permission_mode.clone());
    if Path::new("CLAUDE.md").is_file() {
        args.extend(["--system-prompt-file".into(), "CLAUDE.md".into()]);
    }
    if Path::new(".mcp.json").is_file() {
        args.extend(["--mcp-config".into(), ".mcp.json".into()]);
    }
    if let Some(session) = resumable_session() {
        args.extend(["--resume".into(), session]);
    }
    if turn.options.include_partial_messages {
        args.push("--include-partial-messages".into());
    }
    let options = &turn.options.extra;
    let model = match options.get("model") {
        Some(model) => Some(text(model, "model")?),
        None => turn.model.clone(),
    };
    if let Some(model) = model {
        args.extend(["--model".into(), model]);
    }
    for (name, flag) in [
        ("maxTurns", "--max-turns"),
        ("maxBudgetUsd", "--max-budget-usd"),
        ("effort", "--effort"),
        ("initialAgent", "--agent"),
    ] {
        if let Some(value) = options.get(name) {
            let value = match name {
                "maxTurns" => value
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .map(|n| n.to_string())
                    .ok_or_else(|| "maxTurns must be a whole number of at least 1".to_owned())?,
                "maxBudgetUsd" => value
                    .as_f64()
                    .filter(|n| *n >= 0.0)
                    .map(|n| n.to_string())
                    .ok_or_else(|| "maxBudgetUsd must be a number of at least 0".to_owned())?,
                _ => text(value, name)?,
            };
            args.extend([flag.into(), value]);
        }
    }
    for (name, flag) in [
        ("allowedTools", "--allowedTools"),
        ("disallowedTools", "--disallowedTools"),
        ("betas", "--betas"),
    ] {
        if let Some(value) = options.get(name) {
            let list = value
                .as_array()
                .filter(|items| !items.is_empty())
                .and_then(|items| {
                    items
                        .iter()
                        .map(|v| v.as_str().filter(|s| !s.starts_with('-')).map(String::from))
                        .collect()
                })
                .ok_or_else(|| format!("{name} must be a non-empty list of strings"))?;
            args.push(flag.into());
            args.extend::<Vec<String>>(list);
        }
    }
    if let Some(agents) = options.get("subagents") {
        if !agents.is_object() {
            return Err(Failure::from("subagents must be an object".to_owned()));
        }
        args.extend(["--agents".into(), agents.to_string()]);
    }
    if let Some(format) = options.get("outputFormat") {
        let schema = format
            .get("schema")
            .filter(|s| s.is_object())
            .ok_or_else(|| {
                "outputFormat must be {type: \"json_schema\", schema: {…}}".to_owned()
            })?;
        args.extend(["--json-schema".into(), schema.to_string()]);
    }
    Ok(args)
}

fn text(value: &Value, name: &str) -> Result<String, Failure> {
    value
        .as_str()
        .filter(|s| !s.is_empty() && !s.starts_with('-'))
        .map(String::from)
        .ok_or_else(|| Failure::from(format!("{name} must be a non-empty string")))
}

/// `thinking: {type: "enabled", budgetTokens: N}` or `{type: "disabled"}` as the CLI's
/// `MAX_THINKING_TOKENS`.
fn thinking_budget(thinking: &Value) -> Result<String, Failure> {
    match thinking["type"].as_str() {
        Some("disabled") => Ok("0".into()),
        Some("enabled") => thinking["budgetTokens"]
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| {
                "thinking.budgetTokens must be a whole number"
                    .to_owned()
                    .into()
            }),
        _ => Err("thinking.type must be \"enabled\" or \"disabled\""
            .to_owned()
            .into()),
    }
}

/// The session the last turn left, if its transcript is still in the workspace (a workspace
/// restored without it starts a new conversation rather than failing every turn).
fn resumable_session() -> Option<String> {
    let session = std::fs::read_to_string(SESSION_FILE).ok()?;
    let session = session.trim();
    let transcript = format!("{session}.jsonl");
    let projects = std::fs::read_dir(Path::new(STATE_DIR).join("projects")).ok()?;
    projects
        .flatten()
        .any(|project| project.path().join(&transcript).is_file())
        .then(|| session.to_owned())
}

/// Keeps the CLI session for the next turn; failing costs only the continuity.
fn remember_session(session: &str) {
    let valid = !session.is_empty()
        && session.len() <= 64
        && session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return;
    }
    let staging = format!("{SESSION_FILE}.tmp");
    let saved = std::fs::create_dir_all(".ash")
        .and_then(|()| std::fs::write(&staging, session))
        .and_then(|()| std::fs::rename(&staging, SESSION_FILE));
    if let Err(e) = saved {
        eprintln!("claude-code: cannot keep the session id: {e}");
    }
}

/// A `result` that says the turn failed, as a failure with the API status when there was one.
fn failed_turn(result: &Value, key_env: &str) -> Failure {
    let said = result["result"]
        .as_str()
        .or_else(|| result["subtype"].as_str())
        .unwrap_or("no reason given");
    let message = format!("the Claude Code CLI failed the turn: {said}");
    match result["api_error_status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
    {
        Some(status) => Failure::upstream(message, status, key_env),
        None => Failure {
            message,
            status: None,
            hint: (result["subtype"] == "error_max_turns").then(|| {
                "the turn used its maxTurns: send a message to go on, or raise maxTurns".into()
            }),
        },
    }
}

/// The end of a stream (at most [`STDERR_TAIL`] bytes), read to its end.
async fn tail(mut pipe: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    let start = kept.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(options: Value) -> Turn {
        Turn {
            id: "1".into(),
            prompt: json!("hi"),
            options: serde_json::from_value(options).unwrap(),
            path: "claude".into(),
            model: Some("agent-model".into()),
            permission_mode: "bypassPermissions".into(),
            key_env: "ANTHROPIC_API_KEY".into(),
            base_url: "http://127.0.0.1:1".into(),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        let at = args.iter().position(|a| a == flag).expect(flag);
        args[at + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn per_turn_options_become_flags() {
        let args = arguments(&turn(json!({
            "includePartialMessages": true, "model": "m2", "maxTurns": 3, "maxBudgetUsd": 0.5,
            "effort": "high", "allowedTools": ["Bash(git *)", "Edit"], "betas": ["b1"],
            "subagents": {"r": {"description": "d", "prompt": "p"}}, "initialAgent": "r",
            "outputFormat": {"type": "json_schema", "schema": {"type": "object"}}})))
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(after(&args, "--model"), ["m2"]);
        assert_eq!(after(&args, "--max-turns"), ["3"]);
        assert_eq!(after(&args, "--max-budget-usd"), ["0.5"]);
        assert_eq!(after(&args, "--allowedTools"), ["Bash(git *)", "Edit"]);
        assert_eq!(after(&args, "--agent"), ["r"]);
        assert_eq!(after(&args, "--json-schema"), [r#"{"type":"object"}"#]);
        assert!(args.contains(&"--include-partial-messages".to_owned()));
        assert_eq!(after(&args, "--permission-mode"), ["bypassPermissions"]);
    }

    #[test]
    fn the_agent_model_applies_unless_a_message_names_one() {
        let args = arguments(&turn(json!({}))).unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(after(&args, "--model"), ["agent-model"]);
    }

    #[test]
    fn bad_options_are_refused_with_their_name() {
        for (options, name) in [
            (json!({"maxTurns": 0}), "maxTurns"),
            (json!({"maxTurns": "3"}), "maxTurns"),
            (json!({"maxBudgetUsd": -1}), "maxBudgetUsd"),
            (json!({"model": "--dangerously-skip-permissions"}), "model"),
            (json!({"allowedTools": "Bash"}), "allowedTools"),
            (json!({"betas": [1]}), "betas"),
            (json!({"disallowedTools": ["--verbose"]}), "disallowedTools"),
            (json!({"subagents": []}), "subagents"),
            (
                json!({"outputFormat": {"type": "json_schema"}}),
                "outputFormat",
            ),
        ] {
            let failure = arguments(&turn(options)).expect_err(name);
            assert!(failure.message.contains(name), "{}", failure.message);
        }
        assert!(thinking_budget(&json!({"type": "enabled"})).is_err());
        assert_eq!(
            thinking_budget(&json!({"type": "enabled", "budgetTokens": 2048})).ok(),
            Some("2048".into())
        );
    }

    #[test]
    fn a_failed_result_names_the_api_status() {
        let failure = failed_turn(
            &json!({"type": "result", "is_error": true, "api_error_status": 429,
                    "result": "API Error: 429 slow down"}),
            "ANTHROPIC_API_KEY",
        );
        assert_eq!(failure.status, Some(429));
        assert!(failure.message.contains("slow down"));
        assert!(failure.hint.unwrap().contains("rate limited"));
        let turns = failed_turn(
            &json!({"type": "result", "is_error": true, "subtype": "error_max_turns"}),
            "K",
        );
        assert_eq!(turns.status, None);
        assert!(turns.hint.unwrap().contains("maxTurns"));
    }
}
