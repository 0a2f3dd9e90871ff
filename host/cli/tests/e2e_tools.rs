//! The tool registry and the invoker end to end: `http` tools against the tests' own upstream
//! on loopback (a real HTTP server), called through REST and through `/mcp` by the official
//! MCP Python SDK, against the real `ash` binary.

mod common;

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use common::Server;
use serde_json::{json, Value};

const MASTER: &str = "a-master-key-for-tests-0123456789abcdef";
const SECRET: &str = "upstream-secret-0123456789";

/// The upstream the tools call: answers by path; `/slow` never answers, `/huge` streams 100 MB.
async fn upstream() -> String {
    let app = axum::Router::new()
        .route(
            "/greet/{name}",
            axum::routing::get(|Path(name): Path<String>, headers: HeaderMap| async move {
                let signed = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {SECRET}"));
                axum::Json(json!({"greeting": format!("Hello, {name}"), "signed": signed}))
            }),
        )
        .route(
            "/echo-auth",
            axum::routing::get(|headers: HeaderMap| async move {
                format!("you sent {:?}", headers.get("authorization"))
            }),
        )
        .route("/slow", axum::routing::get(std::future::pending::<String>))
        .route(
            "/huge",
            axum::routing::get(|| async {
                let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
                let body = futures_util::stream::iter(
                    (0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                axum::body::Body::from_stream(body)
            }),
        )
        .route("/garbage", axum::routing::get(|| async { "<<not json>>" }))
        .route(
            "/echo-body",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                axum::Json(json!({ "received": body }))
            }),
        )
        .route(
            "/fail",
            axum::routing::get(|| async {
                (axum::http::StatusCode::BAD_GATEWAY, "upstream broke").into_response()
            }),
        )
        .route(
            "/redirect",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("http://example.com/elsewhere")
            }),
        );
    let addr = common::serve(app).await;
    format!("http://{addr}")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(name: &str, url: &str, extra: Value) -> Value {
    let mut tool = json!({
        "name": name,
        "description": format!("the {name} tool"),
        "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "kind": "http",
        "http": {"method": "GET", "url": url},
    });
    for (key, value) in extra.as_object().unwrap() {
        match (key.as_str(), value) {
            ("http", Value::Object(fields)) => {
                tool["http"].as_object_mut().unwrap().extend(fields.clone())
            }
            _ => {
                tool[key] = value.clone();
            }
        }
    }
    tool
}

async fn call(server: &Server, name: &str, arguments: Value) -> (u16, Value) {
    server
        .post(
            &format!("/api/tools/{name}/call"),
            json!({ "arguments": arguments }),
        )
        .await
}

