//! `ash bench`: measures a running server from the client's side with the `echo` backend,
//! and prints a Markdown table against the budgets of DESIGN §6.

use std::time::{Duration, Instant};

use anyhow::Context;
use ash_cli::client::Client;
use reqwest::Method;
use serde_json::json;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Agent to create sessions of; it should use the echo backend.
    #[arg(long, default_value = "hello-agent")]
    agent: String,
    /// Sessions to create (each measured, then ended).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages to send in one session (each measured to its `done` frame).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Live streams to hold open on one session while one more turn runs (0 skips this).
    #[arg(long, default_value_t = 0)]
    streams: usize,
}

pub async fn run(client: &Client, args: BenchArgs) -> anyhow::Result<()> {
    let mut creates = Vec::with_capacity(args.sessions);
    let mut ids = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        let clock = Instant::now();
        let created = client
            .call(
                Method::POST,
                "/api/sessions",
                Some(&json!({"agent": args.agent})),
            )
            .await?;
        creates.push(clock.elapsed());
        ids.push(
            created["session"]["id"]
                .as_str()
                .context("no session id")?
                .to_owned(),
        );
    }
    let session = ids
        .first()
        .context("--sessions must be at least 1")?
        .clone();
    let mut turns = Vec::with_capacity(args.messages);
    for i in 0..args.messages {
        let clock = Instant::now();
        let mut frames = client
            .send_message(&session, &json!({"content": format!("bench {i}")}))
            .await?;
        let mut done = false;
        while let Some(frame) = frames.next().await {
            done |= frame.map_err(anyhow::Error::msg)?.event == "done";
        }
        anyhow::ensure!(done, "turn {i} ended without done");
        turns.push(clock.elapsed());
    }
    let mut fan_out = match args.streams {
        0 => Vec::new(),
        streams => fan_out(client, &session, streams).await?,
    };
    for id in &ids {
        client
            .call(Method::DELETE, &format!("/api/sessions/{id}"), None)
            .await?;
    }
    println!("| what | n | p50 | p95 | budget (DESIGN §6) |");
    println!("|---|---|---|---|---|");
    row("session create, fresh sandbox", &mut creates, "≤ 12 ms p50");
    row(
        "message turn, client-seen (echo)",
        &mut turns,
        "≤ 1 ms p50 overhead",
    );
    if !fan_out.is_empty() {
        row(
            "a turn's `done` reaching each open stream",
            &mut fan_out,
            "≥ 20,000 streams per node",
        );
    }
    Ok(())
}

/// Opens `streams` live streams on the session, runs one turn, and times when each stream
/// sees its `done`, from the moment the turn was sent.
async fn fan_out(client: &Client, session: &str, streams: usize) -> anyhow::Result<Vec<Duration>> {
    use futures_util::StreamExt;
    let log = client
        .call(
            Method::GET,
            &format!("/api/sessions/{session}/events?type=done&limit=1000"),
            None,
        )
        .await?;
    let after = log["events"]
        .as_array()
        .and_then(|e| e.last())
        .map_or(0, |e| e["sequence"].as_i64().unwrap_or(0));
    let opened: Vec<_> = futures_util::stream::iter(0..streams)
        .map(|_| client.stream(session, after))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let clock = Instant::now();
    let waiters: Vec<_> = opened
        .into_iter()
        .map(|mut frames| {
            tokio::spawn(async move {
                while let Some(frame) = frames.next().await {
                    if frame.map_err(anyhow::Error::msg)?.event == "done" {
                        return Ok(clock.elapsed());
                    }
                }
                anyhow::bail!("a stream ended before the turn's done")
            })
        })
        .collect();
    let mut turn = client
        .send_message(session, &json!({"content": "fan-out"}))
        .await?;
    while turn.next().await.is_some() {}
    let mut times = Vec::with_capacity(streams);
    for waiter in waiters {
        times.push(waiter.await??);
    }
    Ok(times)
}

fn row(what: &str, samples: &mut [Duration], budget: &str) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    println!(
        "| {what} | {} | {:.2} ms | {:.2} ms | {budget} |",
        samples.len(),
        at(0.5),
        at(0.95)
    );
}
