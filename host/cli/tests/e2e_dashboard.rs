//! The dashboard end to end: its sign-in, cookie and CSRF walls against the real `ash`
//! binary, and the page itself in Debian's Chromium (playwright-core), against real bwrap
//! sandboxes and SQLite.

mod common;

use common::{open_gate, Server, COMMAND_TOML, GATED_AGENT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Signs in with `key`: the reply's status, its `Set-Cookie`, and its body.
async fn sign_in(server: &Server, key: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/dashboard/session", server.url))
        .json(&json!({ "key": key }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cookie, response.json().await.unwrap_or(Value::Null))
}

/// The `name=value` part of a `Set-Cookie`.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A request with the cookie (and the extra headers) instead of a key.
async fn with_cookie(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> u16 {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .header("cookie", cookie);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_sign_in_cookie_is_http_only_strict_and_every_change_needs_its_csrf_token() {
    let server = Server::start().await;
    let (status, set_cookie, body) = sign_in(&server, "ash_wrong", &[]).await;
    assert_eq!((status, set_cookie.as_str()), (401, ""), "{body}");

    let (status, set_cookie, body) = sign_in(&server, &server.key, &[]).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(
        !set_cookie.contains(&server.key),
        "the cookie is not the key"
    );
    let csrf = body["csrfToken"].as_str().unwrap().to_owned();
    let cookie = pair(&set_cookie);
    let (_, behind_tls, _) = sign_in(&server, &server.key, &[("x-forwarded-proto", "https")]).await;
    assert!(behind_tls.contains("; Secure"), "{behind_tls}");

    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let new_session = || Some(json!({"agent": "hello-agent"}));
    assert_eq!(
        with_cookie(&server, get.clone(), "/api/agents", &cookie, &[], None).await,
        200
    );
    // Control: the same request without the cookie, or with a made-up one, is refused.
    assert_eq!(
        with_cookie(&server, get.clone(), "/api/agents", "", &[], None).await,
        401
    );
    let forged = "ash_dashboard=bm90LWEtc2lnbi1pbg";
    assert_eq!(
        with_cookie(&server, get.clone(), "/api/agents", forged, &[], None).await,
        401
    );
    // A change needs the CSRF token, and the page's own origin when one is sent.
    let ours = [("x-csrf-token", csrf.as_str())];
    let wrong = [("x-csrf-token", "not-the-token")];
    let from_elsewhere = [
        ("x-csrf-token", csrf.as_str()),
        ("origin", "https://evil.example"),
    ];
    for (headers, want) in [
        (&[][..], 403),
        (&wrong[..], 403),
        (&from_elsewhere[..], 403),
        (&ours[..], 201),
    ] {
        let status = with_cookie(
            &server,
            post.clone(),
            "/api/sessions",
            &cookie,
            headers,
            new_session(),
        )
        .await;
        assert_eq!(status, want, "{headers:?}");
    }
    let (_, sessions) = server.get("/api/sessions").await;
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "only the allowed change landed"
    );

    // Signing in from another site's page, or not as JSON, is refused.
    let (status, _, _) = sign_in(&server, &server.key, &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    let form = reqwest::Client::new()
        .post(format!("{}/dashboard/session", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", server.key))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 415);

    // A sign-in made with a key ends when the key is deleted.
    let (_, made) = server
        .post("/api/api-keys", json!({"label": "for the page"}))
        .await;
    let (_, set_cookie, _) = sign_in(&server, made["key"].as_str().unwrap(), &[]).await;
    let by_made = pair(&set_cookie);
    assert_eq!(
        with_cookie(&server, get.clone(), "/api/agents", &by_made, &[], None).await,
        200
    );
    server
        .delete(&format!("/api/api-keys/{}", made["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        with_cookie(&server, get.clone(), "/api/agents", &by_made, &[], None).await,
        401
    );

    // Signing out needs the CSRF token too, and ends the sign-in.
    let out = reqwest::Method::DELETE;
    assert_eq!(
        with_cookie(
            &server,
            out.clone(),
            "/dashboard/session",
            &cookie,
            &[],
            None
        )
        .await,
        403
    );
    assert_eq!(
        with_cookie(&server, out, "/dashboard/session", &cookie, &ours, None).await,
        204
    );
    assert_eq!(
        with_cookie(&server, get, "/api/agents", &cookie, &[], None).await,
        401
    );
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_under_a_strict_policy_without_the_key() {
    let server = Server::start().await;
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let response = reqwest::get(format!("{}{path}", server.url)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"),
            "{policy}"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains(&server.key), "{path} holds the key");
    }
    let (status, _) = {
        let response = reqwest::get(format!("{}/dashboard/session", server.url))
            .await
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 401, "no sign-in, no CSRF token");
}

#[tokio::test]
async fn the_dashboard_runs_ash_in_chromium_its_stream_resumes_after_a_reload() {
    // A transformer sees every message of the agents: its calls move with each turn.
    let settings = format!(
        "[[plugins]]\npath = {:?}\n[plugins.config]\npatterns = \"ACME-[0-9]{{6}}\"\n",
        common::plugin("transform-redact")
    );
    let server = common::start_with(&settings).await;
    let files = [("agent.sh", GATED_AGENT), ("ash.toml", COMMAND_TOML)];
    assert_eq!(server.deploy("gated", &files).await.0, 201);
    server
        .post(
            "/api/agents/gated/versions",
            json!({"systemPrompt": "gated v1"}),
        )
        .await;
    // A tool for the page to call: an agent tool, so no upstream is needed.
    let tool = json!({"name": "echo-args", "description": "asks the echo agent",
        "inputSchema": {"type": "object", "properties": {"word": {"type": "string"}}},
        "kind": "agent", "agent": {"name": "hello-agent", "prompt": "{word}"}});
    assert_eq!(server.post("/api/tools", tool).await.0, 201);
    let gated = server.session("gated").await;
    let mut turn = server.open_stream(&gated, json!({"content": "go"})).await;
    Server::read_until(&mut turn, |f| f.event == "message").await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .env("ASH_URL", &server.url)
        .env("ASH_KEY", &server.key)
        .env("ASH_GATED", &gated)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs: scripts/install-browser.sh installs it");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(180), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the script says what it saw");
            let said: Value = serde_json::from_str(&line).unwrap();
            if said["ask"] == "gate" {
                open_gate(&server, &gated).await;
                stdin.write_all(b"ok\n").await.unwrap();
            } else {
                return said;
            }
        }
    })
    .await
    .expect("the browser finished");
    assert!(seen["error"].is_null(), "{seen}");
    let seen = &seen["seen"];
    assert!(
        seen["wrongKey"].as_str().unwrap().contains("not accepted"),
        "{seen}"
    );
    assert!(seen["agents"].to_string().contains("hello-agent"), "{seen}");
    assert_eq!(
        seen["cookie"],
        json!({"httpOnly": true, "sameSite": "Strict", "secure": false})
    );
    assert_eq!(
        (&seen["scriptSeesCookie"], &seen["storage"]),
        (&json!(""), &json!("{}{}")),
        "the page's script holds no secret"
    );
    assert_eq!(seen["filtered"], 1, "{seen}");
    let (_, log) = server
        .get(&format!("/api/sessions/{gated}/events?limit=1000"))
        .await;
    let logged: Vec<i64> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seen["sequences"],
        json!(logged),
        "after the reload the page showed the whole log once, the live part included"
    );
    assert_eq!(
        (&seen["echoed"], &seen["fileShown"], &seen["toolCalled"]),
        (&json!(true), &json!(true), &json!(true))
    );
    assert_eq!(
        server.get("/api/agents/gated").await.1["agent"]["activeVersion"],
        1
    );
    let (_, queued) = server.get("/api/queue").await;
    assert!(
        queued.to_string().contains("queued from the browser"),
        "{queued}"
    );
    assert_eq!(seen["afterSignOut"], 401);
    assert_eq!(
        (&seen["keyServed"], &seen["keyInPage"], &seen["outside"]),
        (&json!(false), &json!(false), &json!([])),
        "{seen}"
    );
    let (before, after) = (&seen["pluginsBefore"][0], &seen["pluginsAfter"][0]);
    assert_eq!(before[0], "transform-redact", "{seen}");
    assert!(
        after[1].as_u64().unwrap() > before[1].as_u64().unwrap(),
        "the plugin's calls moved with the turns: {seen}"
    );
    let usage = seen["usage"].as_array().unwrap();
    assert!(
        usage[5].as_str().unwrap().parse::<u64>().unwrap() >= 2,
        "{seen}"
    );
}
