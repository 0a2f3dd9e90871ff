//! Example 1: the smallest useful plugin. An observer gets events in batches, after they
//! happened and off the request path, and answers nothing; this one writes a line to the
//! server's log for each, through the `ash:host/log` import.

// Generates the bindings of the world this plugin implements: the imports it may call
// (`ash::host::log`, `ash::host::config`) and the trait it must implement (`Guest`).
wit_bindgen::generate!({
    path: ["../../../wit/host", "../../../wit/observe"],
    world: "ash:observe/observer@0.1.0",
    generate_all,
});

use ash::host::log::{log, Level};
use exports::ash::observe::observe::{Event, Guest};

struct ObserveLog;

impl Guest for ObserveLog {
    fn observe(batch: Vec<Event>) {
        for event in batch {
            // Hook names may be added in any 0.x release: handle what you know, skip the rest.
            let what = match event.hook.as_str() {
                "session-created" | "session-ended" => "session",
                "message-in" | "message-out" => "message",
                _ => "event",
            };
            log(
                Level::Info,
                &format!(
                    "{what}: {} on session {} of agent {} ({} bytes)",
                    event.hook,
                    event.session_id,
                    event.agent,
                    event.data.len()
                ),
            );
        }
    }
}

export!(ObserveLog);
