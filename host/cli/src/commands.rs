//! The client commands: each one REST call (or a stream), output as JSON or chat text.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use ash_cli::client::Client;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::Command;

/// Folders never uploaded by `ash deploy`.
const SKIP_DIRS: &[&str] = &[
    ".git",
    "node_modules",
    "__pycache__",
    ".cache",
    ".venv",
    "venv",
];

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The agent folder.
    path: PathBuf,
    /// Agent name [default: the folder's name]
    #[arg(short, long)]
    name: Option<String>,
    /// Environment for the agent's sandboxes, KEY=VALUE (repeatable); adds to .env
    #[arg(short, long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// List deployed agents.
    List,
    /// Show one agent.
    Info { name: String },
    /// Delete an agent and end its sessions.
    Delete { name: String },
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// List the API keys (their first characters only).
    List,
    /// Make an API key; it is shown this once.
    Create {
        #[arg(long, default_value = "cli-key")]
        label: String,
    },
    /// Delete an API key: it is refused from the next request on.
    Delete { id: String },
}

#[derive(clap::Subcommand)]
pub enum ToolCommand {
    /// List the tools.
    List,
    /// Show one tool.
    Show { name: String },
    /// Store a tool from a JSON file (its record, as `GET /api/tools/:name` shows it); one of
    /// that name is replaced, as its next version.
    Put { file: PathBuf },
    /// Call a tool with JSON arguments (`{}` when none are given).
    Call {
        name: String,
        #[arg(default_value = "{}")]
        arguments: String,
    },
    /// Delete a tool.
    Delete { name: String },
}

#[derive(clap::Subcommand)]
pub enum SessionCommand {
    /// Start a session with an agent; prints the session.
    Create {
        agent: String,
        /// Extra environment for this session, KEY=VALUE (repeatable)
        #[arg(short, long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
    },
    /// Send a message and print the reply as it streams.
    Send {
        id: String,
        message: String,
        /// Print every SSE frame as it arrives instead of the reply text.
        #[arg(long)]
        raw: bool,
    },
    /// List sessions, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
    },
    /// Show one session.
    Info { id: String },
    /// Show a session's stored messages.
    Messages { id: String },
    /// End a session; its sandbox stops and its workspace is deleted.
    End { id: String },
    /// Pause a session: snapshot its workspace, keep its sandbox warm, take no messages.
    Pause { id: String },
    /// Stop a session's sandbox, keeping its files and conversation.
    Stop { id: String },
    /// Resume a paused or stopped session (warm or cold).
    Resume { id: String },
    /// Run a shell command in the session's sandbox; exits with the command's exit code.
    Exec {
        id: String,
        command: String,
        /// Kill it after this many milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout: u64,
    },
    /// Stop the session's running turn.
    Interrupt { id: String },
    /// Copy a session (workspace and conversation) into a new, paused one.
    Fork { id: String },
    /// Show the last lines its sandbox printed (after index --after).
    Logs {
        id: String,
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        after: i64,
    },
    /// Read and write the session's workspace files.
    #[command(subcommand)]
    Files(FilesCommand),
}

#[derive(clap::Subcommand)]
pub enum FilesCommand {
    /// List the workspace's files.
    List {
        id: String,
        /// Leave out tool folders such as .cache, .venv and tmp.
        #[arg(long)]
        no_hidden: bool,
    },
    /// Print a file (or save it with --output).
    Get {
        id: String,
        path: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Copy a local file into the workspace [default place: its file name].
    Put {
        id: String,
        file: PathBuf,
        /// Path in the workspace.
        path: Option<String>,
    },
    /// Delete a file from the workspace.
    Rm { id: String, path: String },
    /// Save the whole workspace as a tar.gz [default: workspace-<id>.tar.gz].
    Download {
        id: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Unpack a tar.gz over the workspace.
    Upload { id: String, bundle: PathBuf },
}

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// The server's plugins and their state (calls, failures, quarantine).
    List,
    /// Check a plugin folder: its plugin.toml, the component's digest, and that the component
    /// implements the world its kind needs. Exits 1 when the plugin would not load.
    Check { dir: PathBuf },
    /// Start a new Rust plugin in ./<NAME>: a crate that builds to a component of the
    /// kind's world, its plugin.toml and the WIT it needs.
    New {
        name: String,
        #[arg(long, value_enum)]
        kind: PluginKind,
    },
}

/// What a new plugin extends.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PluginKind {
    /// Sees events in batches, off the request path.
    Observe,
    /// Rewrites each agent message before it is stored and streamed.
    Transform,
    /// Joins the auth chain after the API keys.
    Auth,
}

impl From<PluginKind> for ash_plugin_host::Kind {
    fn from(kind: PluginKind) -> Self {
        match kind {
            PluginKind::Observe => Self::Observe,
            PluginKind::Transform => Self::Transform,
            PluginKind::Auth => Self::Auth,
        }
    }
}

