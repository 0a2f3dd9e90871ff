//! The `claude-code` backend, end to end: the real Claude Code CLI (installed by
//! `scripts/install-claude.sh`) in a real sandbox, against a FAKE Anthropic Messages API on
//! loopback (`FakeAnthropic`) that speaks the real streaming wire format — the Anthropic API
//! is not reachable from here. The sandbox has no network: the CLI reaches the fake through
//! the bridge's loopback forwarder and the host's model proxy, which adds the key.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::{assistant_text, error_of, events, streamed_text, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

const KEY: &str = "sk-ant-fake-test-key-0123456789";

/// One request the fake was sent: its `x-api-key`, `anthropic-version` and body.
#[derive(Clone, Debug)]
struct Request {
    api_key: String,
    version: String,
    body: Value,
}

type Seen = Arc<Mutex<Vec<Request>>>;

/// A fake Anthropic Messages endpoint. It answers by the last text of the last user
/// message: `status N` gets that status with an Anthropic-shaped error, `malformed` a stream
/// line that is not JSON, `slow` one delta and then nothing, `run tool` a `Bash` tool call;
/// a tool result is answered `Tool said: <output>`; anything else is streamed back as
/// `You said: <text> (prompt <n>)`, counting the user's prompts in the conversation.
struct FakeAnthropic {
    base_url: String,
    seen: Seen,
}

