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
    Ok(())
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