/// `ash plugin check`: loads the plugin as the server would, without a server.
pub fn check_plugin(dir: &Path) -> anyhow::Result<ExitCode> {
    match ash_plugin_host::Plugins::check(dir) {
        Ok(manifest) => {
            println!(
                "ok: {} {} implements {}",
                manifest.id,
                manifest.version,
                manifest.kind.world()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ash: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(clap::Args)]
pub struct ChatArgs {
    agent: String,
    /// Send this one message and exit; without it, read messages line by line.
    message: Option<String>,
    /// Continue this session instead of creating one.
    #[arg(short, long)]
    session_id: Option<String>,
    /// End the session when done.
    #[arg(long)]
    end: bool,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

/// `ash runner list`: one line per runner.
pub async fn runner_list(server: Option<String>) -> anyhow::Result<ExitCode> {
    let client = Client::discover(server)?;
    let reply = client.call(Method::GET, "/api/runners", None).await?;
    let runners = reply["runners"].as_array().cloned().unwrap_or_default();
    if runners.is_empty() {
        println!("no runners (this server is not a coordinator, or none has joined)");
    } else {
        println!(
            "{:<38} {:<9} {:>9} {:>8} {:>13}  ADDRESS",
            "ID", "STATE", "SANDBOXES", "RUNNING", "HEARTBEAT AGE"
        );
    }
    for r in runners {
        println!(
            "{:<38} {:<9} {:>4}/{:<4} {:>8} {:>10} ms  {}",
            r["id"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["sandboxes"],
            r["capacity"],
            r["running"],
            r["heartbeatAgeMs"],
            r["address"].as_str().unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(server: Option<String>, command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::discover(server)?;
    let printed = match command {
        Command::Start(_)
        | Command::Runner(_)
        | Command::Openapi
        | Command::Mcp
        | Command::Bench(_)
        | Command::Doctor(_)
        | Command::Storage(_)
        | Command::Plugin(PluginCommand::Check { .. } | PluginCommand::New { .. }) => {
            unreachable!("handled by main")
        }
        Command::Plugin(PluginCommand::List) => {
            let health = client.call(Method::GET, "/health", None).await?;
            json!({ "plugins": health["plugins"] })
        }
        Command::Health => client.call(Method::GET, "/health", None).await?,
        Command::Deploy(args) => deploy(&client, args).await?,
        Command::Agent(AgentCommand::List) => client.call(Method::GET, "/api/agents", None).await?,
        Command::Agent(AgentCommand::Info { name }) => {
            client
                .call(Method::GET, &format!("/api/agents/{name}"), None)
                .await?
        }
        Command::Agent(AgentCommand::Delete { name }) => {
            client
                .call(Method::DELETE, &format!("/api/agents/{name}"), None)
                .await?
        }
        Command::Session(SessionCommand::Create { agent, env }) => {
            create_session(&client, &agent, env.into_iter().collect()).await?
        }
        Command::Session(SessionCommand::List { agent }) => {
            let query = agent.map(|a| format!("?agent={a}")).unwrap_or_default();
            client
                .call(Method::GET, &format!("/api/sessions{query}"), None)
                .await?
        }
        Command::Session(SessionCommand::Info { id }) => {
            client
                .call(Method::GET, &format!("/api/sessions/{id}"), None)
                .await?
        }
        Command::Session(SessionCommand::Logs { id, after }) => {
            let path = format!("/api/sessions/{id}/logs?after={after}");
            client.call(Method::GET, &path, None).await?
        }
        Command::Tool(ToolCommand::List) => client.call(Method::GET, "/api/tools", None).await?,
        Command::Tool(ToolCommand::Show { name }) => {
            client
                .call(Method::GET, &format!("/api/tools/{name}"), None)
                .await?
        }
        Command::Tool(ToolCommand::Put { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let tool: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let Some(name) = tool["name"].as_str() else {
                bail!("{} names no tool (its \"name\")", file.display());
            };
            let path = format!("/api/tools/{name}");
            client.call(Method::PUT, &path, Some(&tool)).await?
        }
        Command::Tool(ToolCommand::Call { name, arguments }) => {
            let arguments: Value =
                serde_json::from_str(&arguments).context("the arguments are not JSON")?;
            let body = json!({ "arguments": arguments });
            let path = format!("/api/tools/{name}/call");
            client.call(Method::POST, &path, Some(&body)).await?
        }
        Command::Tool(ToolCommand::Delete { name }) => {
            client
                .call(Method::DELETE, &format!("/api/tools/{name}"), None)
                .await?
        }
        Command::Key(KeyCommand::List) => client.call(Method::GET, "/api/api-keys", None).await?,
        Command::Key(KeyCommand::Create { label }) => {
            let body = json!({ "label": label });
            client
                .call(Method::POST, "/api/api-keys", Some(&body))
                .await?
        }
        Command::Key(KeyCommand::Delete { id }) => {
            client
                .call(Method::DELETE, &format!("/api/api-keys/{id}"), None)
                .await?
        }
        Command::Session(SessionCommand::Messages { id }) => {
            client
                .call(Method::GET, &format!("/api/sessions/{id}/messages"), None)
                .await?
        }
        Command::Session(SessionCommand::Pause { id }) => act(&client, &id, "pause").await?,
        Command::Session(SessionCommand::Stop { id }) => act(&client, &id, "stop").await?,
        Command::Session(SessionCommand::Resume { id }) => act(&client, &id, "resume").await?,
        Command::Session(SessionCommand::Interrupt { id }) => {
            act(&client, &id, "interrupt").await?
        }
        Command::Session(SessionCommand::Fork { id }) => act(&client, &id, "fork").await?,
        Command::Session(SessionCommand::Exec {
            id,
            command,
            timeout,
        }) => {
            let body = json!({"command": command, "timeout": timeout});
            let out = client
                .call(
                    Method::POST,
                    &format!("/api/sessions/{id}/exec"),
                    Some(&body),
                )
                .await?;
            print!("{}", out["stdout"].as_str().unwrap_or_default());
            eprint!("{}", out["stderr"].as_str().unwrap_or_default());
            if out["timedOut"] == true {
                eprintln!("ash: killed after {timeout} ms");
            }
            let code = out["exitCode"].as_i64().unwrap_or(1);
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::Session(SessionCommand::End { id }) => {
            client
                .call(Method::DELETE, &format!("/api/sessions/{id}"), None)
                .await?
        }
        Command::Session(SessionCommand::Send { id, message, raw }) => {
            return Ok(if send(&client, &id, &message, raw).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Chat(args) => return chat(&client, args).await,
        Command::Session(SessionCommand::Files(command)) => files(&client, command).await?,
    };
    if !printed.is_null() {
        println!("{}", serde_json::to_string_pretty(&printed)?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn files(client: &Client, command: FilesCommand) -> anyhow::Result<Value> {
    let base64 = &base64::engine::general_purpose::STANDARD;
    match command {
        FilesCommand::List { id, no_hidden } => {
            let path = format!("/api/sessions/{id}/files?includeHidden={}", !no_hidden);
            client.call(Method::GET, &path, None).await
        }
        FilesCommand::Get { id, path, output } => {
            let url = format!("/api/sessions/{id}/files/{path}?format=raw");
            let bytes = client.download(&url).await?;
            match output {
                Some(file) => std::fs::write(&file, &bytes)
                    .with_context(|| format!("cannot write {}", file.display()))?,
                None => {
                    std::io::stdout().write_all(&bytes)?;
                    return Ok(Value::Null);
                }
            }
            Ok(json!({"path": path, "size": bytes.len()}))
        }
        FilesCommand::Put { id, file, path } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = match path {
                Some(path) => path,
                None => file
                    .file_name()
                    .context("give the path in the workspace")?
                    .to_string_lossy()
                    .into_owned(),
            };
            let body = json!({"files": [{"path": path, "content": base64.encode(bytes)}]});
            let url = format!("/api/sessions/{id}/files");
            let reply = client.call(Method::POST, &url, Some(&body)).await?;
            if let Some(error) = reply["files"][0]["error"].as_str() {
                bail!("{path}: {error}");
            }
            Ok(reply)
        }
        FilesCommand::Rm { id, path } => {
            let url = format!("/api/sessions/{id}/files/{path}");
            client.call(Method::DELETE, &url, None).await
        }
        FilesCommand::Download { id, output } => {
            let bytes = client
                .download(&format!("/api/sessions/{id}/workspace"))
                .await?;
            let file = output.unwrap_or_else(|| PathBuf::from(format!("workspace-{id}.tar.gz")));
            std::fs::write(&file, &bytes)
                .with_context(|| format!("cannot write {}", file.display()))?;
            Ok(json!({"file": file, "size": bytes.len()}))
        }
        FilesCommand::Upload { id, bundle } => {
            let bytes = std::fs::read(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let body = json!({"bundle": base64.encode(bytes)});
            let url = format!("/api/sessions/{id}/workspace");
            client.call(Method::POST, &url, Some(&body)).await
        }
    }
}

async fn act(client: &Client, session: &str, action: &str) -> anyhow::Result<Value> {
    client
        .call(
            Method::POST,
            &format!("/api/sessions/{session}/{action}"),
            Some(&json!({})),
        )
        .await
}

async fn create_session(
    client: &Client,
    agent: &str,
    env: BTreeMap<String, String>,
) -> anyhow::Result<Value> {
    client
        .call(
            Method::POST,
            "/api/sessions",
            Some(&json!({"agent": agent, "extraEnv": env})),
        )
        .await
}

/// Streams one reply to stdout; `false` when the turn ended in an error.
async fn send(client: &Client, session: &str, message: &str, raw: bool) -> anyhow::Result<bool> {
    let body = json!({"content": message, "includePartialMessages": true});
    let mut frames = client.send_message(session, &body).await?;
    let mut stdout = std::io::stdout();
    let mut ok = true;
    let mut streamed = false;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(anyhow::Error::msg)?;
        if raw {
            writeln!(stdout, "{}: {}", frame.event, frame.data)?;
            continue;
        }
        let data: Value = serde_json::from_str(&frame.data).unwrap_or(Value::Null);
        match frame.event.as_str() {
            "text_delta" => {
                write!(stdout, "{}", data["delta"].as_str().unwrap_or_default())?;
                streamed = true;
            }
            "tool_use" => writeln!(stdout, "\n[tool: {}]", data["name"].as_str().unwrap_or("?"))?,
            "message" if !streamed && data["type"] == "assistant" => {
                for block in data["message"]["content"].as_array().into_iter().flatten() {
                    write!(stdout, "{}", block["text"].as_str().unwrap_or_default())?;
                }
            }
            "error" => {
                eprintln!(
                    "\nash: error: {}",
                    data["error"].as_str().unwrap_or(&frame.data)
                );
                ok = false;
            }
            "shutdown" => {
                eprintln!(
                    "\nash: {} (after event {})",
                    data["message"].as_str().unwrap_or(&frame.data),
                    data["lastEventId"]
                );
                ok = false;
            }
            _ => {}
        }
        stdout.flush()?;
    }
    writeln!(stdout)?;
    Ok(ok)
}

async fn chat(client: &Client, args: ChatArgs) -> anyhow::Result<ExitCode> {
    let session = match args.session_id {
        Some(id) => id,
        None => {
            let created = create_session(client, &args.agent, BTreeMap::new()).await?;
            created["session"]["id"]
                .as_str()
                .context("server returned no session id")?
                .to_owned()
        }
    };
    eprintln!("ash: session {session}");
    let mut ok = true;
    if let Some(message) = args.message {
        ok = send(client, &session, &message, false).await?;
    } else {
        let stdin = std::io::stdin();
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim();
            if matches!(line, "/exit" | "/quit") {
                break;
            }
            if !line.is_empty() {
                ok = send(client, &session, line, false).await?;
            }
        }
    }
    if args.end {
        client
            .call(Method::DELETE, &format!("/api/sessions/{session}"), None)
            .await?;
    } else {
        eprintln!("ash: session {session} is kept; `ash session end {session}` ends it");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn deploy(client: &Client, args: DeployArgs) -> anyhow::Result<Value> {
    let dir = args
        .path
        .canonicalize()
        .with_context(|| format!("no agent folder at {}", args.path.display()))?;
    if !dir.join("CLAUDE.md").is_file() {
        bail!(
            "{} has no CLAUDE.md: an agent folder needs one (its system prompt)",
            dir.display()
        );
    }
    let name = match args.name {
        Some(name) => name,
        None => dir
            .file_name()
            .context("the agent folder has no name")?
            .to_string_lossy()
            .into_owned(),
    };
    let mut env = read_dotenv(&dir.join(".env"))?;
    env.extend(read_dotenv(&dir.join(".env.local"))?);
    env.extend(args.env);
    let mut files = Vec::new();
    collect(&dir, &dir, &mut files)?;
    client
        .call(
            Method::POST,
            "/api/agents",
            Some(&json!({"name": name, "files": files, "env": env})),
        )
        .await
}

/// Every regular file below `dir`, as `{path, content (base64)}`; `.env` files stay local.
fn collect(root: &Path, dir: &Path, files: &mut Vec<Value>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if kind.is_dir() && !SKIP_DIRS.contains(&name.as_str()) {
            collect(root, &entry.path(), files)?;
        } else if kind.is_file() && !name.starts_with(".env") {
            let bytes = std::fs::read(entry.path())?;
            let path = entry
                .path()
                .strip_prefix(root)?
                .to_string_lossy()
                .into_owned();
            files.push(json!({"path": path, "content": base64::engine::general_purpose::STANDARD.encode(bytes)}));
        }
    }
    Ok(())
}

fn read_dotenv(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(BTreeMap::new());
    };
    let mut env = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("{}: {line:?} is not KEY=VALUE", path.display()))?;
        env.insert(
            key.trim().to_owned(),
            value.trim().trim_matches('"').to_owned(),
        );
    }
    Ok(env)
}
