//! The REST + SSE path end to end: the real `ash` binary, real bwrap sandboxes, real SQLite.

mod common;

use common::{assistant_text, events, streamed_text, Server};
use serde_json::{json, Value};

/// The `command`-backend example agent, deployed from `examples/shell-agent`.
const SHELL_AGENT: &str = include_str!("../../../examples/shell-agent/agent.sh");

#[tokio::test]
async fn first_start_makes_a_key_shown_once_kept_0600_and_stored_only_as_a_hash() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start().await;
    let file = server.data_path().join("initial-api-key");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        server.stdout.iter().any(|l| l.trim() == server.key),
        "key not printed: {:?}",
        server.stdout
    );
    let db = std::fs::read(server.data_path().join("ash.db")).unwrap();
    let wal = std::fs::read(server.data_path().join("ash.db-wal")).unwrap_or_default();
    let contains = |hay: &[u8]| {
        hay.windows(server.key.len())
            .any(|w| w == server.key.as_bytes())
    };
    assert!(
        !contains(&db) && !contains(&wal),
        "the plain key is in the database"
    );
    let again = server.restart().await;
    assert!(
        !again
            .stdout
            .iter()
            .any(|l| l.contains("generated an API key")),
        "a second key was minted"
    );
    assert_eq!(again.get("/api/agents").await.0, 200);
}

#[tokio::test]
async fn api_key_from_the_environment_is_accepted_as_is_and_none_is_generated() {
    let server = Server::start_with_env(&[("ASH_API_KEY", "my-own-key-123")]).await;
    assert!(!server.data_path().join("initial-api-key").exists());
    assert_eq!(server.get("/api/agents").await.0, 200);
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401_and_health_stays_public() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let none = http
        .get(format!("{}/api/agents", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap(),
        json!({"error": "Missing Authorization header", "statusCode": 401})
    );
    let wrong = http
        .get(format!("{}/api/agents", server.url))
        .bearer_auth("ash_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "Invalid API key"
    );
    let basic = http
        .get(format!("{}/api/agents", server.url))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert!(basic.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("Bearer"));
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 401);
    let health: Value = http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["pool"]["maxCapacity"].is_number());
}

#[tokio::test]
async fn the_example_agent_is_deployed_on_first_start() {
    let server = Server::start().await;
    let (status, body) = server.get("/api/agents/hello-agent").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["version"], 1);
}

#[tokio::test]
async fn a_message_streams_deltas_then_the_message_then_done_every_frame_with_an_id() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "hello streaming world").await;
    let names = events(&frames);
    assert_eq!(names.first(), Some(&"session_start"));
    assert_eq!(names.last(), Some(&"done"));
    assert!(
        names.iter().filter(|n| **n == "text_delta").count() >= 3,
        "{names:?}"
    );
    assert!(names.contains(&"turn_complete"));
    assert_eq!(streamed_text(&frames), "Echo: hello streaming world");
    assert_eq!(assistant_text(&frames), "Echo: hello streaming world");
    let ids: Vec<u64> = frames
        .iter()
        .map(|f| f.id.as_deref().expect("frame without id").parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=frames.len() as u64).collect::<Vec<_>>());
    let done: Value = serde_json::from_str(&frames.last().unwrap().data).unwrap();
    assert_eq!(done["sessionId"], session);
}

