//! The `openai` backend, end to end, against a FAKE OpenAI-compatible server on loopback
//! (`FakeOpenai`) that speaks the real chat-completions SSE wire format — no live model is
//! reachable from here. The sandbox has no network: the bridge reaches the fake through the
//! host's model proxy, which adds the key.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::{assistant_text, error_of, streamed_text, Server};
use serde_json::{json, Value};

const KEY: &str = "sk-fake-test-key-0123456789";

/// What the fake was sent: each request's `authorization` header and body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A fake OpenAI chat-completions endpoint. It answers by the last user message: `status N`
/// gets that status with an OpenAI-shaped error body, `malformed` gets a stream line that is
/// not JSON, `slow` sends one delta and then nothing; anything else is streamed back as
/// `You said: <text> (<n> messages)` in a few deltas, then `[DONE]`.
struct FakeOpenai {
    base_url: String,
    seen: Seen,
}

impl FakeOpenai {
    async fn start() -> Self {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .with_state(seen.clone());
        let addr = common::serve(app).await;
        Self {
            base_url: format!("http://{addr}/v1"),
            seen,
        }
    }
}

async fn complete(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push((authorization, body.clone()));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    if let Some(code) = last.strip_prefix("status ") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let error = json!({"error": {"message": format!("fake failure {code}"), "type": "fake"}});
        return (status, Json(error)).into_response();
    }
    let chunk = |text: &str| {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
        format!("data: {chunk}\n\n")
    };
    let sse = |body: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    };
    match last.as_str() {
        "malformed" => sse(Body::from("data: {this is not json\n\n")),
        "slow" => {
            let first = chunk("The start ");
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures_util::stream::pending());
            sse(Body::from_stream(stream))
        }
        _ => {
            let reply = format!("You said: {last} ({} messages)", messages.len());
            let mut text: String = reply.split_inclusive(' ').map(chunk).collect();
            // As OpenAI does when asked: a last chunk with no choices and the token counts.
            if body["stream_options"]["include_usage"] == true {
                let usage = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 10 * messages.len(), "completion_tokens": 7,
                        "prompt_tokens_details": {"cached_tokens": 3}}});
                text.push_str(&format!("data: {usage}\n\n"));
            }
            text.push_str("data: [DONE]\n\n");
            sse(Body::from(text))
        }
    }
}

use futures_util::StreamExt;

fn agent_toml(base_url: &str) -> String {
    format!("[backend]\nkind = \"openai\"\nmodel = \"fake-model\"\nbase_url = \"{base_url}\"\n")
}

/// Deploys an `openai` agent against `fake` and starts a session holding the key.
async fn gpt_session(server: &Server, fake: &FakeOpenai) -> String {
    let toml = agent_toml(&fake.base_url);
    let (status, body) = server
        .deploy(
            "gpt",
            &[("ash.toml", &toml), ("CLAUDE.md", "You are terse.")],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "gpt", "extraEnv": {"OPENAI_API_KEY": KEY}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["session"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn fake_openai_multi_turn_conversation_survives_a_cold_resume_and_the_key_stays_on_the_host()
{
    let fake = FakeOpenai::start().await;
    let server = Server::start().await;
    let session = gpt_session(&server, &fake).await;

    let first = server.message(&session, "hello").await;
    assert_eq!(streamed_text(&first), "You said: hello (2 messages)");
    assert_eq!(assistant_text(&first), "You said: hello (2 messages)");
    let second = server.message(&session, "again").await;
    assert_eq!(assistant_text(&second), "You said: again (4 messages)");
    // The endpoint's token counts are the turns' usage.
    let (_, usage) = server
        .get(&format!("/api/usage/stats?sessionId={session}"))
        .await;
    let stats = &usage["stats"];
    assert_eq!(
        (
            &stats["totalInputTokens"],
            &stats["totalOutputTokens"],
            &stats["totalCacheReadTokens"],
            &stats["totalMessages"]
        ),
        (&json!(60), &json!(14), &json!(6), &json!(2)),
        "{usage}"
    );

    for action in ["stop", "resume"] {
        let (status, body) = server
            .post(&format!("/api/sessions/{session}/{action}"), json!({}))
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    let third = server.message(&session, "third").await;
    assert_eq!(
        assistant_text(&third),
        "You said: third (6 messages)",
        "a cold resume keeps the conversation"
    );

    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (authorization, body) in &seen {
        assert_eq!(
            authorization,
            &format!("Bearer {KEY}"),
            "the proxy adds the key"
        );
        assert_eq!(body["model"], "fake-model");
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "You are terse."})
        );
    }
    assert_eq!(
        seen[2].1["messages"][4]["content"],
        "You said: again (4 messages)"
    );

    // The agent cannot spend the key on the endpoint's other routes.
    let probe = r#"python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/ash/model.sock'); s.sendall(b'POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}'); print(s.recv(200).split(b'\r\n')[0].decode())""#;
    let (_, out) = server
        .post(
            &format!("/api/sessions/{session}/exec"),
            json!({ "command": probe }),
        )
        .await;
    assert_eq!(out["stdout"], "HTTP/1.1 403 Forbidden\n", "{out}");
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        3,
        "nothing reached the endpoint"
    );

    common::assert_key_absent(&server, &session, KEY).await;
}

