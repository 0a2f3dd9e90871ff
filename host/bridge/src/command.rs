//! The `command` backend: a program from the agent folder that speaks the bridge protocol on
//! stdio. The bridge forwards `query` and `interrupt` lines to its stdin and relays the events
//! it prints; a line that is not a valid event becomes an `error` with no id, which the host
//! shows to every turn in flight without ending them. Its stderr becomes `log` events. If it exits, every command still waiting on it
//! gets an `error` event, so no turn hangs on a dead program.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use ash_protocol::{encode, Command, Event, LineReader, MAX_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;

use crate::Events;

/// Longest stderr line relayed as a `log` event; the rest of the line is dropped.
const MAX_LOG_LINE: usize = 4096;

pub(crate) struct Program {
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    waiting: Arc<Mutex<HashSet<String>>>,
    events: Events,
}

impl Program {
    pub(crate) fn start(argv: &[String], events: Events) -> Result<Self, String> {
        let (program, args) = argv.split_first().ok_or("backend.argv is empty")?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start backend program {program:?}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let waiting = Arc::new(Mutex::new(HashSet::new()));

        let relay = events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(mut text)) = lines.next_line().await {
                text.truncate(text.floor_char_boundary(MAX_LOG_LINE));
                let _ = relay
                    .send(Event::Log {
                        level: "stderr".into(),
                        text,
                    })
                    .await;
            }
        });

        let (relay, open) = (events.clone(), waiting.clone());
        tokio::spawn(async move {
            let mut lines = LineReader::new(BufReader::new(stdout), MAX_LINE_BYTES);
            while let Some(line) = lines.next::<Event>().await {
                let event = match line {
                    Ok(event) => event,
                    // Not attributable to one command: an error with no id reaches every turn in flight.
                    Err(e) => Event::error("", format!("backend program printed a bad line: {e}")),
                };
                if let Event::Done { id } | Event::Error { id, .. } = &event {
                    // An empty id matches no waiting command, so nothing is removed for it.
                    open.lock().expect("lock").remove(id);
                }
                let _ = relay.send(event).await;
            }
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            let stranded: Vec<String> = open.lock().expect("lock").drain().collect();
            for id in stranded {
                let error = format!("backend program exited ({status}) before finishing");
                let _ = relay.send(Event::error(id, error)).await;
            }
        });
        Ok(Self {
            stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
            waiting,
            events,
        })
    }

    /// Sends a command to the program; a failed write answers the command with an `error`.
    pub(crate) fn forward(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (stdin, waiting, events) = (
            self.stdin.clone(),
            self.waiting.clone(),
            self.events.clone(),
        );
        async move {
            let id = command.id().to_owned();
            waiting.lock().expect("lock").insert(id.clone());
            if let Err(e) = stdin.lock().await.write_all(&encode(&command)).await {
                waiting.lock().expect("lock").remove(&id);
                let _ = events
                    .send(Event::error(
                        id,
                        format!("backend program is not reading: {e}"),
                    ))
                    .await;
            }
        }
    }
}
