//! An observer that appends one JSON line per event to `/data/audit.jsonl`: when, which hook,
//! which session and agent, and the event's data — in full for lifecycle hooks, and for
//! message and tool hooks only its size unless the operator sets `messages = "full"`.
//!
//! The file is only ever appended to. Past `max_mb` it is renamed `audit-<ms>.jsonl` and a new
//! one started; pruning old files is the operator's call. A batch is written with one write
//! call, so a crash loses at most the batch being written, never an earlier line.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/observe"],
    world: "ash:observe/observer@0.1.0",
    generate_all,
});

use std::fs::OpenOptions;
use std::io::Write;

use ash::host::config;
use ash::host::log::{log, Level};
use exports::ash::observe::observe::{Event, Guest};
use serde_json::{json, Value};

const FILE: &str = "/data/audit.jsonl";

struct Audit;

impl Guest for Audit {
    fn observe(batch: Vec<Event>) {
        let full = config::get("messages").as_deref() == Some("full");
        let mut lines = String::new();
        for event in &batch {
            let lifecycle =
                event.hook.starts_with("session-") || event.hook.starts_with("sandbox-");
            let data = if lifecycle || full {
                serde_json::from_str(&event.data).unwrap_or(Value::Null)
            } else {
                json!({ "bytes": event.data.len() })
            };
            let line = json!({
                "atMs": event.at_ms,
                "hook": event.hook,
                "name": event.name,
                "sessionId": event.session_id,
                "agent": event.agent,
                "data": data,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        rotate_if_large(batch.first().map_or(0, |e| e.at_ms));
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(FILE)
            .and_then(|mut file| file.write_all(lines.as_bytes()));
        if let Err(e) = written {
            // A trap makes the host count the batch as dropped and, if it keeps failing,
            // quarantine the plugin: the operator sees the trail is broken.
            panic!("cannot append to {FILE}: {e}");
        }
    }
}

export!(Audit);

fn rotate_if_large(at_ms: u64) {
    let max = config::get("max_mb")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(64)
        << 20;
    let Ok(meta) = std::fs::metadata(FILE) else {
        return;
    };
    if meta.len() >= max {
        let kept = format!("/data/audit-{at_ms}.jsonl");
        match std::fs::rename(FILE, &kept) {
            Ok(()) => log(
                Level::Info,
                &format!("audit trail continued; the old one is {kept}"),
            ),
            Err(e) => log(Level::Warn, &format!("cannot start a new audit file: {e}")),
        }
    }
}
