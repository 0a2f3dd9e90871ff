//! The message queue end to end: the real `ash` binary, real bwrap sandboxes, real SQLite
//! and Postgres. Items run one at a time in priority order, their turns are kept in their
//! sessions, failed turns are retried, and the queue outlives a crash and is shared by two
//! servers on one database without running an item twice.

mod common;

use ash_store::conformance::TestSchema;
use common::{open_gate, Server, COMMAND_TOML, GATED_AGENT};
use serde_json::{json, Value};

async fn enqueue(server: &Server, body: Value) -> Value {
    let (status, reply) = server.post("/api/queue", body).await;
    assert_eq!(status, 201, "{reply}");
    reply["item"].clone()
}

/// Polls the item until its status is `want` (the queue runs in the background).
async fn item_reaches(server: &Server, id: &str, want: &str) -> Value {
    item_until(server, id, want, |_| true).await
}

/// Polls the item until its status is `want` and `also` holds.
async fn item_until(server: &Server, id: &str, want: &str, also: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, reply) = server.get(&format!("/api/queue/{id}")).await;
        if reply["item"]["status"] == want && also(&reply["item"]) {
            return reply["item"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "item {id} never became {want}: {reply}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn id(item: &Value) -> &str {
    item["id"].as_str().unwrap()
}

/// The user prompts a session's messages hold.
async fn prompts(server: &Server, session: &str) -> Vec<String> {
    let (_, body) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| {
            let content: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
            content["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn deploy_gated(server: &Server) {
    let files = [("agent.sh", GATED_AGENT), ("ash.toml", COMMAND_TOML)];
    let (status, body) = server.deploy("gated", &files).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn items_run_one_at_a_time_highest_priority_first_and_a_pending_one_can_be_cancelled() {
    let server = Server::start().await;
    deploy_gated(&server).await;
    let holding = enqueue(&server, json!({"agentName": "gated", "prompt": "hold"})).await;
    assert_eq!(
        (
            &holding["status"],
            &holding["priority"],
            &holding["maxRetries"],
            &holding["sessionId"]
        ),
        (&json!("pending"), &json!(0), &json!(3), &Value::Null)
    );
    let has_session = |item: &Value| item["sessionId"].is_string();
    let holding = item_until(&server, id(&holding), "processing", has_session).await;
    let gated = holding["sessionId"].as_str().unwrap().to_owned();

    let low = enqueue(
        &server,
        json!({"agentName": "hello-agent", "prompt": "low"}),
    )
    .await;
    let high = enqueue(
        &server,
        json!({"agentName": "hello-agent", "prompt": "high", "priority": 5}),
    )
    .await;
    let dropped = enqueue(
        &server,
        json!({"agentName": "hello-agent", "prompt": "never", "priority": 9}),
    )
    .await;
    let (status, cancelled) = server.delete(&format!("/api/queue/{}", id(&dropped))).await;
    assert_eq!(
        (status, &cancelled["item"]["status"]),
        (200, &json!("cancelled"))
    );
    let (status, refused) = server.delete(&format!("/api/queue/{}", id(&holding))).await;
    assert_eq!(status, 400, "a running item cannot be cancelled: {refused}");
    assert_eq!(
        server.get("/api/queue/stats").await.1,
        json!({"stats": {"pending": 2, "processing": 1, "completed": 0, "failed": 0, "cancelled": 1}})
    );

    open_gate(&server, &gated).await;
    let low = item_reaches(&server, id(&low), "completed").await;
    let high = item_reaches(&server, id(&high), "completed").await;
    item_reaches(&server, id(&holding), "completed").await;
    assert!(
        high["completedAt"].as_str() <= low["startedAt"].as_str(),
        "the higher priority ran first, and alone: {high} {low}"
    );
    // Each turn is in its session, as any turn is.
    let session = high["sessionId"].as_str().unwrap();
    assert_eq!(prompts(&server, session).await, ["high"]);
    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert!(messages.to_string().contains("Echo: high"), "{messages}");
    let dropped = server.get(&format!("/api/queue/{}", id(&dropped))).await.1;
    assert_eq!(
        (&dropped["item"]["status"], &dropped["item"]["sessionId"]),
        (&json!("cancelled"), &Value::Null),
        "a cancelled item never runs"
    );

    let (_, listed) = server.get("/api/queue?status=completed").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
    let (_, newest) = server.get("/api/queue?limit=1").await;
    assert_eq!(
        newest["items"][0]["id"], dropped["item"]["id"],
        "newest first"
    );
}

#[tokio::test]
async fn bad_queue_requests_get_a_clear_error_and_queue_nothing() {
    let server = Server::start().await;
    deploy_gated(&server).await;
    let other = server.session("gated").await;
    let unknown = uuid::Uuid::new_v4();
    for (body, want) in [
        (json!({"agentName": "nobody", "prompt": "x"}), 404),
        (json!({"agentName": "hello-agent", "prompt": ""}), 400),
        (json!({"agentName": "hello-agent", "prompt": "  "}), 400),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "priority": 2_000_000}),
            400,
        ),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "maxRetries": 101}),
            400,
        ),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "priority": -1}),
            422,
        ),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "sessionId": other}),
            400,
        ),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "sessionId": "nope"}),
            400,
        ),
        (
            json!({"agentName": "hello-agent", "prompt": "x", "sessionId": unknown}),
            404,
        ),
        (json!({"agentName": "bad name", "prompt": "x"}), 400),
        (json!({"prompt": "x"}), 422),
        (
            json!({"agentName": "hello-agent", "prompt": "x".repeat(500_001)}),
            400,
        ),
    ] {
        let (status, reply) = server.post("/api/queue", body.clone()).await;
        assert_eq!(status, want, "{body}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    for (path, want) in [
        ("/api/queue?status=done".to_owned(), 400),
        ("/api/queue?limit=0".to_owned(), 400),
        ("/api/queue?limit=501".to_owned(), 400),
        (format!("/api/queue/{unknown}"), 404),
    ] {
        let (status, reply) = server.get(&path).await;
        assert_eq!(status, want, "{path}: {reply}");
    }
    assert_eq!(server.delete(&format!("/api/queue/{unknown}")).await.0, 404);
    assert_eq!(server.get("/api/queue").await.1, json!({"items": []}));
}

