//! Authenticator and observer plugins, the grants a plugin can get, and hostile plugins of
//! every kind, loaded by the real server from components built from `plugins/`.

mod common;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{plugin, start_with, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SECRET: &str = "a-test-secret-of-reasonable-length";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 JWT over `claims`, signed with `secret`.
fn hs256(claims: Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

fn claims(sub: &str, iss: &str, aud: &str, exp: i64) -> Value {
    json!({"sub": sub, "iss": iss, "aud": aud, "exp": exp, "iat": now()})
}

/// A request with `authorization` as its only credential.
async fn call_as(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    authorization: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .header("authorization", authorization);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_as(server: &Server, path: &str, authorization: &str) -> (u16, Value) {
    call_as(server, reqwest::Method::GET, path, authorization, None).await
}

fn jwt_settings() -> String {
    let public_key = std::fs::read_to_string(format!("{FIXTURES}/jwt-rs256-public.pem")).unwrap();
    format!(
        "[[plugins]]\npath = {:?}\n[plugins.config]\nhs256_secret = \"{SECRET}\"\nrs256_public_key = \"\"\"\n{public_key}\"\"\"\nissuer = \"https://issuer.test\"\naudience = \"ash\"\n",
        plugin("auth-jwt")
    )
}

#[tokio::test]
async fn jwt_requests_succeed_and_bad_tokens_get_401_while_api_keys_still_work() {
    let server = start_with(&jwt_settings()).await;
    let iss = "https://issuer.test";
    let good = hs256(claims("alice", iss, "ash", now() + 600), SECRET);

    // A JWT user drives a whole session: create, message, read back.
    let bearer = format!("Bearer {good}");
    let (status, created) = call_as(
        &server,
        reqwest::Method::POST,
        "/api/sessions",
        &bearer,
        Some(json!({"agent": "hello-agent"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["session"]["id"].as_str().unwrap();
    let (status, listed) = get_as(&server, "/api/sessions", &bearer).await;
    assert_eq!(status, 200);
    assert!(listed.to_string().contains(session));

    let rs256 = std::fs::read_to_string(format!("{FIXTURES}/jwt-rs256-token.txt")).unwrap();
    let rs256 = rs256.trim();
    let (status, body) = get_as(&server, "/api/agents", &format!("Bearer {rs256}")).await;
    assert_eq!(status, 200, "RS256: {body}");

    // The same claims with one character changed: the signature no longer matches.
    let (head, rest) = rs256.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut claims_json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims_json["sub"] = json!("mallory");
    let forged = format!(
        "{head}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims_json.to_string())
    );
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims("alice", iss, "ash", now() + 600).to_string())
    );
    let cases = [
        (forged, "invalid token signature"),
        (
            hs256(claims("alice", iss, "ash", now() + 600), "another-secret"),
            "invalid token signature",
        ),
        (
            hs256(claims("alice", iss, "ash", now() - 3600), SECRET),
            "token expired",
        ),
        (
            hs256(
                claims("alice", "https://elsewhere", "ash", now() + 600),
                SECRET,
            ),
            "issuer",
        ),
        (
            hs256(claims("alice", iss, "not-ash", now() + 600), SECRET),
            "audience",
        ),
        (unsigned, "algorithm none is not accepted"),
        ("not-a-jwt".to_owned(), "Invalid API key"),
    ];
    for (token, why) in cases {
        let (status, body) = get_as(&server, "/api/agents", &format!("Bearer {token}")).await;
        assert_eq!(status, 401, "{why}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{why}: {body}");
    }

    let (status, _) = server.get("/api/agents").await;
    assert_eq!(status, 200, "the API key still works");
    let (_, health) = server.get("/health").await;
    let jwt = &health["plugins"][0];
    assert_eq!(jwt["id"], "auth-jwt");
    assert_eq!(jwt["kind"], "auth");
    assert_eq!(jwt["failures"], 0, "{health}");
    assert!(server
        .metrics()
        .await
        .contains("ash_plugin_auth_seconds_count"));
}

/// A copy of the hostile plugin's component with a manifest for `kind`, asking for `extra`
/// capabilities (TOML lines under [capabilities]).
fn hostile_as(kind: &str, world: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let built = plugin("test-hostile");
    std::fs::copy(
        built.join("test_hostile.wasm"),
        dir.path().join("test_hostile.wasm"),
    )
    .unwrap();
    let manifest = format!(
        "id = \"test-hostile\"\nversion = \"0.1.0\"\nkind = \"{kind}\"\nworld = \"{world}\"\ncomponent = \"test_hostile.wasm\"\n[capabilities]\nconfig = [\"mode\", \"connect\"]\nheaders = [\"authorization\"]\n{extra}\n[limits]\nmemory_mb = 16\ndeadline_ms = 100\n"
    );
    std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    dir
}

fn settings_for(dir: &Path, mode: &str, grants: &str) -> String {
    format!(
        "[[plugins]]\npath = {:?}\n{grants}\n[plugins.config]\nmode = \"{mode}\"\n",
        dir
    )
}

#[tokio::test]
async fn hostile_authenticators_fail_closed_and_api_keys_keep_working() {
    for (mode, why) in [
        ("loop", "deadline"),
        ("memory", "memory"),
        ("trap", "trapped"),
        ("huge", "the limit is"),
    ] {
        let dir = hostile_as("auth", "ash:auth/authenticator@0.1.0", "");
        let server = start_with(&settings_for(dir.path(), mode, "")).await;
        for _ in 0..7 {
            let (status, body) = get_as(&server, "/api/agents", "Bearer not-an-api-key").await;
            assert_eq!(
                status, 503,
                "{mode}: a failing authenticator refuses: {body}"
            );
            assert!(body["error"].as_str().unwrap().contains("unavailable"));
        }
        let (status, _) = server.get("/api/agents").await;
        assert_eq!(status, 200, "{mode}: API keys come before plugins");
        let (_, health) = server.get("/health").await;
        let plugin = &health["plugins"][0];
        assert_eq!(plugin["quarantined"], true, "{mode}: {health}");
        assert_eq!(plugin["calls"], 5, "{mode}");
        assert!(
            plugin["lastError"].as_str().unwrap().contains(why),
            "{mode}: {health}"
        );
    }
}

#[tokio::test]
async fn hostile_observers_cost_the_server_nothing_and_are_quarantined() {
    for mode in ["loop", "memory", "trap"] {
        let dir = hostile_as("observe", "ash:observe/observer@0.1.0", "");
        let server = start_with(&settings_for(dir.path(), mode, "")).await;
        let session = server.session("hello-agent").await;
        // Each turn queues events; each batch the observer fails on counts one failure.
        let mut quarantined = false;
        for _ in 0..100 {
            let frames = server.message(&session, "hello").await;
            let reply = common::assistant_text(&frames);
            assert!(reply.starts_with("Echo: hello"), "{mode}: {reply}");
            let (_, health) = server.get("/health").await;
            if health["plugins"][0]["quarantined"] == true {
                quarantined = true;
                assert!(health["plugins"][0]["dropped"].as_u64().unwrap() > 0);
                break;
            }
        }
        assert!(quarantined, "{mode}: the observer was never quarantined");
        let metrics = server.metrics().await;
        assert!(metrics.contains("ash_plugin_dropped{plugin=\"test-hostile\"}"));
    }
}

/// The snoop report of a hostile transformer given `grants`, trying to reach `connect`.
async fn snoop(extra: &str, grants: &str, connect: &str) -> Value {
    let dir = hostile_as("transform", "ash:observe/transformer@0.1.0", extra);
    let settings = format!(
        "{}connect = \"{connect}\"\n",
        settings_for(dir.path(), "snoop", grants)
    );
    let server = start_with(&settings).await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "hello").await;
    frames
        .iter()
        .find(|f| f.event == "message")
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .expect("the snoop report")
}

#[tokio::test]
async fn a_plugin_gets_a_data_dir_and_an_outbound_host_only_when_asked_and_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (granted, elsewhere) = (
        listener.local_addr().unwrap().to_string(),
        other.local_addr().unwrap().to_string(),
    );
    let data = tempfile::tempdir().unwrap();
    let asks = format!("data_dir = true\noutbound = [\"{granted}\"]");
    let grants = format!("data_dir = {:?}\noutbound = [\"{granted}\"]", data.path());

    let nothing =
        json!({"env": 0, "args": 0, "file": false, "dir": false, "data": false, "socket": false});
    assert_eq!(
        snoop(&asks, "", &granted).await,
        nothing,
        "asked, not granted"
    );
    assert_eq!(
        snoop("", &grants, &granted).await,
        nothing,
        "granted, not asked"
    );

    let both = snoop(&asks, &grants, &granted).await;
    assert_eq!(both["data"], true, "asked and granted: {both}");
    assert_eq!(both["socket"], true, "asked and granted: {both}");
    assert_eq!(
        (&both["env"], &both["args"], &both["file"]),
        (&json!(0), &json!(0), &json!(false)),
        "still no env, args or host files: {both}"
    );
    assert!(data.path().join("snooped").is_file());
    let elsewhere = snoop(&asks, &grants, &elsewhere).await;
    assert_eq!(elsewhere["socket"], false, "a host it was not granted");
}

#[tokio::test]
async fn a_component_for_the_wrong_world_or_version_does_not_load() {
    let wrong_world = tempfile::tempdir().unwrap();
    std::fs::copy(
        plugin("transform-redact").join("transform_redact.wasm"),
        wrong_world.path().join("x.wasm"),
    )
    .unwrap();
    std::fs::write(
        wrong_world.path().join("plugin.toml"),
        "id = \"x\"\nversion = \"1\"\nkind = \"auth\"\nworld = \"ash:auth/authenticator@0.1.0\"\ncomponent = \"x.wasm\"\n",
    )
    .unwrap();
    for (dir, why) in [
        (
            wrong_world.path().to_owned(),
            "ash:auth/authenticator@0.1.0",
        ),
        (
            plugin("test-wrong-version"),
            "ash:observe/transformer@0.1.0",
        ),
    ] {
        let out = ash_in(&dir, &["plugin", "check", "."]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("does not implement") && stderr.contains(why),
            "{stderr}"
        );
    }
}

/// Runs `ash args…` in `dir`.
fn ash_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::ASH)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prints a tool call and its result, then the answer, for each query.
const TOOL_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]}}}\n' "$id"
  printf '{"ev":"message","id":"%s","data":{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"a.txt"}]},"tool_use_result":{"stdout":"a.txt"}}}\n' "$id"
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"one file"}]}}}\n' "$id"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_audit_trail_records_a_sessions_lifecycle_messages_and_tools() {
    let audit = tempfile::tempdir().unwrap();
    let settings = format!(
        "[[plugins]]\npath = {:?}\ndata_dir = {:?}\n",
        plugin("observe-audit"),
        audit.path()
    );
    let server = start_with(&settings).await;
    let session = server.command_session("tools", TOOL_AGENT).await;
    let frames = server.message(&session, "what is here?").await;
    assert_eq!(common::assistant_text(&frames), "one file");
    for action in ["pause", "resume", "stop", "resume"] {
        let (status, body) = server
            .post(&format!("/api/sessions/{session}/{action}"), json!({}))
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    assert_eq!(
        server.delete(&format!("/api/sessions/{session}")).await.0,
        200
    );
    // A graceful stop hands every queued event to the observer before the server exits.
    let _ = server.stop().await;

    let lines = audit_lines(audit.path());
    let hooks: Vec<&str> = lines
        .iter()
        .filter(|l| l["sessionId"] == session.as_str())
        .map(|l| l["hook"].as_str().unwrap())
        .collect();
    assert_eq!(
        hooks,
        [
            "session-created",
            "message-in",
            "tool-pre-invoke",
            "message-out",
            "tool-post-invoke",
            "message-out",
            "message-out",
            "session-paused",
            "session-resumed",
            "session-paused",
            "session-resumed",
            "session-ended",
        ],
        "{lines:#?}"
    );
    let created = &lines[0];
    assert_eq!(created["agent"], "tools");
    assert_eq!(created["data"]["status"], "active");
    let message = lines.iter().find(|l| l["hook"] == "message-in").unwrap();
    assert!(
        message["data"]["bytes"].as_u64().unwrap() > 0,
        "message bodies stay out of the trail by default: {message}"
    );
    assert!(lines.iter().all(|l| l["atMs"].as_u64().unwrap() > 0));
}