#[tokio::test]
async fn fake_openai_failures_become_error_events_and_the_session_stays_usable() {
    let fake = FakeOpenai::start().await;
    let server = Server::start().await;
    let session = gpt_session(&server, &fake).await;
    for (prompt, expected) in [
        ("status 401", "401"),
        ("status 429", "rate limited"),
        ("status 500", "500"),
        ("malformed", "not JSON"),
    ] {
        let frames = server.message(&session, prompt).await;
        assert_eq!(
            frames.last().map(|f| f.event.as_str()),
            Some("done"),
            "{prompt}"
        );
        let error = error_of(&frames);
        assert!(error.contains(expected), "{prompt}: {error}");
        let frames = server.message(&session, "fine").await;
        assert!(
            assistant_text(&frames).starts_with("You said: fine"),
            "{prompt}: the next turn works"
        );
    }
    let error = error_of(&server.message(&session, "status 401").await);
    assert!(
        error.contains("OPENAI_API_KEY") && error.contains("fake failure 401"),
        "{error}"
    );
    assert!(!error.contains(KEY), "{error}");

    // An endpoint that is down: the proxy says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let toml = agent_toml(&down);
    server.deploy("down", &[("ash.toml", &toml)]).await;
    let (_, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "down", "extraEnv": {"OPENAI_API_KEY": KEY}}),
        )
        .await;
    let down_session = body["session"]["id"].as_str().unwrap();
    let error = error_of(&server.message(down_session, "hello").await);
    assert!(
        error.contains("502") && error.contains("cannot reach"),
        "{error}"
    );
}

#[tokio::test]
async fn fake_openai_interrupt_stops_a_streaming_turn() {
    let fake = FakeOpenai::start().await;
    let server = Server::start().await;
    let session = gpt_session(&server, &fake).await;
    let seen = server.interrupt_mid_turn(&session, "slow").await;
    assert_eq!(streamed_text(&seen), "The start ");
    assert!(error_of(&seen).contains("interrupted"));
    let after = server.message(&session, "next").await;
    assert_eq!(
        assistant_text(&after),
        "You said: next (2 messages)",
        "an interrupted turn is not part of the conversation"
    );
}

#[tokio::test]
async fn an_openai_agent_without_its_key_is_refused_with_what_to_set() {
    let fake = FakeOpenai::start().await;
    let server = Server::start().await;
    let toml = agent_toml(&fake.base_url);
    server.deploy("gpt", &[("ash.toml", &toml)]).await;
    let (status, body) = server.post("/api/sessions", json!({"agent": "gpt"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("OPENAI_API_KEY"),
        "{body}"
    );
}

const MASTER: &str = "a-master-key-for-tests-0123456789abcdef";

#[tokio::test]
async fn fake_openai_stored_credentials_are_encrypted_used_by_id_and_survive_a_restart() {
    let fake = FakeOpenai::start().await;
    let env = [("ASH_CREDENTIAL_KEY", MASTER)];
    let server = Server::start_with_env(&env).await;
    let (status, body) = server
        .post(
            "/api/credentials",
            json!({"type": "openai", "key": KEY, "label": "team"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["credential"]["type"], "openai");
    assert_eq!(body["credential"]["active"], true);
    let (_, listed) = server.get("/api/credentials").await;
    assert_eq!(listed["credentials"][0]["label"], "team");
    assert!(!listed.to_string().contains(KEY), "{listed}");

    let toml = agent_toml(&fake.base_url);
    server.deploy("gpt", &[("ash.toml", &toml)]).await;
    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "gpt", "credentialId": credential}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        assistant_text(&server.message(&session, "hi").await),
        "You said: hi (2 messages)"
    );
    let (_, listed) = server.get("/api/credentials").await;
    assert!(listed["credentials"][0]["lastUsedAt"].is_string());

    // The key is nowhere in the database file in the clear.
    let (data, key) = server.stop().await;
    for name in ["ash.db", "ash.db-wal"] {
        if let Ok(bytes) = std::fs::read(data.path().join(name)) {
            assert!(!String::from_utf8_lossy(&bytes).contains(KEY), "{name}");
        }
    }
    let mut server = Server::start_in(data, &env).await;
    server.key = key;
    assert_eq!(
        assistant_text(&server.message(&session, "back").await),
        "You said: back (4 messages)",
        "a new sandbox after the restart gets the credential again"
    );
    let seen = fake.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|(auth, _)| auth == &format!("Bearer {KEY}")));

    assert_eq!(
        server
            .delete(&format!("/api/credentials/{credential}"))
            .await
            .0,
        204
    );
    assert_eq!(
        server
            .delete(&format!("/api/credentials/{credential}"))
            .await
            .0,
        404
    );
    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "gpt", "credentialId": credential}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn credentials_reach_other_backends_as_their_variable_and_are_off_without_a_master_key() {
    let server = Server::start_with_env(&[("ASH_CREDENTIAL_KEY", MASTER)]).await;
    let (_, body) = server
        .post(
            "/api/credentials",
            json!({"type": "anthropic", "key": "sk-ant-fake"}),
        )
        .await;
    let credential = body["credential"]["id"].as_str().unwrap();
    let (_, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "hello-agent", "credentialId": credential}),
        )
        .await;
    let session = body["session"]["id"].as_str().unwrap();
    let (_, out) = server
        .post(
            &format!("/api/sessions/{session}/exec"),
            json!({"command": "printenv ANTHROPIC_API_KEY"}),
        )
        .await;
    assert_eq!(out["stdout"], "sk-ant-fake\n");
    for (bad, status) in [
        (json!({"type": "bedrock", "key": "x"}), 422),
        (json!({"type": "openai"}), 422),
        (json!({"type": "openai", "key": ""}), 400),
        (json!({"type": "openai", "key": "a\nb"}), 400),
    ] {
        assert_eq!(
            server.post("/api/credentials", bad.clone()).await.0,
            status,
            "{bad}"
        );
    }

    let off = Server::start().await;
    let (status, body) = off
        .post("/api/credentials", json!({"type": "openai", "key": "k"}))
        .await;
    assert_eq!(status, 503);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("ASH_CREDENTIAL_KEY"));
}
