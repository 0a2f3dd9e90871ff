//! Example 2: a transformer sees each agent message before it is stored and streamed, and
//! keeps it or replaces it. This one replaces a word the operator chose (config `word`,
//! letters and digits only) with another (`with`, default `[hidden]`).
//!
//! What it shows: reading config through `ash:host/config`, and answering `replace` with
//! new JSON. The host checks the answer (JSON, at most 1 MiB) and, if this plugin fails,
//! drops or passes the message as the operator chose.

wit_bindgen::generate!({
    path: ["../../../wit/host", "../../../wit/observe"],
    world: "ash:observe/transformer@0.1.0",
    generate_all,
});

use ash::host::config;
use exports::ash::observe::transform::{Event, Guest, Verdict};

struct Replace;

impl Guest for Replace {
    fn transform(event: Event) -> Verdict {
        let Some(word) = config::get("word") else {
            return Verdict::Keep;
        };
        // Only letters and digits: then replacing inside the JSON text cannot break it.
        if word.is_empty() || !word.chars().all(char::is_alphanumeric) {
            return Verdict::Keep;
        }
        let with = config::get("with")
            .filter(|w| {
                w.chars()
                    .all(|c| c.is_alphanumeric() || "[]_- ".contains(c))
            })
            .unwrap_or_else(|| "[hidden]".into());
        if event.data.contains(&word) {
            Verdict::Replace(event.data.replace(&word, &with))
        } else {
            Verdict::Keep
        }
    }
}

export!(Replace);