#[tokio::test]
async fn plugin_new_scaffolds_build_load_and_work_for_every_kind() {
    let work = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = repo.join("target");
    for (name, kind) in [
        ("my-observer", "observe"),
        ("my-transformer", "transform"),
        ("my-auth", "auth"),
    ] {
        succeeded(&ash_in(
            work.path(),
            &["plugin", "new", name, "--kind", kind],
        ));
        // Builds offline against the dependencies the first-party plugins already fetched,
        // sharing their target dir; the component is then where plugin.toml expects it.
        let dir = work.path().join(name);
        let built = tokio::process::Command::new("cargo")
            .args([
                "build",
                "--release",
                "--offline",
                "--target",
                "wasm32-wasip2",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&dir)
            .output()
            .await
            .unwrap();
        succeeded(&built);
        let file = format!("{}.wasm", name.replace('-', "_"));
        let release = dir.join("target/wasm32-wasip2/release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::copy(
            target.join("wasm32-wasip2/release").join(&file),
            release.join(&file),
        )
        .unwrap();
        succeeded(&ash_in(&dir, &["plugin", "check", "."]));
    }
    let again = ash_in(work.path(), &["plugin", "new", "my-auth", "--kind", "auth"]);
    assert!(
        !again.status.success(),
        "an existing folder is never overwritten"
    );

    let at = |name: &str| work.path().join(name);
    let settings = format!(
        "[[plugins]]\npath = {:?}\n[[plugins]]\npath = {:?}\n[plugins.config]\nword = \"secret\"\n[[plugins]]\npath = {:?}\n[plugins.config]\ntoken = \"let-me-in\"\nsubject = \"example-user\"\n",
        at("my-observer"),
        at("my-transformer"),
        at("my-auth")
    );
    let server = start_with(&settings).await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "the secret word").await;
    assert_eq!(common::assistant_text(&frames), "Echo: the [hidden] word");
    let http = reqwest::Client::new();
    for (token, status) in [("let-me-in", 200), ("wrong", 401)] {
        let response = http
            .get(format!("{}/api/agents", server.url))
            .header("x-example-token", token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{token}");
    }
    let (_, health) = server.get("/health").await;
    let kinds: Vec<&str> = health["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["transform", "auth", "observe"], "{health}");
}

#[tokio::test]
async fn the_audit_trail_records_an_eviction() {
    let audit = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let settings = data.path().join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            "[[plugins]]\npath = {:?}\ndata_dir = {:?}\n",
            plugin("observe-audit"),
            audit.path()
        ),
    )
    .unwrap();
    let server = Server::start_in(
        data,
        &[
            ("ASH_CONFIG", settings.to_str().unwrap()),
            ("ASH_MAX_SANDBOXES", "1"),
        ],
    )
    .await;
    let first = server.session("hello-agent").await;
    let _second = server.session("hello-agent").await;
    let _ = server.stop().await;

    let evicted: Vec<(String, Value)> = audit_lines(audit.path())
        .into_iter()
        .filter(|l| l["sessionId"] == first.as_str() && l["hook"] != "session-created")
        .map(|l| {
            (
                l["hook"].as_str().unwrap().to_owned(),
                l["data"]["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        evicted,
        [
            ("sandbox-evicted".to_owned(), json!("evicted")),
            ("session-paused".to_owned(), json!("evicted")),
        ]
    );
}
