//! Cost of one transformer hook call, against DESIGN §6 (observe/transform hook, small event,
//! p50 ≤ 5 µs). Loads the real `transform-redact` component; build it first with
//! `scripts/build-plugins.sh`. Run: `cargo bench -p ash-plugin-host`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ash_plugin_host::{Event, OnFailure, PluginConfig, Plugins};

const CALLS: usize = 20_000;

fn main() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/transform-redact");
    let plugins = Plugins::load(&[PluginConfig {
        path: dir,
        sha256: None,
        config: Default::default(),
        on_failure: OnFailure::Drop,
    }])
    .expect("run scripts/build-plugins.sh first");
    let event = |text: &str| Event {
        hook: "message-out".into(),
        session_id: "00000000-0000-4000-8000-000000000000".into(),
        agent: "bench".into(),
        name: "message".into(),
        data: serde_json::json!({"type": "assistant", "message": {"role": "assistant",
            "content": [{"type": "text", "text": text}]}})
        .to_string(),
        at_ms: 0,
    };
    for (what, event) in [
        (
            "small event, nothing to mask (keep)",
            event("Echo: hello there"),
        ),
        (
            "small event with a key (replace)",
            event("Echo: sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345"),
        ),
    ] {
        for _ in 0..1_000 {
            black_box(plugins.transform(event.clone()));
        }
        let mut times: Vec<Duration> = (0..CALLS)
            .map(|_| {
                let started = Instant::now();
                black_box(plugins.transform(black_box(event.clone())));
                started.elapsed()
            })
            .collect();
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "transform-redact, {what}: p50 {:.2} µs, p95 {:.2} µs, p99 {:.2} µs ({CALLS} calls)",
            at(0.50).as_secs_f64() * 1e6,
            at(0.95).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
        );
    }
}
