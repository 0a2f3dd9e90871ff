//! The `ash` CLI against a real server: deploy, sessions, chat.

mod common;

use common::{Server, ASH};
use serde_json::{json, Value};

fn json_out(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "ash failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn deploy_then_session_create_send_list_end() {
    let server = Server::start().await;
    let deployed = json_out(
        &server
            .cli(
                &["deploy", &example("hello-agent"), "-e", "GREETING=hi"],
                None,
            )
            .await,
    );
    assert_eq!(deployed["agent"]["name"], "hello-agent");
    assert_eq!(
        deployed["agent"]["version"], 2,
        "the bundled copy was version 1"
    );
    assert_eq!(deployed["agent"]["env"]["GREETING"], "***");

    let created = json_out(
        &server
            .cli(&["session", "create", "hello-agent"], None)
            .await,
    );
    let id = created["session"]["id"].as_str().unwrap();
    let sent = server
        .cli(&["session", "send", id, "hello from the cli"], None)
        .await;
    assert!(sent.status.success());
    assert_eq!(
        String::from_utf8_lossy(&sent.stdout).trim(),
        "Echo: hello from the cli"
    );

    let listed = json_out(&server.cli(&["session", "list"], None).await);
    assert_eq!(listed["sessions"][0]["id"], id);
    let ended = json_out(&server.cli(&["session", "end", id], None).await);
    assert_eq!(ended["session"]["status"], "ended");
    let refused = server.cli(&["session", "send", id, "too late"], None).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Session is ended"));
}

#[tokio::test]
async fn chat_answers_one_message_or_a_conversation_on_stdin() {
    let server = Server::start().await;
    let once = server
        .cli(&["chat", "hello-agent", "just once", "--end"], None)
        .await;
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&once.stdout).trim(),
        "Echo: just once"
    );

    let talk = server
        .cli(
            &["chat", "hello-agent"],
            Some("first line\nsecond line\n/exit\n"),
        )
        .await;
    assert!(talk.status.success());
    let out = String::from_utf8_lossy(&talk.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Echo: first line",
            "Echo: second line (turn 2, previous: first line)"
        ]
    );
    assert!(String::from_utf8_lossy(&talk.stderr).contains("is kept"));
}