impl FakeAnthropic {
    async fn start() -> Self {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/v1/messages", axum::routing::post(messages))
            .with_state(seen.clone());
        let addr = common::serve(app).await;
        Self {
            base_url: format!("http://{addr}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// A message's blocks (the CLI sends a string or an array of blocks).
fn blocks(message: &Value) -> Vec<Value> {
    match &message["content"] {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks.clone(),
        _ => Vec::new(),
    }
}

/// The user's own words in a message: its text blocks that are not the CLI's reminders.
fn prompts(message: &Value) -> Vec<String> {
    blocks(message)
        .iter()
        .filter_map(|b| b["text"].as_str())
        .filter(|t| !t.starts_with("<system-reminder>"))
        .map(|t| t.trim().to_owned())
        .collect()
}

async fn messages(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let answered = {
        let mut seen = seen.lock().unwrap();
        seen.push(Request {
            api_key: header("x-api-key"),
            version: header("anthropic-version"),
            body: body.clone(),
        });
        seen.len()
    };
    let users: Vec<&Value> = body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "user").collect())
        .unwrap_or_default();
    let said: Vec<String> = users.iter().flat_map(|m| prompts(m)).collect();
    let last = said.last().cloned().unwrap_or_default();
    // A tool's result with no new prompt beside it is the CLI going on after a tool call.
    let last_user = users.last().map(|m| (blocks(m), prompts(m)));
    let tool_output = last_user
        .filter(|(_, prompts)| prompts.is_empty())
        .and_then(|(blocks, _)| {
            blocks
                .iter()
                .find(|b| b["type"] == "tool_result")
                .map(|b| match &b["content"] {
                    Value::String(text) => text.clone(),
                    other => other[0]["text"].as_str().unwrap_or_default().to_owned(),
                })
        });
    if let Some(code) = last.strip_prefix("status ") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let error = json!({"type": "error",
                           "error": {"type": "fake_error", "message": format!("fake failure {code}")}});
        return (status, Json(error)).into_response();
    }
    let model = body["model"].clone();
    let start = json!({"type": "message_start", "message": {"id": format!("msg_fake{answered}"), "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}});
    let frame = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    let text_block = |text: &str| -> String {
        let mut out = frame(json!({"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}));
        for piece in text.split_inclusive(' ') {
            out += &frame(json!({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": piece}}));
        }
        out + &frame(json!({"type": "content_block_stop", "index": 0}))
    };
    let end = |reason: &str| {
        frame(
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null},
                     "usage": {"output_tokens": 7}}),
        ) + &frame(json!({"type": "message_stop"}))
    };
    let sse = |body: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    };
    if let Some(output) = tool_output {
        return sse(Body::from(
            frame(start) + &text_block(&format!("Tool said: {}", output.trim())) + &end("end_turn"),
        ));
    }
    match last.as_str() {
        "malformed" => sse(Body::from(
            frame(start) + "event: content_block_start\ndata: {this is not json\n\n",
        )),
        "slow" => {
            let first = frame(start)
                + &frame(json!({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}))
                + &frame(json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "The start "}}));
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures_util::stream::pending());
            sse(Body::from_stream(stream))
        }
        "run tool" => {
            let input = json!({"command": "echo sandboxed-uid-$(id -u) | tee tool-proof.txt",
                               "description": "prove where tools run"});
            let tool = frame(json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": "Bash", "input": {}}}))
                + &frame(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}))
                + &frame(json!({"type": "content_block_stop", "index": 0}));
            sse(Body::from(frame(start) + &tool + &end("tool_use")))
        }
        _ => {
            let reply = format!("You said: {last} (prompt {})", said.len());
            sse(Body::from(
                frame(start) + &text_block(&reply) + &end("end_turn"),
            ))
        }
    }
}

const SKILL: &str = "---\nname: greet\ndescription: Greets whoever asks\n---\nSay hello.\n";
const MCP: &str = r#"{"mcpServers": {"probe": {"command": "/workspace/no-such-mcp-server"}}}"#;

/// Deploys a `claude-code` agent against `fake` (with a skill and an MCP config) and starts a
/// session holding the key (and `extra` variables) in its `extraEnv`.
async fn claude_session(server: &Server, fake: &FakeAnthropic, extra: &[(&str, &str)]) -> String {
    let toml = format!(
        "[backend]\nkind = \"claude-code\"\nmodel = \"fake-model\"\nbase_url = \"{}\"\n",
        fake.base_url
    );
    let (status, body) = server
        .deploy(
            "claude",
            &[
                ("ash.toml", &toml),
                ("CLAUDE.md", "You are terse."),
                (".claude/skills/greet/SKILL.md", SKILL),
                (".mcp.json", MCP),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut env: serde_json::Map<String, Value> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    env.insert("ANTHROPIC_API_KEY".into(), json!(KEY));
    let (status, body) = server
        .post("/api/sessions", json!({"agent": "claude", "extraEnv": env}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["session"]["id"].as_str().unwrap().to_owned()
}

fn messages_of<'a>(
    frames: &'a [ash_cli::sse::Frame],
    kind: &'a str,
) -> impl Iterator<Item = Value> + 'a {
    frames
        .iter()
        .filter(|f| f.event == "message")
        .map(|f| serde_json::from_str::<Value>(&f.data).unwrap())
        .filter(move |m| m["type"] == kind)
}

#[tokio::test]
async fn fake_anthropic_claude_code_converses_runs_tools_survives_a_cold_resume_and_never_holds_the_key(
) {
    let fake = FakeAnthropic::start().await;
    let server = Server::start().await;
    let session = claude_session(&server, &fake, &[]).await;

    let first = server.message(&session, "hello").await;
    assert_eq!(
        assistant_text(&first),
        "You said: hello (prompt 1)",
        "{first:?}"
    );
    assert_eq!(streamed_text(&first), "You said: hello (prompt 1)");
    let init = messages_of(&first, "system")
        .find(|m| m["subtype"] == "init")
        .expect("init");
    assert_eq!(init["cwd"], "/workspace");
    assert!(
        init["skills"].as_array().unwrap().contains(&json!("greet")),
        "{init}"
    );
    assert_eq!(init["mcp_servers"][0]["name"], "probe", "{init}");
    assert_eq!(events(&first).last(), Some(&"done"));
    assert!(events(&first).contains(&"turn_complete"));

    let second = server.message(&session, "again").await;
    assert_eq!(assistant_text(&second), "You said: again (prompt 2)");

    // A tool call runs inside the sandbox, as the sandbox's user.
    let tool = server.message(&session, "run tool").await;
    assert!(events(&tool).contains(&"tool_use"), "{:?}", events(&tool));
    assert!(
        events(&tool).contains(&"tool_result"),
        "{:?}",
        events(&tool)
    );
    assert_eq!(assistant_text(&tool), "Tool said: sandboxed-uid-1000");
    let proof = std::fs::read_to_string(server.workspace(&session).join("tool-proof.txt")).unwrap();
    assert_eq!(proof.trim(), "sandboxed-uid-1000");
    // The CLI's own usage reports (from the fake's token counts) are the turns' usage.
    let (_, usage) = server
        .get(&format!("/api/usage/stats?sessionId={session}"))
        .await;
    let stats = &usage["stats"];
    assert_eq!(
        (&stats["totalToolCalls"], &stats["totalMessages"]),
        (&json!(1), &json!(3)),
        "{usage}"
    );
    assert!(
        stats["totalInputTokens"].as_u64().unwrap() >= 15
            && stats["totalOutputTokens"].as_u64().unwrap() >= 21,
        "{usage}"
    );

    for action in ["stop", "resume"] {
        let (status, body) = server
            .post(&format!("/api/sessions/{session}/{action}"), json!({}))
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    let after = server.message(&session, "third").await;
    assert_eq!(
        assistant_text(&after),
        "You said: third (prompt 4)",
        "a cold resume keeps the CLI's conversation"
    );

    // A message names its own model and options.
    let mut stream = server
        .open_stream(
            &session,
            json!({"content": "fourth", "model": "other-model", "maxTurns": 2}),
        )
        .await;
    Server::read_until(&mut stream, |f| f.event == "done").await;

    let seen = fake.seen();
    assert!(seen.len() >= 6, "{}", seen.len());
    for request in &seen {
        assert_eq!(request.api_key, KEY, "the proxy adds the key");
        assert!(
            !request.version.is_empty(),
            "anthropic-version is passed on"
        );
        assert_eq!(request.body["stream"], true);
        let system = request.body["system"].to_string();
        assert!(
            system.contains("You are terse."),
            "CLAUDE.md is the system prompt: {system}"
        );
    }
    assert_eq!(seen[0].body["model"], "fake-model");
    assert_eq!(seen.last().unwrap().body["model"], "other-model");
    assert!(seen[1].body["messages"]
        .to_string()
        .contains("You said: hello"));

    common::assert_key_absent(&server, &session, KEY).await;
}

#[tokio::test]
async fn fake_anthropic_failures_and_a_crashing_cli_become_error_events_and_the_session_stays_usable(
) {
    let fake = FakeAnthropic::start().await;
    let server = Server::start().await;
    let session = claude_session(&server, &fake, &[("CLAUDE_CODE_MAX_RETRIES", "0")]).await;
    for (prompt, status, hint) in [
        ("status 401", Some(401u64), "ANTHROPIC_API_KEY"),
        ("status 429", Some(429), "rate limited"),
        ("status 500", Some(500), "later"),
        ("malformed", None, ""),
    ] {
        let frames = server.message(&session, prompt).await;
        assert_eq!(events(&frames).last(), Some(&"done"), "{prompt}");
        let error: Value = serde_json::from_str(&error_of(&frames)).expect(prompt);
        assert_eq!(error["status"].as_u64(), status, "{prompt}: {error}");
        assert!(
            error["hint"].as_str().unwrap_or_default().contains(hint),
            "{prompt}: {error}"
        );
        assert!(!error.to_string().contains(KEY), "{error}");
        let next = server.message(&session, "fine").await;
        assert!(
            assistant_text(&next).starts_with("You said: fine"),
            "{prompt}: the next turn works: {next:?}"
        );
    }
    let bad_option = server
        .open_stream(&session, json!({"content": "x", "maxTurns": "many"}))
        .await;
    let mut bad_option = bad_option;
    let frames = Server::read_until(&mut bad_option, |f| f.event == "done").await;
    assert!(error_of(&frames).contains("maxTurns"), "{frames:?}");

    // A CLI that cannot start, one that dies, and an endpoint that is down: the turn says so,
    // the server carries on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (path, base_url, expected) in [
        (
            "/usr/bin/no-such-claude",
            &fake.base_url,
            "cannot run the Claude Code CLI",
        ),
        (
            "/bin/sh",
            &fake.base_url,
            "ended (exit status: 2) before finishing the turn",
        ),
        ("claude", &down, "\"status\":502"),
    ] {
        let toml = format!(
            "[backend]\nkind = \"claude-code\"\npath = \"{path}\"\nbase_url = \"{base_url}\"\n"
        );
        server.deploy("broken", &[("ash.toml", &toml)]).await;
        let (_, body) = server
            .post(
                "/api/sessions",
                json!({"agent": "broken", "extraEnv": {"ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_MAX_RETRIES": "0"}}),
            )
            .await;
        let broken = body["session"]["id"].as_str().unwrap();
        let frames = server.message(broken, "hello").await;
        assert!(error_of(&frames).contains(expected), "{path}: {frames:?}");
        assert_eq!(events(&frames).last(), Some(&"done"));
        let again = server.message(broken, "hello").await;
        assert!(
            error_of(&again).contains(expected),
            "{path}: still reported: {again:?}"
        );
    }
}

#[tokio::test]
async fn fake_anthropic_interrupt_kills_the_cli_mid_stream() {
    let fake = FakeAnthropic::start().await;
    let server = Server::start().await;
    let session = claude_session(&server, &fake, &[]).await;
    let seen = server.interrupt_mid_turn(&session, "slow").await;
    assert_eq!(streamed_text(&seen), "The start ");
    assert!(error_of(&seen).contains("interrupted"));
    let (_, out) = server
        .post(
            &format!("/api/sessions/{session}/exec"),
            json!({"command": "for p in /proc/[0-9]*; do grep -qv '^[0-9]* ([^)]*) Z' $p/stat && cat $p/comm; done"}),
        )
        .await;
    assert!(!out["stdout"].as_str().unwrap().contains("claude"), "{out}");
    let after = server.message(&session, "next").await;
    assert!(
        assistant_text(&after).starts_with("You said: next"),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_claude_code_agent_without_its_key_is_refused_with_what_to_set() {
    let fake = FakeAnthropic::start().await;
    let server = Server::start().await;
    let toml = format!(
        "[backend]\nkind = \"claude-code\"\nbase_url = \"{}\"\n",
        fake.base_url
    );
    server.deploy("claude", &[("ash.toml", &toml)]).await;
    let (status, body) = server
        .post("/api/sessions", json!({"agent": "claude"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ANTHROPIC_API_KEY"),
        "{body}"
    );
}