/// Fails its first two turns in a session (counted in its workspace), then answers.
const FLAKY_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  n=$(( $(cat tries 2>/dev/null || echo 0) + 1 ))
  echo "$n" > tries
  if [ "$n" -lt 3 ] || [ -e always-fail ]; then
    printf '{"ev":"error","id":"%s","error":"flaky failure %s"}\n' "$id" "$n"
  else
    printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"made it"}]}}}\n' "$id"
    printf '{"ev":"done","id":"%s"}\n' "$id"
  fi
done
"#;

#[tokio::test]
async fn a_failed_turn_is_retried_after_a_wait_until_it_succeeds_or_its_retries_run_out() {
    let server = Server::start_with_env(&[("ASH_QUEUE_RETRY_BASE_MS", "20")]).await;
    let session = server.command_session("flaky", FLAKY_AGENT).await;
    let item = enqueue(
        &server,
        json!({"agentName": "flaky", "prompt": "try", "sessionId": session}),
    )
    .await;
    let done = item_reaches(&server, id(&item), "completed").await;
    assert_eq!(
        (&done["retryCount"], &done["error"], &done["sessionId"]),
        (&json!(2), &Value::Null, &json!(session))
    );
    assert_eq!(prompts(&server, &session).await, ["try", "try", "try"]);

    std::fs::write(server.workspace(&session).join("always-fail"), "").unwrap();
    let item = enqueue(
        &server,
        json!({"agentName": "flaky", "prompt": "again", "sessionId": session, "maxRetries": 1}),
    )
    .await;
    let failed = item_reaches(&server, id(&item), "failed").await;
    assert_eq!(failed["retryCount"], 1);
    assert!(
        failed["error"].as_str().unwrap().contains("flaky failure"),
        "{failed}"
    );
    assert_eq!(
        prompts(&server, &session).await.len(),
        5,
        "two tries, no more"
    );
}

#[tokio::test]
async fn the_queue_outlives_a_crash_and_the_item_cut_off_runs_again() {
    let server = Server::start().await;
    deploy_gated(&server).await;
    let holding = enqueue(&server, json!({"agentName": "gated", "prompt": "hold"})).await;
    let has_session = |item: &Value| item["sessionId"].is_string();
    let holding = item_until(&server, id(&holding), "processing", has_session).await;
    let gated = holding["sessionId"].as_str().unwrap().to_owned();
    let waiting = enqueue(
        &server,
        json!({"agentName": "hello-agent", "prompt": "later"}),
    )
    .await;

    let server = server.crash_and_restart().await;
    // Control: the crash left it running, and only its own server's start puts it back.
    let rerun = item_reaches(&server, id(&holding), "processing").await;
    assert_eq!(rerun["sessionId"], json!(gated), "its session is kept");
    // Its turn runs again (its prompt is logged once its sandbox is up), waiting at the gate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while prompts(&server, &gated).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the item never ran again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    open_gate(&server, &gated).await;
    item_reaches(&server, id(&holding), "completed").await;
    item_reaches(&server, id(&waiting), "completed").await;
    assert_eq!(
        prompts(&server, &gated).await,
        ["hold", "hold"],
        "the cut-off turn ran again (at least once)"
    );
}

#[tokio::test]
async fn two_servers_on_one_postgres_share_the_queue_and_never_run_an_item_twice() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let env = [
        ("ASH_DATABASE_URL", url.as_str()),
        ("ASH_API_KEY", "a-key-both-servers-of-the-queue-take"),
    ];
    let a = Server::start_with_env(&env).await;
    let b = Server::start_with_env(&env).await;
    let mut items = Vec::new();
    for n in 0..12 {
        let through = if n % 2 == 0 { &a } else { &b };
        let prompt = format!("item {n}");
        items.push(
            enqueue(
                through,
                json!({"agentName": "hello-agent", "prompt": prompt}),
            )
            .await,
        );
    }
    let mut sessions = std::collections::HashSet::new();
    for item in &items {
        let done = item_reaches(&a, id(item), "completed").await;
        sessions.insert(done["sessionId"].as_str().unwrap().to_owned());
    }
    assert_eq!(sessions.len(), 12, "one session per item");
    let (_, listed) = b.get("/api/sessions?agent=hello-agent").await;
    assert_eq!(
        listed["sessions"].as_array().unwrap().len(),
        12,
        "no item made a second session: {listed}"
    );
    let (_, usage) = a.get("/api/usage/stats").await;
    assert_eq!(
        usage["stats"]["totalMessages"], 12,
        "one turn per item: {usage}"
    );
    drop((a, b));
    schema.drop().await;
}
