//! Starts the real `ash` binary on port 0 over a temp data dir, and talks to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ash_cli::sse::{Frame, Reader};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const ASH: &str = env!("CARGO_BIN_EXE_ash");
pub const BRIDGE: &str = env!("CARGO_BIN_EXE_ash-bridge");

/// The uid of `nobody`, whom the unprivileged runs of the server use.
pub const NOBODY: u32 = 65534;
/// The descriptor a careless launcher leaves open to the server, in the fd-hygiene test.
pub const INHERITED_FD: i32 = 7;

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Who runs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    Root,
    Unprivileged,
}

#[derive(Default)]
struct Launch {
    /// Run as this uid (and gid) instead of the test's own.
    user: Option<u32>,
    /// A descriptor to leave open to the server as [`INHERITED_FD`].
    inherited: Option<i32>,
}

pub struct Server {
    pub data: tempfile::TempDir,
    pub url: String,
    pub key: String,
    pub stdout: Vec<String>,
    /// What `start_in` added to the server's environment; a restart gets the same.
    env: Vec<(String, String)>,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), &[]).await
    }

    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    /// Starts `ash start` on the data dir; env adds to the server's environment.
    pub async fn start_in(data: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        Self::launch(data, env, Launch::default()).await
    }

    /// Starts the server as an unprivileged user: `nobody` when the tests run as root, else
    /// the tests' own user.
    pub async fn start_unprivileged() -> Self {
        if !is_root() {
            return Self::start().await;
        }
        let data = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(data.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        Self::launch(
            data,
            &[],
            Launch {
                user: Some(NOBODY),
                ..Launch::default()
            },
        )
        .await
    }

    /// Starts the server as root or as `nobody`.
    pub async fn start_as(user: User) -> Self {
        match user {
            User::Root => Self::start().await,
            User::Unprivileged => Self::start_unprivileged().await,
        }
    }

    /// Starts the server as `user`, holding `file` open (without close-on-exec) as fd 7, the
    /// way a careless launcher leaves a descriptor to its child.
    pub async fn start_as_with_inherited(user: User, file: &std::fs::File) -> Self {
        use std::os::fd::AsRawFd;
        let data = tempfile::tempdir().unwrap();
        let uid = (user == User::Unprivileged && is_root()).then_some(NOBODY);
        if let Some(uid) = uid {
            std::os::unix::fs::chown(data.path(), Some(uid), Some(uid)).unwrap();
        }
        let launch = Launch {
            user: uid,
            inherited: Some(file.as_raw_fd()),
        };
        Self::launch(data, &[], launch).await
    }

    async fn launch(data: tempfile::TempDir, env: &[(&str, &str)], launch: Launch) -> Self {
        let mut command = tokio::process::Command::new(ASH);
        command
            .args(["start", "--port", "0"])
            .env("ASH_DATA_DIR", data.path())
            .env("ASH_BRIDGE_BIN", BRIDGE)
            .env_remove("ASH_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(uid) = launch.user {
            command.uid(uid).gid(uid);
        }
        if let Some(fd) = launch.inherited {
            // SAFETY: dup2 between fork and exec, on a descriptor the test holds open.
            unsafe {
                command.pre_exec(move || {
                    if libc::dup2(fd, INHERITED_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let (url, stdout) = listening(&mut child).await;
        let key = env
            .iter()
            .find(|(k, _)| *k == "ASH_API_KEY")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| {
                std::fs::read_to_string(data.path().join("initial-api-key"))
                    .unwrap()
                    .trim()
                    .to_owned()
            });
        Self {
            data,
            url,
            key,
            stdout,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child,
            http: reqwest::Client::new(),
        }
    }

    /// Starts the server again on its data dir and environment, keeping its API key.
    async fn start_again(data: tempfile::TempDir, env: Vec<(String, String)>, key: String) -> Self {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut again = Self::start_in(data, &env).await;
        again.key = key;
        again
    }

    /// Stops the server (SIGTERM, as an operator would) and waits for it to exit; returns
    /// its data dir and its API key.
    pub async fn stop(mut self) -> (tempfile::TempDir, String) {
        self.terminate();
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "ash exited with {status} on SIGTERM");
        (self.data, self.key)
    }

    /// Sends SIGTERM, as an operator stopping the server would; nothing when it has exited.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
        }
    }

    /// Waits for the server to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        self.child.wait().await.unwrap()
    }

    /// Stops the server (SIGTERM, as an operator would) and starts it again on the same data.
    pub async fn restart(self) -> Self {
        let env = self.env.clone();
        let (data, key) = self.stop().await;
        Self::start_again(data, env, key).await
    }

    /// Kills the server with SIGKILL, as a crash would, and starts it again on the same data.
    pub async fn crash_and_restart(mut self) -> Self {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        Self::start_again(self.data, self.env, self.key).await
    }

    /// Opens `GET /api/sessions/:id/stream`, resuming after `last_event_id` when given.
    pub async fn open_log_stream(
        &self,
        session: &str,
        last_event_id: Option<i64>,
    ) -> Reader<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> {
        let mut request = self
            .http
            .get(format!("{}/api/sessions/{session}/stream", self.url))
            .bearer_auth(&self.key);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Reader::new(response.bytes_stream())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub fn data_path(&self) -> &Path {
        self.data.path()
    }

    /// The session's workspace as the server sees it: with workspace quotas, a filesystem
    /// mounted in the server's own mount namespace, reached through `/proc/<pid>/root`.
    pub fn workspace(&self, session: &str) -> PathBuf {
        workspace_of(self.data.path(), self.pid(), session)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET` with the key, the response as it came.
    pub async fn raw_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.raw_get("/metrics").await.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn raw_post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs `command` in the session's sandbox (`POST /exec`); its reply, asserting 200.
    pub async fn exec(&self, session: &str, command: &str) -> Value {
        let (status, out) = self
            .post(
                &format!("/api/sessions/{session}/exec"),
                json!({ "command": command }),
            )
            .await;
        assert_eq!(status, 200, "{out}");
        out
    }

    /// Deploys a `command` agent running `script` as its `agent.sh`, and starts a session with it.
    pub async fn command_session(&self, agent: &str, script: &str) -> String {
        let (status, body) = self
            .deploy(agent, &[("ash.toml", COMMAND_TOML), ("agent.sh", script)])
            .await;
        assert_eq!(status, 201, "{body}");
        self.session(agent).await
    }

    /// Deploys an agent in managed mode from (path, text) pairs.
    pub async fn deploy(&self, name: &str, files: &[(&str, &str)]) -> (u16, Value) {
        use base64::Engine;
        let files: Vec<Value> = files
            .iter()
            .map(|(p, c)| json!({"path": p, "content": base64::engine::general_purpose::STANDARD.encode(c)}))
            .collect();
        self.post("/api/agents", json!({"name": name, "files": files}))
            .await
    }

    /// Creates a session and returns its id.
    pub async fn session(&self, agent: &str) -> String {
        let (status, body) = self.post("/api/sessions", json!({"agent": agent})).await;
        assert_eq!(status, 201, "{body}");
        body["session"]["id"].as_str().unwrap().to_owned()
    }

    /// Opens a message's SSE stream.
    pub async fn open_stream(
        &self,
        session: &str,
        body: Value,
    ) -> Reader<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> {
        let response = self
            .http
            .post(format!("{}/api/sessions/{session}/messages", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Reader::new(response.bytes_stream())
    }

    /// Sends `content` with partial messages, interrupts the turn at its first `text_delta`
    /// (asserting the interrupt was taken) and returns every frame up to `done`.
    pub async fn interrupt_mid_turn(&self, session: &str, content: &str) -> Vec<Frame> {
        let mut stream = self
            .open_stream(
                session,
                json!({"content": content, "includePartialMessages": true}),
            )
            .await;
        let mut seen = Self::read_until(&mut stream, |f| f.event == "text_delta").await;
        let (status, body) = self
            .post(&format!("/api/sessions/{session}/interrupt"), json!({}))
            .await;
        assert_eq!((status, body), (200, json!({"interrupted": true})));
        seen.extend(Self::read_until(&mut stream, |f| f.event == "done").await);
        seen
    }

    /// Reads frames until (and including) the first one `stop` accepts.
    pub async fn read_until<S>(reader: &mut Reader<S>, stop: impl Fn(&Frame) -> bool) -> Vec<Frame>
    where
        S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    {
        let mut frames = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), reader.next())
                .await
                .expect("stream stalled")
                .expect("stream ended")
                .unwrap();
            let done = stop(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Sends a message: its whole SSE reply, or the status and body it was refused with.
    pub async fn try_message(
        &self,
        session: &str,
        content: &str,
    ) -> Result<Vec<Frame>, (u16, Value)> {
        let response = self
            .http
            .post(format!("{}/api/sessions/{session}/messages", self.url))
            .bearer_auth(&self.key)
            .json(&json!({ "content": content }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        let mut reader = Reader::new(response.bytes_stream());
        let mut frames = Vec::new();
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("stream stalled")
        {
            frames.push(frame.unwrap());
        }
        Ok(frames)
    }

    /// Sends a message and reads its whole SSE reply.
    pub async fn message(&self, session: &str, content: &str) -> Vec<Frame> {
        let mut reader = self
            .open_stream(
                session,
                json!({"content": content, "includePartialMessages": true}),
            )
            .await;
        let mut frames = Vec::new();
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("stream stalled")
        {
            frames.push(frame.unwrap());
        }
        frames
    }

    /// Runs the `ash` CLI against this server.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(ASH)
            .args(args)
            .env("ASH_SERVER_URL", &self.url)
            .env("ASH_API_KEY", &self.key)
            .env("XDG_CONFIG_HOME", self.data.path().join("no-config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(stdin.unwrap_or("").as_bytes())
            .await
            .unwrap();
        drop(pipe);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("cli hung")
            .unwrap()
    }
}

/// Runs `ash <args>` with `env` (and no API key) on a fresh process; its exit status and
/// stderr.
pub async fn refused(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(ASH)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("ASH_API_KEY")
            .env("ASH_BRIDGE_BIN", BRIDGE)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("a node with a bad setting stops at once")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The MCP Python SDK's interpreter (`scripts/install-mcp-clients.sh` installs it).
pub const MCP_PYTHON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/mcp-python/bin/python"
);

/// Runs a client script (`program script`, e.g. `node` and a playwright or MCP SDK script)
/// against the server, with its URL and key in `ASH_URL` and `ASH_KEY`; asserts it succeeded
/// within two minutes and returns the JSON line it printed.
pub async fn run_client(program: &str, script: &str, server: &Server) -> Value {
    let run = tokio::process::Command::new(program)
        .arg(script)
        .env("ASH_URL", &server.url)
        .env("ASH_KEY", &server.key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client finished")
        .unwrap_or_else(|e| panic!("{program} runs (scripts/setup.sh installs it): {e}"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {said}"))
}

/// Reads an `ash` process's stdout until it says where it listens; returns that URL and the
/// lines so far, and drains the rest.
pub async fn listening(child: &mut tokio::process::Child) -> (String, Vec<String>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("ash exited before listening");
            stdout.push(line.clone());
            if let Some(addr) = line.strip_prefix("ash: listening on ") {
                return addr.to_owned();
            }
        }
    })
    .await
    .expect("ash did not start listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (url, stdout)
}

/// A session's workspace on the node with data dir `data` and process `pid`: with workspace
/// quotas, a filesystem mounted in the node's own mount namespace, reached through
/// `/proc/<pid>/root`.
pub fn workspace_of(data: &Path, pid: u32, session: &str) -> PathBuf {
    let sandbox = data.join("sandboxes").join(session);
    if sandbox.join("disk.img").exists() {
        let inside = sandbox.strip_prefix("/").unwrap_or(&sandbox);
        Path::new(&format!("/proc/{pid}/root"))
            .join(inside)
            .join("disk/workspace")
    } else {
        sandbox.join("workspace")
    }
}

pub async fn start_fails(env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(ASH)
        .args(["start", "--port", "0"])
        .env("ASH_DATA_DIR", data.path())
        .env("ASH_BRIDGE_BIN", BRIDGE)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "ash start succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The text an assistant produced in a turn: concatenated `text_delta`s.
pub fn streamed_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.event == "text_delta")
        .map(|f| {
            serde_json::from_str::<Value>(&f.data).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The text of the turn's `assistant` messages.
pub fn assistant_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.event == "message")
        .map(|f| serde_json::from_str::<Value>(&f.data).unwrap())
        .filter(|m| m["type"] == "assistant")
        .flat_map(|m| {
            m["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

/// Serves `app` on a loopback port of its own (a fake of a service out of reach from here).
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The data of a turn's `error` frames, joined.
pub fn error_of(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.event == "error")
        .map(|f| f.data.clone())
        .collect()
}

/// Asserts that a model key is in none of the sandbox's process environments, none of its
/// files (`/workspace`, `/run`, `/tmp`), and none of the workspace's files on the host, and
/// that the model proxy's socket is there instead.
pub async fn assert_key_absent(server: &Server, session: &str, key: &str) {
    let probe = format!(
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; grep -rl '{key}' /workspace /run /tmp 2>/dev/null; ls -l /run/ash"
    );
    let (status, out) = server
        .post(
            &format!("/api/sessions/{session}/exec"),
            json!({ "command": probe }),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(!stdout.contains(key), "{stdout}");
    assert!(stdout.contains("model.sock"), "{stdout}");
    let mut files = vec![server.workspace(session)];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(key),
                "{} holds the key",
                path.display()
            );
        }
    }
}

pub fn events(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.event.as_str()).collect()
}

/// A plugin folder packaged by `scripts/build-plugins.sh` (the test command runs it first).
pub fn plugin(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins")
        .join(name);
    assert!(
        dir.join("plugin.toml").is_file(),
        "{} is missing: run scripts/build-plugins.sh",
        dir.display()
    );
    dir
}

/// Starts the server with `settings` (TOML) as its settings file.
pub async fn start_with(settings: &str) -> Server {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("settings.toml");
    std::fs::write(&file, settings).unwrap();
    Server::start_in(data, &[("ASH_CONFIG", file.to_str().unwrap())]).await
}

/// The ash.toml of an `echo` agent slow enough (200 ms a word) to act on mid-turn.
pub const SLOW_ECHO_TOML: &str = "[backend]\nkind = \"echo\"\ndelay_ms = 200\n";

/// The ash.toml of a `command` agent that runs `agent.sh` from its folder.
pub const COMMAND_TOML: &str =
    "[backend]\nkind = \"command\"\nargv = [\"/bin/sh\", \"agent.sh\"]\n";

/// An agent whose turn says "started", then waits until the test writes to a FIFO in its workspace.
pub const GATED_AGENT: &str = r#"#!/bin/sh
[ -p gate ] || mkfifo gate
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"started"}]}}}\n' "$id"
  read -r _ < gate
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"finished"}]}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

/// Lets a `GATED_AGENT` turn finish.
pub async fn open_gate(server: &Server, session: &str) {
    open_gate_at(&server.workspace(session)).await
}

/// Lets a `GATED_AGENT` turn in the workspace at `workspace` finish.
pub async fn open_gate_at(workspace: &Path) {
    let gate = workspace.join("gate");
    tokio::task::spawn_blocking(move || std::fs::write(gate, "go\n"))
        .await
        .unwrap()
        .unwrap();
}

/// moto's S3 server on a free loopback port; it runs until stdin closes (the test drops it).
const MOTO: &str = r#"
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"#;

pub const BUCKET: &str = "ash-test-snapshots";

/// A stand-in S3 (moto's server), with one empty bucket.
pub struct FakeS3 {
    _child: tokio::process::Child,
    pub endpoint: String,
}

impl FakeS3 {
    pub async fn start() -> Self {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/moto/bin/python");
        let mut child = tokio::process::Command::new(python)
            .args(["-c", MOTO])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("moto is installed by scripts/install-moto.sh (scripts/setup.sh runs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next_line().await.unwrap().expect("moto's port");
        let endpoint = format!("http://127.0.0.1:{}", port.trim());
        // CreateBucket: moto takes requests unsigned.
        let made = reqwest::Client::new()
            .put(format!("{endpoint}/{BUCKET}"))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "{}", made.status());
        Self {
            _child: child,
            endpoint,
        }
    }
}

/// The server settings that put snapshots in the bucket at `endpoint`.
pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ASH_SNAPSHOT_STORE", format!("s3://{BUCKET}/snapshots")),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}
