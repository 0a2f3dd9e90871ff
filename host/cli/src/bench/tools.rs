//! `ash bench --tools N`: what the invoker adds to an `http` tool's own upstream, and MCP
//! `tools/call` throughput. The upstream is a plain HTTP server on loopback this process
//! starts; the tool it measures (`bench-echo`) is stored for the run and deleted after.

use std::time::{Duration, Instant};

use anyhow::Context;
use ash_cli::client::Client;
use reqwest::Method;
use serde_json::{json, Value};

use super::Row;

const TOOL: &str = "bench-echo";
/// MCP calls in flight at once for the throughput run.
const MCP_IN_FLIGHT: usize = 16;

pub(super) async fn rows(client: &Client, n: usize) -> anyhow::Result<Vec<Row>> {
    let upstream = upstream().await?;
    let url = format!("http://{upstream}/echo/{{text}}");
    let tool = json!({"name": TOOL, "description": "echoes its text", "kind": "http",
        "inputSchema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "http": {"method": "GET", "url": url}});
    client
        .call(Method::PUT, &format!("/api/tools/{TOOL}"), Some(&tool))
        .await?;
    let plain = reqwest::Client::new();
    let mut direct = Vec::with_capacity(n);
    for i in 0..n {
        let clock = Instant::now();
        plain
            .get(format!("http://{upstream}/echo/t{i}"))
            .send()
            .await?
            .bytes()
            .await?;
        direct.push(clock.elapsed());
    }
    let mut shown = Vec::with_capacity(n);
    for _ in 0..n {
        let clock = Instant::now();
        client
            .call(Method::GET, &format!("/api/tools/{TOOL}"), None)
            .await?;
        shown.push(clock.elapsed());
    }
    let mut called = Vec::with_capacity(n);
    let path = format!("/api/tools/{TOOL}/call");
    for i in 0..n {
        let body = json!({"arguments": {"text": format!("t{i}")}});
        let clock = Instant::now();
        let reply = client.call(Method::POST, &path, Some(&body)).await?;
        called.push(clock.elapsed());
        anyhow::ensure!(reply["isError"] == false, "the tool failed: {reply}");
    }
    let overhead = p50(&mut called) - p50(&mut shown) - p50(&mut direct);
    let mut rows = vec![
        Row::timed("upstream alone (loopback GET)", &mut direct, "—"),
        Row::timed(
            "GET /api/tools/:name (HTTP, auth, a store read)",
            &mut shown,
            "—",
        ),
        Row::timed(
            "http tool call through REST (the two above plus the invoker)",
            &mut called,
            "—",
        ),
        Row::single(
            "invoker overhead (call − the two above)",
            format!("{:.0} µs", overhead * 1e6),
            "≤ 100 µs p50",
        ),
    ];
    let rate = mcp_calls_per_second(client, n.max(MCP_IN_FLIGHT)).await?;
    rows.push(Row::single(
        format!("MCP tools/call per second, {MCP_IN_FLIGHT} in flight"),
        format!("{rate:.0}"),
        "≥ 6,000 (10× ContextForge's ~600)",
    ));
    client
        .call(Method::DELETE, &format!("/api/tools/{TOOL}"), None)
        .await?;
    Ok(rows)
}

/// The median, in seconds.
fn p50(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64()
}

/// An HTTP server on loopback answering `GET /echo/:text` with `{"text": …}`.
async fn upstream() -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/echo/{text}",
        axum::routing::get(
            |axum::extract::Path(text): axum::extract::Path<String>| async move {
                axum::Json(json!({ "text": text }))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// `calls` MCP `tools/call`s in one session, [`MCP_IN_FLIGHT`] at a time: calls per second.
async fn mcp_calls_per_second(client: &Client, calls: usize) -> anyhow::Result<f64> {
    let post = |session: Option<&str>, body: Value| {
        let mut request = client
            .request(Method::POST, "/mcp")
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "ash bench", "version": "1"}}});
    let response = post(None, initialize).send().await?;
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .context("/mcp gave no session id")?
        .to_owned();
    response.bytes().await?;
    post(
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await?;
    let clock = Instant::now();
    let loops = (0..MCP_IN_FLIGHT).map(|lane| {
        let (post, session) = (&post, &session);
        async move {
            let mut i = lane;
            while i < calls {
                let call = json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                    "params": {"name": TOOL, "arguments": {"text": format!("m{i}")}}});
                let body = post(Some(session), call).send().await?.text().await?;
                anyhow::ensure!(body.contains("\"result\""), "tools/call failed: {body}");
                i += MCP_IN_FLIGHT;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    futures_util::future::try_join_all(loops).await?;
    Ok(calls as f64 / clock.elapsed().as_secs_f64())
}
