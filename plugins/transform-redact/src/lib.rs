//! Masks secrets in agent events before Ash stores or streams them: API-key shapes of the
//! common providers, private-key blocks, and the operator's own `patterns` (one regular
//! expression per line). Every string in the event's JSON is scanned; the JSON stays valid.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/observe"],
    world: "ash:observe/transformer@0.1.0",
    generate_all,
});

use ash::host::{config, log};
use exports::ash::observe::transform::{Event, Guest, Verdict};

const MASK: &str = "[REDACTED]";

/// Key shapes masked without any configuration.
const BUILT_IN: [&str; 7] = [
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
    r"AKIA[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{36,}",
    r"github_pat_[A-Za-z0-9_]{40,}",
    r"xox[abprs]-[A-Za-z0-9-]{10,}",
    r"AIza[0-9A-Za-z_-]{35}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
];

fn secrets() -> &'static Vec<Regex> {
    static SECRETS: OnceLock<Vec<Regex>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let configured = config::get("patterns").unwrap_or_default();
        let mut all: Vec<Regex> = BUILT_IN
            .iter()
            .map(|p| Regex::new(p).expect("built-in pattern"))
            .collect();
        for pattern in configured.lines().map(str::trim).filter(|p| !p.is_empty()) {
            match Regex::new(pattern) {
                Ok(regex) => all.push(regex),
                Err(e) => log::log(
                    log::Level::Warn,
                    &format!("pattern {pattern:?} ignored: {e}"),
                ),
            }
        }
        all
    })
}

/// Masks every secret in the strings of `value`; true when something was masked.
fn redact(value: &mut Value) -> bool {
    match value {
        Value::String(text) => {
            let mut changed = false;
            for secret in secrets() {
                if secret.is_match(text) {
                    *text = secret.replace_all(text, MASK).into_owned();
                    changed = true;
                }
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| redact(v) | changed),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, v| redact(v) | changed),
        _ => false,
    }
}

struct Redact;

impl Guest for Redact {
    fn transform(event: Event) -> Verdict {
        let Ok(mut data) = serde_json::from_str::<Value>(&event.data) else {
            return Verdict::Keep;
        };
        if redact(&mut data) {
            Verdict::Replace(data.to_string())
        } else {
            Verdict::Keep
        }
    }
}

export!(Redact);