/// A server with a credential and the tools of the upstream at `base`.
async fn with_tools(base: &str) -> Server {
    let server = Server::start_with_env(&[("ASH_CREDENTIAL_KEY", MASTER)]).await;
    let (status, body) = server
        .post(
            "/api/credentials",
            json!({"type": "openai", "key": SECRET, "label": "upstream"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let credential = body["credential"]["id"].as_str().unwrap().to_owned();
    let signed = json!({"credential": {"id": credential}});
    let down = format!("http://127.0.0.1:{}/greet/x", closed_port());
    for tool in [
        tool(
            "greet",
            &format!("{base}/greet/{{name}}"),
            json!({"inputSchema": {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 40}}},
                "http": {"credential": signed["credential"]}}),
        ),
        tool(
            "whoami",
            &format!("{base}/echo-auth"),
            json!({"http": signed}),
        ),
        tool("slow", &format!("{base}/slow"), json!({"timeoutMs": 200})),
        tool("huge", &format!("{base}/huge"), json!({})),
        tool("garbage", &format!("{base}/garbage"), json!({})),
        tool(
            "garbage-pointer",
            &format!("{base}/garbage"),
            json!({"http": {"resultPointer": "/a"}}),
        ),
        tool("fail", &format!("{base}/fail"), json!({})),
        tool("redirect", &format!("{base}/redirect"), json!({})),
        tool("down", &down, json!({})),
    ] {
        let (status, body) = server.post("/api/tools", tool).await;
        assert_eq!(status, 201, "{body}");
    }
    server
}

#[tokio::test]
async fn http_tools_are_called_with_their_credential_added_on_the_host_and_their_failures_are_results(
) {
    let base = upstream().await;
    let server = with_tools(&base).await;
    assert_eq!(
        call(&server, "greet", json!({"name": "Ada"})).await,
        (
            200,
            json!({"result": {"greeting": "Hello, Ada", "signed": true}, "isError": false})
        )
    );
    let (_, whoami) = call(&server, "whoami", json!({})).await;
    assert!(
        whoami["result"]
            .as_str()
            .unwrap()
            .contains("Bearer [credential]"),
        "the key is masked in what comes back: {whoami}"
    );
    // Control: the upstream did get the key (it answered `signed` above), and echoes it.
    assert!(!whoami.to_string().contains(SECRET), "{whoami}");

    for (name, said) in [
        ("slow", "timeout of 200 ms"),
        ("huge", "maxResultBytes"),
        ("garbage-pointer", "not JSON"),
        ("fail", "502"),
        ("redirect", "307"),
        ("down", "cannot connect"),
    ] {
        let (status, reply) = call(&server, name, json!({})).await;
        assert_eq!(
            (status, &reply["isError"]),
            (200, &json!(true)),
            "{name}: {reply}"
        );
        assert!(
            reply["result"].as_str().unwrap().contains(said),
            "{name}: {reply}"
        );
    }
    assert_eq!(
        call(&server, "garbage", json!({})).await.1,
        json!({"result": "<<not json>>", "isError": false})
    );

    // Refusals before the tool runs.
    let (status, reply) = call(&server, "greet", json!({"name": 7})).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("at /name"),
        "{reply}"
    );
    let (status, reply) = call(&server, "greet", json!({})).await;
    assert_eq!(status, 400, "{reply}");
    let (status, _) = call(&server, "nothing-here", json!({})).await;
    assert_eq!(status, 404);

    let metrics = server.metrics().await;
    for series in [
        "ash_tool_calls_total{outcome=\"ok\",tool=\"greet\"} 1",
        "ash_tool_calls_total{outcome=\"invalid\",tool=\"greet\"} 2",
        "ash_tool_calls_total{outcome=\"timeout\",tool=\"slow\"} 1",
        "ash_tool_calls_total{outcome=\"error\",tool=\"huge\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let (_, listed) = server.get("/api/tools").await;
    assert_eq!(listed["tools"].as_array().unwrap().len(), 9);
    assert!(!listed.to_string().contains(SECRET));
    assert_eq!(
        server.get("/health").await.0,
        200,
        "the server kept serving"
    );
}

#[tokio::test]
async fn bad_tools_are_refused_when_stored_and_a_change_is_a_new_version() {
    let base = upstream().await;
    let server = Server::start().await;
    let good = tool("t", &format!("{base}/greet/{{name}}"), json!({}));
    let (status, made) = server.post("/api/tools", good.clone()).await;
    assert_eq!(
        (status, &made["tool"]["version"]),
        (201, &json!(1)),
        "{made}"
    );
    assert_eq!(server.post("/api/tools", good.clone()).await.0, 409);
    let mut changed = good.clone();
    changed["description"] = json!("changed");
    let (status, replaced) = server
        .call(reqwest::Method::PUT, "/api/tools/t", Some(changed))
        .await;
    assert_eq!(
        (
            status,
            &replaced["tool"]["version"],
            &replaced["tool"]["createdAt"]
        ),
        (200, &json!(2), &made["tool"]["createdAt"])
    );
    for (bad, want) in [
        (tool("bad name", &format!("{base}/x"), json!({})), 400),
        (tool("t2", "http://{host}/x", json!({})), 400),
        (tool("t2", "file:///etc/passwd", json!({})), 400),
        (
            tool(
                "t2",
                &format!("{base}/x"),
                json!({"inputSchema": {"type": 5}}),
            ),
            400,
        ),
        (
            tool("t2", &format!("{base}/x"), json!({"inputSchema": []})),
            400,
        ),
        (
            tool("t2", &format!("{base}/x"), json!({"timeoutMs": 0})),
            400,
        ),
        (
            tool(
                "t2",
                &format!("{base}/x"),
                json!({"http": {"method": "TRACE"}}),
            ),
            400,
        ),
        (
            tool("t2", &format!("{base}/x"), json!({"kind": "teleport"})),
            422,
        ),
        (json!({"name": "t2"}), 422),
    ] {
        let (status, reply) = server.post("/api/tools", bad.clone()).await;
        assert_eq!(status, want, "{bad}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    let (status, _) = server
        .call(reqwest::Method::PUT, "/api/tools/other", Some(good))
        .await;
    assert_eq!(status, 400, "the body names another tool");
    assert_eq!(server.delete("/api/tools/t").await.0, 200);
    assert_eq!(server.delete("/api/tools/t").await.0, 404);
    assert_eq!(server.get("/api/tools").await.1, json!({"tools": []}));
}

#[tokio::test]
async fn the_official_mcp_python_sdk_lists_and_calls_the_registry_tools_over_streamable_http() {
    let base = upstream().await;
    let server = with_tools(&base).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let mut client = tokio::process::Command::new(common::MCP_PYTHON)
        .arg(script)
        .env("ASH_URL", &server.url)
        .env("ASH_KEY", &server.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs: scripts/install-mcp-clients.sh installs the SDK");
    let mut stdin = client.stdin.take().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(client.stdout.take().unwrap()));
    let seen = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the client says what it saw");
            let said: Value = serde_json::from_str(&line).unwrap();
            if said["ask"] != "change" {
                return said;
            }
            // The registry changes while the client is connected: it is told.
            let added = tool("added-later", &format!("{base}/garbage"), json!({}));
            assert_eq!(server.post("/api/tools", added).await.0, 201);
            tokio::io::AsyncWriteExt::write_all(&mut stdin, b"ok\n")
                .await
                .unwrap();
        }
    })
    .await
    .expect("the client finished");
    assert!(client.wait().await.unwrap().success(), "{seen}");
    assert_eq!(seen["server"], "ash", "{seen}");
    assert_eq!(
        seen["tools"]["greet"]["required"],
        json!(["name"]),
        "the tool's schema as stored: {seen}"
    );
    assert_eq!(
        seen["ok"],
        json!({"isError": false, "text": "{\"greeting\":\"Hello, Ada\",\"signed\":true}"})
    );
    assert_eq!(seen["down"]["isError"], true, "{seen}");
    // JSON-RPC's invalid params: bad arguments, and a tool that does not exist.
    assert_eq!(seen["badArguments"]["code"], -32602, "{seen}");
    assert!(seen["badArguments"]["message"]
        .as_str()
        .unwrap()
        .contains("/name"));
    assert_eq!(seen["unknown"]["code"], -32602, "{seen}");
    assert!(
        seen["afterChange"].to_string().contains("added-later"),
        "told of the change, the client listed the new tool: {seen}"
    );

    // Without the key, /mcp is refused like any route.
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn the_official_mcp_typescript_sdk_calls_the_registry_tools_and_reconnects() {
    let base = upstream().await;
    let server = with_tools(&base).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.mjs");
    let seen = common::run_client("node", script, &server).await;
    assert_eq!(seen["server"], "ash", "{seen}");
    assert!(seen["tools"].to_string().contains("greet"), "{seen}");
    assert_eq!(
        seen["ok"]["text"], "{\"greeting\":\"Hello, Grace\",\"signed\":true}",
        "{seen}"
    );
    assert_eq!(seen["badArguments"]["code"], -32602, "{seen}");
    assert!(seen["sessionId"].is_string() && seen["secondSessionId"].is_string());
    assert_ne!(seen["sessionId"], seen["secondSessionId"], "a new session");
    assert!(
        seen["again"].as_str().unwrap().contains("Hello, Lin"),
        "{seen}"
    );
}

#[tokio::test]
async fn agents_and_sessions_are_mcp_tools_and_an_agents_reply_streams_as_progress() {
    let server = Server::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/agents.py");
    let seen = common::run_client(common::MCP_PYTHON, script, &server).await;
    for name in ["agent.hello-agent", "ash.sessions.list", "ash.session.end"] {
        assert!(seen["tools"].to_string().contains(name), "{name}: {seen}");
    }
    assert_eq!(seen["first"]["reply"], "Echo: hi there", "{seen}");
    let streamed: String = seen["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        streamed, "Echo: hi there",
        "the reply streamed as progress, piece by piece: {seen}"
    );
    assert!(seen["progress"].as_array().unwrap().len() >= 2, "{seen}");
    let session = seen["first"]["sessionId"].as_str().unwrap();
    assert_eq!(
        seen["second"],
        json!({"sessionId": session, "reply": "Echo: again (turn 2, previous: hi there)", "error": null})
    );
    assert_eq!(seen["sessions"], json!([session]));
    assert_eq!(seen["ended"], "ended");
    let (_, shown) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(shown["session"]["status"], "ended");
    for refusal in ["noAgent", "noMessage", "noSession"] {
        assert_eq!(seen[refusal]["code"], -32602, "{refusal}: {seen}");
    }
}

#[tokio::test]
async fn ash_mcp_bridges_a_desktop_clients_stdio_to_the_server() {
    let base = upstream().await;
    let server = Server::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/stdio.py");
    let mut client = tokio::process::Command::new(common::MCP_PYTHON)
        .arg(script)
        .env("ASH_BIN", common::ASH)
        .env("ASH_URL", &server.url)
        .env("ASH_KEY", &server.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs: scripts/install-mcp-clients.sh installs the SDK");
    let mut stdin = client.stdin.take().unwrap();
    let mut asks =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(client.stderr.take().unwrap()));
    let stdout = client.stdout.take().unwrap();
    let said = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = asks.next_line().await.unwrap() {
            if line.contains("\"ask\"") {
                let added = tool("added-over-stdio", &format!("{base}/garbage"), json!({}));
                assert_eq!(server.post("/api/tools", added).await.0, 201);
                tokio::io::AsyncWriteExt::write_all(&mut stdin, b"ok\n")
                    .await
                    .unwrap();
                break;
            }
            eprintln!("{line}");
        }
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stdout), &mut out)
            .await
            .unwrap();
        out
    })
    .await
    .expect("the client finished");
    assert!(client.wait().await.unwrap().success(), "{said}");
    let seen: Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(seen["server"], "ash", "{seen}");
    assert!(
        seen["tools"].to_string().contains("agent.hello-agent"),
        "{seen}"
    );
    assert_eq!(seen["reply"], "Echo: over stdio", "{seen}");
    assert!(seen["progress"].as_u64().unwrap() >= 2, "{seen}");
    assert!(
        seen["afterChange"].to_string().contains("added-over-stdio"),
        "{seen}"
    );
}