#[tokio::test]
async fn the_cli_finds_the_local_servers_key_in_the_data_dir() {
    let server = Server::start().await;
    let output = tokio::process::Command::new(ASH)
        .args(["agent", "list"])
        .env("ASH_SERVER_URL", &server.url)
        .env("ASH_DATA_DIR", server.data_path())
        .env("XDG_CONFIG_HOME", server.data_path().join("none"))
        .env_remove("ASH_API_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(json_out(&output)["agents"][0]["name"], "hello-agent");
}

#[tokio::test]
async fn the_cli_reads_server_and_key_from_its_config_file() {
    let server = Server::start().await;
    let config = server.data_path().join("cfg");
    std::fs::create_dir_all(config.join("ash")).unwrap();
    let text = format!(
        "server_url = \"{}\"\napi_key = \"{}\"\n",
        server.url, server.key
    );
    std::fs::write(config.join("ash/config.toml"), text).unwrap();
    let output = tokio::process::Command::new(ASH)
        .arg("health")
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("ASH_API_KEY")
        .env_remove("ASH_SERVER_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(json_out(&output)["status"], "ok");
}

#[tokio::test]
async fn deploying_a_folder_without_claude_md_fails_before_any_upload() {
    let server = Server::start().await;
    let empty = tempfile::tempdir().unwrap();
    let output = server
        .cli(&["deploy", empty.path().to_str().unwrap()], None)
        .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no CLAUDE.md"));
}

#[tokio::test]
async fn the_shell_agent_example_deploys_and_answers() {
    let server = Server::start().await;
    json_out(&server.cli(&["deploy", &example("shell-agent")], None).await);
    let reply = server
        .cli(&["chat", "shell-agent", "hi", "--end"], None)
        .await;
    assert!(
        reply.status.success(),
        "{}",
        String::from_utf8_lossy(&reply.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout).trim(),
        "shell says: 1"
    );
}

#[tokio::test]
async fn bench_starts_its_own_server_and_writes_a_dated_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let output = tokio::process::Command::new(ASH)
        .args([
            "bench",
            "--sessions",
            "2",
            "--messages",
            "3",
            "--streams",
            "3",
            "--report",
        ])
        .arg(&report)
        .env_remove("ASH_SERVER_URL")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "# ash bench",
        "**Machine**",
        "session create, fresh sandbox | 2 |",
        "message turn",
        "bridge RSS",
        "open stream | 3 |",
        "resume after pause (warm: sandbox up) | 1 |",
        "session create from the warm pool | 2 |",
        "resume after stop (cold: new sandbox) | 1 |",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn session_pause_resume_stop_and_exec_from_the_cli() {
    let server = Server::start().await;
    let created = json_out(
        &server
            .cli(&["session", "create", "hello-agent"], None)
            .await,
    );
    let id = created["session"]["id"].as_str().unwrap();
    assert_eq!(
        json_out(&server.cli(&["session", "pause", id], None).await)["session"]["status"],
        "paused"
    );
    assert_eq!(
        json_out(&server.cli(&["session", "resume", id], None).await)["session"]["status"],
        "active"
    );
    let exec = server
        .cli(&["session", "exec", id, "echo hi; exit 7"], None)
        .await;
    assert_eq!(exec.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "hi\n");
    assert_eq!(
        json_out(&server.cli(&["session", "stop", id], None).await)["session"]["status"],
        "stopped"
    );
    let forked = json_out(&server.cli(&["session", "fork", id], None).await);
    assert_eq!(forked["session"]["parentSessionId"], id);
}

#[tokio::test]
async fn doctor_says_what_works_and_fails_plainly_without_bwrap() {
    let ok = tokio::process::Command::new(ASH)
        .arg("doctor")
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    for line in [
        "ok       bubblewrap",
        "ok       user namespaces",
        "ok       bridge binary",
        "ok       syscall filter",
        "ok       workspace quotas",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let missing = tokio::process::Command::new(ASH)
        .arg("doctor")
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .env("ASH_BWRAP", "/nonexistent/bwrap")
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    let text = String::from_utf8_lossy(&missing.stdout);
    assert!(
        text.contains("broken   bubblewrap") && text.contains("apt-get install bubblewrap"),
        "{text}"
    );
}

#[tokio::test]
async fn the_python_agent_example_calls_a_tool_answers_and_remembers_across_a_cold_resume() {
    let server = Server::start().await;
    json_out(
        &server
            .cli(&["deploy", &example("python-agent")], None)
            .await,
    );
    let session = server.session("python-agent").await;
    let frames = server.message(&session, "hello").await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    for name in [
        "tool_use",
        "tool_result",
        "text_delta",
        "turn_complete",
        "done",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    assert_eq!(
        common::assistant_text(&frames),
        "Turn 1: you said 'hello'; I see 3 files: CLAUDE.md, agent.py, ash.toml"
    );
    for action in ["stop", "resume"] {
        assert_eq!(
            server
                .post(
                    &format!("/api/sessions/{session}/{action}"),
                    serde_json::json!({})
                )
                .await
                .0,
            200
        );
    }
    let frames = server.message(&session, "again").await;
    assert!(common::assistant_text(&frames).starts_with("Turn 2: you said 'again'"));
}

#[tokio::test]
async fn keys_are_made_listed_and_deleted_and_a_sessions_log_is_shown_from_the_cli() {
    let server = Server::start().await;
    let made = json_out(&server.cli(&["key", "create", "--label", "ci"], None).await);
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    let listed = json_out(&server.cli(&["key", "list"], None).await);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains(key));
    let deleted = server.cli(&["key", "delete", id], None).await;
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let again = server.cli(&["key", "delete", id], None).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("API key not found"));

    let session = server.session("hello-agent").await;
    let logs = json_out(&server.cli(&["session", "logs", &session], None).await);
    assert_eq!(logs["logs"][0]["level"], "system", "{logs}");
    let after = json_out(
        &server
            .cli(&["session", "logs", &session, "--after", "0"], None)
            .await,
    );
    assert!(after["logs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["index"].as_u64() > Some(0)));
}

#[tokio::test]
async fn tools_are_stored_listed_called_and_deleted_from_the_cli() {
    let app = axum::Router::new().route(
        "/add/{a}/{b}",
        axum::routing::get(
            |axum::extract::Path((a, b)): axum::extract::Path<(i64, i64)>| async move {
                axum::Json(json!({ "sum": a + b }))
            },
        ),
    );
    let upstream = common::serve(app).await;
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("add.json");
    let tool = json!({
        "name": "add", "description": "adds two numbers",
        "inputSchema": {"type": "object", "required": ["a", "b"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        "kind": "http",
        "http": {"method": "GET", "url": format!("http://{upstream}/add/{{a}}/{{b}}"), "resultPointer": "/sum"},
    });
    std::fs::write(&file, tool.to_string()).unwrap();
    let stored = json_out(
        &server
            .cli(&["tool", "put", file.to_str().unwrap()], None)
            .await,
    );
    assert_eq!(stored["tool"]["version"], 1, "{stored}");
    let listed = json_out(&server.cli(&["tool", "list"], None).await);
    assert_eq!(listed["tools"][0]["name"], "add");
    let called = json_out(
        &server
            .cli(&["tool", "call", "add", r#"{"a": 2, "b": 40}"#], None)
            .await,
    );
    assert_eq!(called, json!({"result": 42, "isError": false}));
    let refused = server
        .cli(&["tool", "call", "add", r#"{"a": "two"}"#], None)
        .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("input schema"));
    let shown = json_out(&server.cli(&["tool", "show", "add"], None).await);
    assert_eq!(shown["tool"]["description"], "adds two numbers");
    assert!(server
        .cli(&["tool", "delete", "add"], None)
        .await
        .status
        .success());
    let gone = server.cli(&["tool", "show", "add"], None).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("Tool not found"));
}
