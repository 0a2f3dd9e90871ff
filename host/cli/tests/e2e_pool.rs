//! Capacity: idle sessions are paused by the idle sweep, the least recently used idle one is
//! evicted when the node is full, and a sandbox in a turn is never taken.

mod common;

use common::{assistant_text, Server};
use serde_json::{json, Value};

async fn status(server: &Server, session: &str) -> String {
    server.get(&format!("/api/sessions/{session}")).await.1["session"]["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Follows the session's log from `after` until its next `lifecycle` frame.
async fn next_lifecycle(server: &Server, session: &str, after: i64) -> Value {
    let mut stream = server.open_log_stream(session, Some(after)).await;
    let frames = Server::read_until(&mut stream, |f| f.event == "lifecycle").await;
    serde_json::from_str(&frames.last().unwrap().data).unwrap()
}

fn last_seq(frames: &[ash_cli::sse::Frame]) -> i64 {
    frames
        .last()
        .unwrap()
        .id
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idle_session_is_paused_and_resumes_with_its_conversation() {
    let server = Server::start_with_env(&[("ASH_IDLE_TIMEOUT_MS", "300")]).await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "before the nap").await;
    let event = next_lifecycle(&server, &session, last_seq(&frames)).await;
    assert_eq!(event, json!({"action": "paused", "reason": "idle"}));
    assert_eq!(status(&server, &session).await, "paused");
    assert_eq!(server.get("/health").await.1["activeSandboxes"], 0);
    assert_eq!(
        server
            .post(&format!("/api/sessions/{session}/resume"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        assistant_text(&server.message(&session, "awake").await),
        "Echo: awake (turn 2, previous: before the nap)"
    );
}

#[tokio::test]
async fn a_full_node_evicts_the_least_recently_used_idle_session() {
    let server = Server::start_with_env(&[("ASH_MAX_SANDBOXES", "2")]).await;
    let first = server.session("hello-agent").await;
    let second = server.session("hello-agent").await;
    let seen = server.message(&first, "older").await;
    server.message(&second, "newer").await;
    let third = server.session("hello-agent").await;
    assert_eq!(
        next_lifecycle(&server, &first, last_seq(&seen)).await,
        json!({"action": "paused", "reason": "evicted"})
    );
    assert_eq!(
        (
            status(&server, &first).await,
            status(&server, &second).await,
            status(&server, &third).await
        ),
        ("paused".into(), "active".into(), "active".into())
    );
    assert_eq!(
        server
            .post(&format!("/api/sessions/{first}/resume"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        status(&server, &second).await,
        "paused",
        "the next least recently used made room"
    );
    assert_eq!(
        assistant_text(&server.message(&first, "back").await),
        "Echo: back (turn 2, previous: older)"
    );
}

#[tokio::test]
async fn a_sandbox_in_a_turn_is_never_evicted() {
    let server = Server::start_with_env(&[("ASH_MAX_SANDBOXES", "1")]).await;
    let busy = server.command_session("gated", common::GATED_AGENT).await;
    let mut stream = server
        .open_stream(&busy, json!({"content": "hold on"}))
        .await;
    Server::read_until(&mut stream, |f| f.event == "message").await;
    let (code, body) = server
        .post("/api/sessions", json!({"agent": "hello-agent"}))
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("capacity reached"));
    common::open_gate(&server, &busy).await;
    Server::read_until(&mut stream, |f| f.event == "done").await;
    assert_eq!(status(&server, &busy).await, "active");
}

/// Polls `/health` until the warm pool holds `n` sandboxes (it fills in the background).
async fn warm_pool_holds(server: &Server, n: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, health) = server.get("/health").await;
        if health["pool"]["warm"] == n {
            return health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the warm pool never held {n}: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_warm_sandbox_serves_a_plain_session_but_never_one_with_its_own_settings() {
    let server = Server::start().await;
    let (status, body) = server
        .deploy(
            "warm",
            &[("ash.toml", "[pool]\nprewarm = 1\n"), ("v1.txt", "1")],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    warm_pool_holds(&server, 1).await;

    let plain = server.session("warm").await;
    assert_eq!(server.get("/health").await.1["pool"]["preWarmHits"], 1);
    assert_eq!(
        assistant_text(&server.message(&plain, "quick").await),
        "Echo: quick"
    );
    assert!(
        server.workspace(&plain).join("v1.txt").exists(),
        "the warm workspace now carries the session's name"
    );
    warm_pool_holds(&server, 1).await;

    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "warm", "extraEnv": {"MINE": "yes"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let own = body["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server.get("/health").await.1["pool"]["preWarmHits"],
        1,
        "a session with its own env got a warm sandbox"
    );
    let (_, out) = server
        .post(
            &format!("/api/sessions/{own}/exec"),
            json!({"command": "echo $MINE"}),
        )
        .await;
    assert_eq!(out["stdout"], "yes\n");

    server
        .deploy(
            "warm",
            &[("ash.toml", "[pool]\nprewarm = 1\n"), ("v2.txt", "2")],
        )
        .await;
    let after = server.session("warm").await;
    let (_, out) = server
        .post(
            &format!("/api/sessions/{after}/exec"),
            json!({"command": "ls"}),
        )
        .await;
    assert!(
        out["stdout"].as_str().unwrap().contains("v2.txt"),
        "a stale warm sandbox was handed out: {out}"
    );
}

#[tokio::test]
async fn an_agents_config_is_merged_sizes_its_warm_pool_and_a_new_env_is_a_new_version() {
    let server = Server::start().await;
    let (status, body) = server.deploy("tuned", &[("v1.txt", "1")]).await;
    assert_eq!(status, 201, "{body}");
    let (status, config) = server.get("/api/agents/tuned/config").await;
    assert_eq!((status, &config), (200, &json!({"config": {}})));
    let patch = |path: &'static str, body: Value| {
        let server = &server;
        async move { server.call(reqwest::Method::PATCH, path, Some(body)).await }
    };
    let (status, config) = patch(
        "/api/agents/tuned/config",
        json!({"team": "a", "preWarmCount": 1}),
    )
    .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["config"], json!({"team": "a", "preWarmCount": 1}));
    // The pool follows its config (the agent's ash.toml asks for none).
    warm_pool_holds(&server, 1).await;
    let (_, config) = patch("/api/agents/tuned/config", json!({"team": null, "tier": 2})).await;
    assert_eq!(config["config"], json!({"preWarmCount": 1, "tier": 2}));
    assert_eq!(patch("/api/agents/tuned/config", json!({})).await.1, config);

    // A new env is a new version: new sandboxes start with it, and a warm one of the version
    // before is never handed out.
    let (status, body) = patch("/api/agents/tuned", json!({"env": {"GREETING": "v2"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["agent"]["version"], &body["agent"]["env"]),
        (&json!(2), &json!({"GREETING": "***"}))
    );
    assert!(body["agent"].get("config").is_none(), "{body}");
    let session = server.session("tuned").await;
    assert_eq!(
        server.exec(&session, "echo $GREETING").await["stdout"],
        "v2\n"
    );

    // Bad input gets a clear 4xx and changes nothing.
    for (path, body, want) in [
        ("/api/agents/tuned/config", json!({"preWarmCount": 65}), 400),
        (
            "/api/agents/tuned/config",
            json!({"preWarmCount": "1"}),
            400,
        ),
        (
            "/api/agents/tuned/config",
            json!({"blob": "x".repeat(70_000)}),
            400,
        ),
        (
            "/api/agents/tuned/config",
            json!(["not", "an", "object"]),
            422,
        ),
        ("/api/agents/tuned", json!({"env": {"1BAD": "x"}}), 400),
        ("/api/agents/tuned", json!({"config": "x"}), 422),
        ("/api/agents/nobody/config", json!({"a": 1}), 404),
        ("/api/agents/nobody", json!({"env": {}}), 404),
    ] {
        let (status, reply) = patch(path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {reply}");
    }
    assert_eq!(server.get("/api/agents/tuned/config").await.1, config);
    assert_eq!(
        server.get("/api/agents/tuned").await.1["agent"]["version"],
        2
    );
}

#[tokio::test]
async fn warm_sandboxes_start_with_the_active_versions_prompt_and_follow_its_changes() {
    let server = Server::start().await;
    let (status, body) = server
        .deploy(
            "prompted",
            &[
                ("ash.toml", "[pool]\nprewarm = 1\n"),
                ("CLAUDE.md", "folder"),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    warm_pool_holds(&server, 1).await;
    server
        .post(
            "/api/agents/prompted/versions",
            json!({"systemPrompt": "from the version"}),
        )
        .await;
    server
        .post("/api/agents/prompted/versions/1/activate", json!({}))
        .await;
    // The warm sandbox of the folder's prompt is replaced by one of the version's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let session = loop {
        let session = server.session("prompted").await;
        let hits = server.get("/health").await.1["pool"]["preWarmHits"].clone();
        let prompt = server.exec(&session, "cat CLAUDE.md").await["stdout"].clone();
        assert_eq!(
            prompt, "from the version",
            "a warm sandbox kept the old prompt"
        );
        if hits == 1 {
            break session;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warm sandbox of the version came"
        );
        warm_pool_holds(&server, 1).await;
    };
    assert_eq!(
        server.exec(&session, "cat CLAUDE.md").await["stdout"],
        "from the version"
    );
}