#[tokio::test]
async fn ash_mcp_answers_garbage_and_refusals_as_json_rpc_errors_on_stdout() {
    let server = Server::start().await;
    let bridge = |key: &str| {
        tokio::process::Command::new(common::ASH)
            .args(["--server", &server.url, "mcp"])
            .env("ASH_API_KEY", key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let exchange = |mut child: tokio::process::Child, input: String| async move {
        let mut stdin = child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
            .await
            .unwrap();
        drop(stdin);
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("the bridge ends with its stdin")
                .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("only JSON-RPC on stdout"))
            .collect::<Vec<_>>()
    };
    let input = format!("this is not json\n{initialize}\n");
    let replies = exchange(bridge(&server.key), input).await;
    assert_eq!(replies[0]["error"]["code"], -32700, "{replies:?}");
    assert_eq!(
        replies[1]["result"]["serverInfo"]["name"], "ash",
        "{replies:?}"
    );
    // Control: with a wrong key the same initialize is refused, as a JSON-RPC error.
    let replies = exchange(bridge("ash_wrong"), format!("{initialize}\n")).await;
    assert_eq!(replies[0]["id"], 1, "{replies:?}");
    assert!(
        replies[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{replies:?}"
    );
}

#[tokio::test]
async fn an_agent_tool_is_one_turn_in_a_new_or_a_named_session() {
    let server = Server::start().await;
    let asker = json!({
        "name": "ask-echo", "description": "asks the echo agent",
        "inputSchema": {"type": "object", "required": ["topic"], "properties": {
            "topic": {"type": "string"}, "sessionId": {"type": "string"}}},
        "kind": "agent", "agent": {"name": "hello-agent", "prompt": "tell me about {topic}"},
    });
    let (status, body) = server.post("/api/tools", asker).await;
    assert_eq!(status, 201, "{body}");
    let (status, first) = call(&server, "ask-echo", json!({"topic": "owls"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first["result"]["reply"], "Echo: tell me about owls",
        "{first}"
    );
    let session = first["result"]["sessionId"].as_str().unwrap();
    let (_, second) = call(
        &server,
        "ask-echo",
        json!({"topic": "bats", "sessionId": session}),
    )
    .await;
    assert_eq!(
        second["result"]["reply"],
        "Echo: tell me about bats (turn 2, previous: tell me about owls)",
        "the named session went on: {second}"
    );
    let (_, other) = server
        .post("/api/sessions", json!({"agent": "hello-agent"}))
        .await;
    let other = other["session"]["id"].as_str().unwrap();
    assert_eq!(
        server.delete(&format!("/api/sessions/{other}")).await.0,
        200
    );
    let (status, ended) = call(
        &server,
        "ask-echo",
        json!({"topic": "x", "sessionId": other}),
    )
    .await;
    assert_eq!((status, &ended["isError"]), (200, &json!(true)), "{ended}");

    // The example the README's tour stores works as shown there.
    let example: Value =
        serde_json::from_str(include_str!("../../../examples/tools/ask-hello.json")).unwrap();
    assert_eq!(server.post("/api/tools", example).await.0, 201);
    let (_, hi) = call(&server, "ask-hello", json!({"message": "hi"})).await;
    assert_eq!(hi["result"]["reply"], "Echo: hi", "{hi}");

    // An agent tool naming no valid agent is refused when stored; one whose agent went is a
    // tool error when called.
    let bad = json!({"name": "bad", "description": "", "inputSchema": {"type": "object"},
        "kind": "agent", "agent": {"name": "no spaces allowed"}});
    assert_eq!(server.post("/api/tools", bad).await.0, 400);
    server.deploy("brief", &[("CLAUDE.md", "# brief")]).await;
    let gone = json!({"name": "ask-brief", "description": "", "inputSchema": {"type": "object"},
        "kind": "agent", "agent": {"name": "brief"}});
    assert_eq!(server.post("/api/tools", gone).await.0, 201);
    let (_, asked) = call(&server, "ask-brief", json!({"message": "hi"})).await;
    assert_eq!(asked["result"]["reply"], "Echo: hi", "{asked}");
    server.delete("/api/agents/brief").await;
    let (status, asked) = call(&server, "ask-brief", json!({"message": "hi"})).await;
    assert_eq!((status, &asked["isError"]), (200, &json!(true)), "{asked}");
    assert!(
        asked["result"]
            .as_str()
            .unwrap()
            .contains("Agent not found"),
        "{asked}"
    );
}

#[tokio::test]
async fn plugins_rewrite_a_tool_calls_arguments_before_it_runs_and_observe_every_call() {
    let base = upstream().await;
    let audit = tempfile::tempdir().unwrap();
    let settings = format!(
        "[[plugins]]\npath = {:?}\n[plugins.config]\npatterns = \"ACME-[0-9]{{6}}\"\n\n[[plugins]]\npath = {:?}\ndata_dir = {:?}\n",
        common::plugin("transform-redact"),
        common::plugin("observe-audit"),
        audit.path()
    );
    let server = common::start_with(&settings).await;
    let echo = json!({"name": "echo-body", "description": "sends its arguments back",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "kind": "http", "http": {"method": "POST", "url": format!("{base}/echo-body")}});
    assert_eq!(server.post("/api/tools", echo).await.0, 201);
    let (_, redacted) = call(
        &server,
        "echo-body",
        json!({"text": "order ACME-123456 now"}),
    )
    .await;
    assert_eq!(
        redacted["result"]["received"],
        json!({"text": "order [REDACTED] now"}),
        "the upstream got the rewritten arguments: {redacted}"
    );
    // Control: what the pattern does not match reaches the upstream as sent.
    let (_, plain) = call(&server, "echo-body", json!({"text": "order 123456 now"})).await;
    assert_eq!(
        plain["result"]["received"],
        json!({"text": "order 123456 now"})
    );
    let _ = server.stop().await;

    let trail = std::fs::read_to_string(audit.path().join("audit.jsonl")).unwrap();
    let hooks: Vec<(String, String)> = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["hook"].as_str().unwrap().starts_with("tool-"))
        .map(|l| {
            (
                l["hook"].as_str().unwrap().to_owned(),
                l["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let tool = |hook: &str| (hook.to_owned(), "echo-body".to_owned());
    assert_eq!(
        hooks,
        [
            tool("tool-pre-invoke"),
            tool("tool-post-invoke"),
            tool("tool-pre-invoke"),
            tool("tool-post-invoke")
        ],
        "{trail}"
    );
    assert!(
        !trail.contains("ACME-123456"),
        "the trail holds no arguments: {trail}"
    );
}

/// Runs `ash start` with `env`, calls the `echo-body` tool once, stops it: its log.
async fn log_of_a_call(base: &str, env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(common::ASH)
        .args(["start", "--port", "0"])
        .env("ASH_DATA_DIR", data.path())
        .env("ASH_API_KEY", "a-key-for-the-log-test")
        .env("ASH_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (url, _) = common::listening(&mut child).await;
    let http = reqwest::Client::new();
    let echo = json!({"name": "echo-body", "description": "", "inputSchema": {"type": "object"},
        "kind": "http", "http": {"method": "POST", "url": format!("{base}/echo-body")}});
    for (path, body) in [
        ("/api/tools".to_owned(), echo),
        (
            "/api/tools/echo-body/call".to_owned(),
            json!({"arguments": {"text": "logged-argument"}}),
        ),
    ] {
        let response = http
            .post(format!("{url}{path}"))
            .bearer_auth("a-key-for-the-log-test")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_tool_calls_arguments_and_result_are_logged_only_when_the_operator_asks() {
    let base = upstream().await;
    let quiet = log_of_a_call(&base, &[]).await;
    assert!(quiet.contains("tool called"), "{quiet}");
    assert!(!quiet.contains("logged-argument"), "{quiet}");
    let told = log_of_a_call(&base, &[("ASH_TOOL_LOG_PAYLOADS", "true")]).await;
    assert!(
        told.contains("tool called") && told.contains("logged-argument"),
        "{told}"
    );
}