#[tokio::test]
async fn messages_are_stored_in_order_and_paged() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "one").await;
    server.message(&session, "two").await;
    let (status, body) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert_eq!(status, 200);
    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "assistant",
            "user",
            "assistant",
            "assistant"
        ]
    );
    let first: Value = serde_json::from_str(messages[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(first, json!({"type": "user", "content": "one"}));
    let (_, page) = server
        .get(&format!("/api/sessions/{session}/messages?after=3&limit=2"))
        .await;
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
}

#[tokio::test]
async fn managed_deploy_writes_files_and_a_redeploy_replaces_them() {
    let server = Server::start().await;
    let (status, body) = server
        .deploy(
            "shell",
            &[
                ("CLAUDE.md", "# shell"),
                ("ash.toml", common::COMMAND_TOML),
                ("agent.sh", SHELL_AGENT),
                ("old.txt", "x"),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent"]["version"], 1);
    let dir = std::path::PathBuf::from(body["agent"]["path"].as_str().unwrap());
    assert!(dir.join("old.txt").exists());
    let (_, body) = server
        .deploy(
            "shell",
            &[
                ("CLAUDE.md", "# shell"),
                ("ash.toml", common::COMMAND_TOML),
                ("agent.sh", SHELL_AGENT),
            ],
        )
        .await;
    assert_eq!(body["agent"]["version"], 2);
    assert!(
        !dir.join("old.txt").exists(),
        "a redeploy left the old version's file"
    );
}

#[tokio::test]
async fn the_command_backend_runs_a_program_from_the_agent_folder() {
    let server = Server::start().await;
    let session = server.command_session("shell", SHELL_AGENT).await;
    assert_eq!(
        assistant_text(&server.message(&session, "hi").await),
        "shell says: 1"
    );
    let second = server.message(&session, "again").await;
    assert_eq!(assistant_text(&second), "shell says: 2");
    assert_eq!(events(&second).last(), Some(&"done"));
}

#[tokio::test]
async fn path_mode_deploys_a_folder_on_the_server_and_needs_claude_md() {
    let folder = tempfile::tempdir().unwrap();
    let roots = folder.path().parent().unwrap().to_str().unwrap().to_owned();
    let server = Server::start_with_env(&[("ASH_DEPLOY_ROOTS", &roots)]).await;
    let (status, body) = server
        .post(
            "/api/agents",
            json!({"name": "local", "path": folder.path()}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Agent directory must contain CLAUDE.md"))
    );
    std::fs::write(folder.path().join("CLAUDE.md"), "# local").unwrap();
    let (status, body) = server
        .post(
            "/api/agents",
            json!({"name": "local", "path": folder.path()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = server.session("local").await;
    assert_eq!(
        assistant_text(&server.message(&session, "x").await),
        "Echo: x"
    );
}

#[tokio::test]
async fn sessions_are_listed_shown_and_ended() {
    let server = Server::start().await;
    let a = server.session("hello-agent").await;
    let b = server.session("hello-agent").await;
    let (_, list) = server.get("/api/sessions?agent=hello-agent").await;
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    let (status, ended) = server
        .call(reqwest::Method::DELETE, &format!("/api/sessions/{a}"), None)
        .await;
    assert_eq!(
        (status, ended["session"]["status"].as_str()),
        (200, Some("ended"))
    );
    assert!(
        !server.workspace(&a).exists(),
        "an ended session's workspace was kept"
    );
    let (_, shown) = server.get(&format!("/api/sessions/{b}")).await;
    assert_eq!(shown["session"]["status"], "active");
    assert_eq!(shown["session"]["agentName"], "hello-agent");
}

#[tokio::test]
async fn a_restarted_server_lists_its_sessions_and_they_carry_on() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "before").await;
    std::fs::write(server.workspace(&session).join("note.txt"), "kept").unwrap();
    let server = server.restart().await;
    let (_, list) = server.get("/api/sessions").await;
    assert_eq!(list["sessions"][0]["id"], session);
    let frames = server.message(&session, "after").await;
    assert_eq!(
        assistant_text(&frames),
        "Echo: after (turn 2, previous: before)",
        "the conversation survives the restart"
    );
    assert_eq!(
        std::fs::read_to_string(server.workspace(&session).join("note.txt")).unwrap(),
        "kept"
    );
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert_eq!(messages["messages"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn deleting_an_agent_ends_its_sessions() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    let (status, body) = server
        .call(reqwest::Method::DELETE, "/api/agents/hello-agent", None)
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(server.get("/api/agents/hello-agent").await.0, 404);
    let (_, shown) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(shown["session"]["status"], "ended");
}

#[tokio::test]
async fn metrics_count_turns_and_sandbox_starts() {
    let server = Server::start().await;
    let session = server.session("hello-agent").await;
    server.message(&session, "m").await;
    let text = server.metrics().await;
    assert!(text.contains("ash_up 1"), "{text}");
    assert!(text.contains("ash_turns_total{outcome=\"ok\"} 1"), "{text}");
    assert!(text.contains("ash_sandbox_start_seconds_count 1"), "{text}");
    assert!(text.contains("ash_active_sandboxes 1"), "{text}");
}

/// The status of `GET /api/agents` with `key`.
async fn with_key(server: &Server, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/agents", server.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn api_keys_are_listed_by_prefix_shown_once_when_made_and_refused_once_deleted() {
    let server = Server::start().await;
    let (status, listed) = server.get("/api/api-keys").await;
    assert_eq!(status, 200, "{listed}");
    let first = &listed["keys"][0];
    assert_eq!(first["label"], "auto-generated");
    assert_eq!(first["keyPrefix"], format!("{}••••", &server.key[..8]));
    assert!(!listed.to_string().contains(&server.key[..12]), "{listed}");

    let (status, made) = server.post("/api/api-keys", json!({"label": "ci"})).await;
    assert_eq!(status, 201, "{made}");
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    assert!(key.starts_with("ash_") && key.len() == 47, "{made}");
    // Control: the new key works, so its refusal below is the delete's doing.
    assert_eq!(with_key(&server, key).await, 200);
    let (_, listed) = server.get("/api/api-keys").await;
    let labels: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["auto-generated", "ci"]);
    assert!(!listed.to_string().contains(key), "a listing showed a key");

    assert_eq!(server.delete(&format!("/api/api-keys/{id}")).await.0, 204);
    assert_eq!(
        with_key(&server, key).await,
        401,
        "a deleted key still works"
    );
    assert_eq!(with_key(&server, &server.key).await, 200);
    let (status, body) = server.delete(&format!("/api/api-keys/{id}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("API key not found"))
    );

    // Bad labels get a clear 4xx and make no key.
    for (label, want) in [
        (json!(""), 400),
        (json!("x".repeat(256)), 400),
        (json!("a\nb"), 400),
        (json!(7), 422),
    ] {
        let (status, body) = server
            .post("/api/api-keys", json!({ "label": label }))
            .await;
        assert_eq!(status, want, "{label}: {body}");
    }
    assert_eq!(
        server.get("/api/api-keys").await.1["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_key_in_ash_api_key_is_listed_but_not_deleted_through_the_api() {
    let server =
        Server::start_with_env(&[("ASH_API_KEY", "the-operators-own-key-0123456789")]).await;
    let (_, listed) = server.get("/api/api-keys").await;
    assert_eq!(listed["keys"][0]["id"], "env");
    assert_eq!(listed["keys"][0]["keyPrefix"], "the-oper••••");
    let (status, body) = server.delete("/api/api-keys/env").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(with_key(&server, &server.key).await, 200);
}

/// An agent that keeps the last query it got in `last-query.json` and ends its turn.
const QUERY_KEEPER: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '%s\n' "$line" > last-query.json
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

/// Sends `body` as a message and returns the query the agent got for it.
async fn query_for(server: &Server, session: &str, body: Value) -> Value {
    let mut stream = server.open_stream(session, body).await;
    let frames = Server::read_until(&mut stream, |f| f.event == "done").await;
    assert!(frames.iter().all(|f| f.event != "error"), "{frames:?}");
    let out = server.exec(session, "cat last-query.json").await;
    serde_json::from_str(out["stdout"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_sessions_config_reaches_every_turn_under_the_messages_own_options() {
    let server = Server::start().await;
    let files = [
        ("agent.sh", QUERY_KEEPER),
        ("ash.toml", common::COMMAND_TOML),
    ];
    assert_eq!(server.deploy("keeper", &files).await.0, 201);
    let (status, created) = server
        .post(
            "/api/sessions",
            json!({"agent": "keeper", "model": "m-create", "allowedTools": ["Read"], "permissionMode": "default"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["session"]["config"],
        json!({"model": "m-create", "allowedTools": ["Read"]})
    );
    let query = query_for(&server, &id, json!({"content": "one"})).await;
    assert_eq!(
        (&query["model"], &query["allowedTools"]),
        (&json!("m-create"), &json!(["Read"]))
    );

    let (status, patched) = server
        .call(
            reqwest::Method::PATCH,
            &format!("/api/sessions/{id}/config"),
            Some(json!({"model": "m-patched", "betas": ["b-1"], "unknownOption": 1})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["session"]["config"],
        json!({"model": "m-patched", "allowedTools": ["Read"], "betas": ["b-1"]})
    );
    // A message's own option wins for its turn only.
    let query = query_for(
        &server,
        &id,
        json!({"content": "two", "model": "m-message"}),
    )
    .await;
    assert_eq!(
        (&query["model"], &query["betas"]),
        (&json!("m-message"), &json!(["b-1"]))
    );
    let query = query_for(&server, &id, json!({"content": "three"})).await;
    assert_eq!(query["model"], "m-patched");

    // Bad values get a clear 4xx and change nothing.
    let patch = |body: Value| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/sessions/{id}/config"),
                    Some(body),
                )
                .await
        }
    };
    for (body, want) in [
        (json!({"model": "m".repeat(101)}), 400),
        (json!({"allowedTools": []}), 400),
        (
            json!({"allowedTools": ["--dangerously-skip-permissions"]}),
            400,
        ),
        (json!({"initialAgent": "a\nb"}), 400),
        (json!({"subagents": {"x": "y".repeat(70_000)}}), 400),
        (json!({"model": 5}), 422),
        (json!({"betas": "b-2"}), 422),
    ] {
        let (status, reply) = patch(body.clone()).await;
        assert_eq!(status, want, "{body}: {reply}");
    }
    let (_, shown) = server.get(&format!("/api/sessions/{id}")).await;
    assert_eq!(shown["session"]["config"], patched["session"]["config"]);
    let (status, _) = server
        .call(
            reqwest::Method::PATCH,
            "/api/sessions/00000000-0000-4000-8000-000000000000/config",
            Some(json!({"model": "m"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .post("/api/sessions", json!({"agent": "keeper", "betas": []}))
        .await;
    assert_eq!(status, 400, "{body}");

    // A fork keeps it.
    let (status, fork) = server
        .post(&format!("/api/sessions/{id}/fork"), json!({}))
        .await;
    assert_eq!(status, 201, "{fork}");
    assert_eq!(fork["session"]["config"], patched["session"]["config"]);
}

/// An agent that says on stderr what it got, 3,000 lines of it for `flood`.
const CHATTY_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  case "$line" in
    *'"prompt":"flood"'*) i=0; while [ $i -lt 3000 ]; do echo "flood $i" >&2; i=$((i+1)); done ;;
    *) echo "working on turn $id" >&2 ;;
  esac
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

/// Polls the session's log until a line says `text`; returns the whole log.
async fn logged(server: &Server, session: &str, text: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = server.get(&format!("/api/sessions/{session}/logs")).await;
        assert_eq!(
            (status, &body["source"]),
            (200, &json!("sandbox")),
            "{body}"
        );
        let lines = body["logs"].as_array().unwrap().clone();
        if lines
            .iter()
            .any(|l| l["text"].as_str().unwrap().contains(text))
        {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line says {text:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sessions_log_holds_what_its_sandbox_printed_in_a_bounded_ring() {
    let server = Server::start().await;
    let files = [
        ("agent.sh", CHATTY_AGENT),
        ("ash.toml", common::COMMAND_TOML),
    ];
    assert_eq!(server.deploy("chatty", &files).await.0, 201);
    let session = server.session("chatty").await;
    server.message(&session, "hello").await;
    let lines = logged(&server, &session, "working on turn").await;
    assert_eq!(lines[0]["level"], "system", "{lines:?}");
    let said = lines
        .iter()
        .find(|l| l["text"].as_str().unwrap().contains("working on"))
        .unwrap();
    assert_eq!(said["level"], "stderr");
    // `after` gives only what came later.
    let last = lines.last().unwrap()["index"].as_i64().unwrap();
    let (_, later) = server
        .get(&format!("/api/sessions/{session}/logs?after={last}"))
        .await;
    assert_eq!(later["logs"], json!([]));
    server.message(&session, "again").await;
    let lines = logged(&server, &session, "working on turn").await;
    let (_, later) = server
        .get(&format!("/api/sessions/{session}/logs?after={last}"))
        .await;
    assert!(!later["logs"].as_array().unwrap().is_empty(), "{later}");
    assert!(lines.len() > 2);

    // A flood keeps only the newest lines, and the server keeps serving.
    server.message(&session, "flood").await;
    let lines = logged(&server, &session, "flood 2999").await;
    assert!(lines.len() <= 1000, "{} lines kept", lines.len());
    assert!(!lines.iter().any(|l| l["text"] == "flood 0"));
    assert_eq!(server.get("/health").await.0, 200);

    // Bad input gets a clear 4xx; a session without a sandbox has an empty log.
    let (status, _) = server
        .get(&format!("/api/sessions/{session}/logs?after=-2"))
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .get("/api/sessions/00000000-0000-4000-8000-000000000000/logs")
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        server
            .post(&format!("/api/sessions/{session}/stop"), json!({}))
            .await
            .0,
        200
    );
    let (_, stopped) = server.get(&format!("/api/sessions/{session}/logs")).await;
    assert_eq!(stopped["logs"], json!([]));
}

#[tokio::test]
async fn the_example_agent_can_be_turned_off_and_a_deleted_agents_session_is_ended_not_gone() {
    // Its control is the_example_agent_is_deployed_on_first_start.
    let by_env = Server::start_with_env(&[("ASH_EXAMPLE_AGENT", "false")]).await;
    assert_eq!(by_env.get("/api/agents").await.1["agents"], json!([]));
    let by_file = common::start_with("example_agent = false\n").await;
    assert_eq!(by_file.get("/api/agents").await.1["agents"], json!([]));
    drop(by_file);
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("ASH_DATA_DIR", data.path().display().to_string()),
        ("ASH_EXAMPLE_AGENT", "maybe".to_owned()),
    ];
    let (ok, said) = common::refused(&["start", "--port", "0"], &env).await;
    assert!(!ok && said.contains("ASH_EXAMPLE_AGENT"), "{said}");

    // A session of a deleted agent stays readable, ended.
    let server = by_env;
    let files = [("CLAUDE.md", "# gone\n")];
    assert_eq!(server.deploy("short-lived", &files).await.0, 201);
    let session = server.session("short-lived").await;
    assert_eq!(server.delete("/api/agents/short-lived").await.0, 200);
    let (status, shown) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(
        (status, &shown["session"]["status"]),
        (200, &json!("ended"))
    );
    assert_eq!(
        server
            .get(&format!("/api/sessions/{session}/messages"))
            .await
            .0,
        200
    );
    let (status, body) = server
        .post(&format!("/api/sessions/{session}/resume"), json!({}))
        .await;
    assert_eq!(status, 410, "{body}");
    let (status, body) = server
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "hi"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Session is ended"))
    );
}

#[tokio::test]
async fn the_api_explorer_is_served_from_the_binary_and_calls_nothing_but_this_server() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.url)).send();
    // Public, like the document it shows.
    let page = get("/docs").await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    // Every asset the page loads is this server's, and is there.
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            assets.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert_eq!(assets.len(), 3, "{html}");
    for asset in &assets {
        assert!(asset.starts_with("/docs/"), "{asset} is not this server's");
        let got = get(asset).await.unwrap();
        assert_eq!(got.status(), 200, "{asset}");
        let kind = got.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            kind.starts_with("text/javascript") || kind.starts_with("text/css"),
            "{asset}: {kind}"
        );
    }
    let start = get("/docs/explorer.js").await.unwrap();
    let start = start.text().await.unwrap();
    assert!(
        start.contains("url: \"/docs/json\"") && start.contains("validatorUrl: null"),
        "{start}"
    );
    assert!(
        !html.contains("://") && !start.contains("://"),
        "a remote address in the page"
    );
    // What it shows is this server's document, with its key scheme for "Authorize".
    let document: Value = get("/docs/json").await.unwrap().json().await.unwrap();
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    assert!(document["paths"]["/api/api-keys"].is_object());
}

#[tokio::test]
async fn the_api_explorer_renders_and_tries_a_call_with_the_key_in_chromium() {
    let server = Server::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/docs.mjs");
    let seen = common::run_client("node", script, &server).await;
    let tags = seen["tags"].as_array().unwrap();
    assert!(
        tags.contains(&json!("api-keys")) && tags.contains(&json!("sessions")),
        "{seen}"
    );
    // Control: without the key the same call is refused, so the 200 is the key's doing.
    assert_eq!(
        (&seen["withoutKey"], &seen["withKey"]),
        (&json!(401), &json!(200))
    );
    assert_eq!(
        (&seen["outside"], &seen["failed"]),
        (&json!([]), &json!([])),
        "{seen}"
    );
}
