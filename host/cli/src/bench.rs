//! `ash bench`: starts a real server (or uses `--server`), drives it from the client's side
//! with the `echo` backend, and prints — or writes with `--report` — a dated Markdown table
//! against the budgets of DESIGN §6.

mod tools;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ash_cli::client::Client;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Agent to create sessions of; it should use the echo backend.
    #[arg(long, default_value = "hello-agent")]
    agent: String,
    /// Sessions to create (each measured; all stay live until the end).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages to send in one session (each measured to its `done` frame).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Sessions taking turns at once, each sending its next message as soon as its last turn
    /// is done (closed loop), for `--messages` turns in all (0 skips this).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Live streams to hold open on one session while one more turn runs (0 skips this).
    #[arg(long, default_value_t = 0)]
    streams: usize,
    /// Tool calls to measure: an `http` tool against an upstream on loopback this process
    /// starts (the invoker's overhead), and MCP `tools/call` throughput (0 skips this).
    #[arg(long, default_value_t = 0)]
    tools: usize,
    /// Write the report (with date, machine and command) to this file as well.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One line of the report.
struct Row {
    what: String,
    n: usize,
    p50: String,
    p95: String,
    budget: &'static str,
}

impl Row {
    fn timed(what: impl Into<String>, samples: &mut [Duration], budget: &'static str) -> Self {
        samples.sort();
        let at = |q: f64| {
            format!(
                "{:.2} ms",
                samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
            )
        };
        Self {
            what: what.into(),
            n: samples.len(),
            p50: at(0.5),
            p95: at(0.95),
            budget,
        }
    }

    fn single(what: impl Into<String>, value: String, budget: &'static str) -> Self {
        Self {
            what: what.into(),
            n: 1,
            p50: value,
            p95: "—".into(),
            budget,
        }
    }
}

pub async fn run(server: Option<String>, args: BenchArgs) -> anyhow::Result<()> {
    let external = server.or_else(|| std::env::var("ASH_SERVER_URL").ok());
    let own = match external {
        Some(_) => None,
        None => Some(OwnServer::start().await?),
    };
    let client = match &own {
        Some(own) => Client::new(&own.url, Some(own.key.clone())),
        None => Client::discover(external)?,
    };
    let mut rows = Vec::new();
    if let Some(own) = &own {
        rows.push(Row::single(
            "server start to listening",
            format!("{:.1} ms", own.started.as_secs_f64() * 1000.0),
            "≤ 200 ms",
        ));
        rows.push(Row::single(
            "server idle RSS",
            mib(rss_kib(own.pid)),
            "≤ 30 MiB",
        ));
    }

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
    rows.push(Row::timed(
        "session create, fresh sandbox",
        &mut creates,
        "≤ 12 ms p50",
    ));
    let session = ids
        .first()
        .context("--sessions must be at least 1")?
        .clone();

    let mut turns = closed_loop(&client, &session, args.messages).await?;
    rows.push(Row::timed(
        "message turn, client-seen (echo)",
        &mut turns,
        "≤ 1 ms p50",
    ));
    if args.concurrency > 0 {
        let k = args.concurrency;
        anyhow::ensure!(k <= ids.len(), "--concurrency must be at most --sessions");
        let clock = Instant::now();
        let loops = ids[..k].iter().enumerate().map(|(n, id)| {
            let count = args.messages / k + usize::from(n < args.messages % k);
            closed_loop(&client, id, count)
        });
        let mut all: Vec<Duration> = futures_util::future::try_join_all(loops)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let rate = all.len() as f64 / clock.elapsed().as_secs_f64();
        rows.push(Row::timed(
            format!("message turn with {k} in flight, client-seen"),
            &mut all,
            "—",
        ));
        rows.push(Row::single(
            format!("turns per second with {k} in flight"),
            format!("{rate:.0}"),
            "≥ 2,000",
        ));
    }
    // A coordinator's pool is its runners'; they fill it for the agents that exist when they
    // start, so the agent this deploys gets none there.
    let health = client.call(Method::GET, "/health", None).await?;
    let coordinator = health["runners"].as_array().is_some_and(|r| !r.is_empty());
    if coordinator {
        eprintln!("ash: a coordinator: the warm pool is not measured (runners fill it for the agents they start with)");
    } else {
        let mut pooled = from_warm_pool(&client, args.sessions.min(50)).await?;
        rows.push(Row::timed(
            "session create from the warm pool",
            &mut pooled,
            "≤ 2 ms p50",
        ));
    }
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for id in ids.iter().skip(1) {
        warm.push(pause_then_resume(&client, id, "pause").await?);
        cold.push(pause_then_resume(&client, id, "stop").await?);
    }
    if !warm.is_empty() {
        rows.push(Row::timed(
            "resume after pause (warm: sandbox up)",
            &mut warm,
            "≤ 0.3 ms p50",
        ));
        rows.push(Row::timed(
            "resume after stop (cold: new sandbox)",
            &mut cold,
            "≤ 15 ms p50",
        ));
    }

    if let Some(own) = &own {
        let bridges = bridge_rss_kib();
        if let Some(median) = median(bridges.clone()) {
            rows.push(Row {
                what: "live idle sandbox (bridge RSS)".into(),
                n: bridges.len(),
                p50: mib(median),
                p95: "—".into(),
                budget: "≤ 4 MiB",
            });
        }
        rows.push(Row::single(
            "server RSS with the sessions live",
            mib(rss_kib(own.pid)),
            "—",
        ));
    }
    if args.streams > 0 {
        let mut fan_out = fan_out(&client, &session, args.streams).await?;
        rows.push(Row::timed(
            "a turn's `done` reaching each open stream",
            &mut fan_out,
            "≥ 20,000 streams",
        ));
        if let Some(own) = &own {
            rows.push(Row::single(
                "server RSS after the streams",
                mib(rss_kib(own.pid)),
                "—",
            ));
        }
    }
    for id in &ids {
        client
            .call(Method::DELETE, &format!("/api/sessions/{id}"), None)
            .await?;
    }
    if args.tools > 0 {
        rows.extend(tools::rows(&client, args.tools).await?);
    }

    let mut table =
        String::from("| what | n | p50 | p95 | budget (DESIGN §6) |\n|---|---|---|---|---|\n");
    for row in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            row.what, row.n, row.p50, row.p95, row.budget
        );
    }
    print!("{table}");
    if let Some(path) = args.report {
        std::fs::write(&path, format!("{}\n{table}", header(own.is_some())))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("ash: report written to {}", path.display());
    }
    Ok(())
}

/// Sends `count` messages to the session one after another, each as soon as the last is
/// done; returns each turn's time to its `done`.
async fn closed_loop(
    client: &Client,
    session: &str,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut turns = Vec::with_capacity(count);
    for i in 0..count {
        turns.push(turn(client, session, i).await?);
    }
    Ok(turns)
}

/// Sends one message and waits for its turn's `done`.
async fn turn(client: &Client, session: &str, i: usize) -> anyhow::Result<Duration> {
    let clock = Instant::now();
    let mut frames = client
        .send_message(session, &json!({"content": format!("bench {i}")}))
        .await?;
    let mut done = false;
    while let Some(frame) = frames.next().await {
        done |= frame.map_err(anyhow::Error::msg)?.event == "done";
    }
    anyhow::ensure!(done, "turn {i} ended without done");
    Ok(clock.elapsed())
}

/// Deploys an echo agent with a warm pool of one and times `n` creates, each once the pool
/// has refilled; then removes the agent and its sessions.
async fn from_warm_pool(client: &Client, n: usize) -> anyhow::Result<Vec<Duration>> {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let files = json!([{"path": "CLAUDE.md", "content": encode("# bench")}, {"path": "ash.toml", "content": encode("[pool]\nprewarm = 1\n")}]);
    client
        .call(
            Method::POST,
            "/api/agents",
            Some(&json!({"name": "ash-bench-warm", "files": files})),
        )
        .await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.call(Method::GET, "/health", None).await?["pool"]["warm"].as_i64() < Some(1) {
            anyhow::ensure!(Instant::now() < deadline, "the warm pool did not refill");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let clock = Instant::now();
        client
            .call(
                Method::POST,
                "/api/sessions",
                Some(&json!({"agent": "ash-bench-warm"})),
            )
            .await?;
        times.push(clock.elapsed());
    }
    client
        .call(Method::DELETE, "/api/agents/ash-bench-warm", None)
        .await?;
    Ok(times)
}

/// Pauses or stops the session, then times its resume.
async fn pause_then_resume(client: &Client, session: &str, how: &str) -> anyhow::Result<Duration> {
    client
        .call(
            Method::POST,
            &format!("/api/sessions/{session}/{how}"),
            Some(&json!({})),
        )
        .await?;
    let clock = Instant::now();
    client
        .call(
            Method::POST,
            &format!("/api/sessions/{session}/resume"),
            Some(&json!({})),
        )
        .await?;
    Ok(clock.elapsed())
}

/// Opens `streams` live streams on the session, runs one turn, and times when each stream
/// sees its `done`, from the moment the turn was sent.
async fn fan_out(client: &Client, session: &str, streams: usize) -> anyhow::Result<Vec<Duration>> {
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

/// A server this benchmark started: this binary's `ash start` on a fresh data dir.
struct OwnServer {
    url: String,
    key: String,
    pid: u32,
    started: Duration,
    data: PathBuf,
    _child: tokio::process::Child,
}

impl OwnServer {
    async fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let data = std::env::temp_dir().join(format!("ash-bench-{}-{nanos}", std::process::id()));
        let key = format!("ash_bench_{nanos:x}");
        let clock = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .args(["start", "--port", "0", "--host", "127.0.0.1"])
            .env("ASH_DATA_DIR", &data)
            .env("ASH_API_KEY", &key)
            .env("ASH_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let url = loop {
            match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(url) = line.strip_prefix("ash: listening on ") {
                        break url.to_owned();
                    }
                }
                _ => bail!(
                    "the benchmark's server did not start; run `ash start` by hand to see why"
                ),
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let started = clock.elapsed();
        let pid = child.id().context("server exited")?;
        Ok(Self {
            url,
            key,
            pid,
            started,
            data,
            _child: child,
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .flatten()
        .unwrap_or(0)
}

/// Where every sandbox sees its bridge; `/proc/<pid>/exe` shows that path for bridges.
const BRIDGE_IN_SANDBOX: &str = "/ash/bridge";

/// RSS of every running sandbox bridge on this machine.
fn bridge_rss_kib() -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.as_os_str() == BRIDGE_IN_SANDBOX)
        })
        .map(rss_kib)
        .collect()
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Date, machine and command, for the report file.
fn header(own_server: bool) -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("MemTotal:")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let command: Vec<String> = std::env::args().collect();
    let server = if own_server {
        "started by the benchmark (`ash start`, fresh data dir, SQLite)"
    } else {
        "an already running server"
    };
    format!(
        "# ash bench — {date}\n\n- **Machine**: {cores} cores, {cpu}, {memory}, Linux {}\n- **Command**: `{}`\n- **Server**: {server}; `echo` backend, client on the same machine over loopback\n",
        read("/proc/sys/kernel/osrelease").trim(),
        command.join(" ")
    )
}
