use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ash_protocol::{
    encode, Command, Event, LineReader, ProtocolError, MAX_LINE_BYTES, PROTOCOL_VERSION,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::SandboxError;

/// Events buffered per command before the bridge reader waits for the consumer.
const TURN_BUFFER: usize = 256;

/// A fresh command id, unique within this server process.
pub(crate) fn next_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

type Pending = Arc<Mutex<HashMap<String, mpsc::Sender<Event>>>>;

/// The events answering one command. The stream ends after `done`, after a final `error`,
/// or when the bridge goes away (then the last item is `None` without a `done`).
pub struct Turn {
    id: String,
    events: mpsc::Receiver<Event>,
}

impl Turn {
    /// The command id, which `interrupt` names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// The host side of one bridge connection: routes each event to the command it answers.
pub(crate) struct BridgeClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
}

impl BridgeClient {
    /// Waits for the bridge's `ready` and starts routing its events.
    /// Connects to the bridge; its `log` events go to `logs`.
    pub(crate) async fn connect(
        socket: tokio::net::UnixStream,
        logs: std::sync::Arc<crate::logs::Logs>,
    ) -> Result<Self, SandboxError> {
        let (read, writer) = socket.into_split();
        let mut lines = LineReader::new(BufReader::new(read), MAX_LINE_BYTES);
        match lines.next::<Event>().await {
            Some(Ok(Event::Ready {
                protocol: PROTOCOL_VERSION,
            })) => {}
            Some(Ok(Event::Ready { protocol })) => {
                return Err(SandboxError::Start(format!(
                    "bridge speaks protocol {protocol}, this server {PROTOCOL_VERSION}"
                )))
            }
            _ => return Err(SandboxError::Gone),
        }
        let pending = Pending::default();
        tokio::spawn(route(lines, pending.clone(), logs));
        Ok(Self {
            writer: tokio::sync::Mutex::new(writer),
            pending,
        })
    }

    /// Sends a command and returns the stream of events answering it.
    pub(crate) async fn send(&self, command: Command) -> Result<Turn, SandboxError> {
        let id = command.id().to_owned();
        let (tx, events) = mpsc::channel(TURN_BUFFER);
        self.pending.lock().expect("lock").insert(id.clone(), tx);
        if self
            .writer
            .lock()
            .await
            .write_all(&encode(&command))
            .await
            .is_err()
        {
            self.pending.lock().expect("lock").remove(&id);
            return Err(SandboxError::Gone);
        }
        Ok(Turn { id, events })
    }
}

/// Delivers the bridge's events until it hangs up; then every waiting command's stream ends.
async fn route(
    mut lines: LineReader<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    logs: std::sync::Arc<crate::logs::Logs>,
) {
    while let Some(line) = lines.next::<Event>().await {
        let event = match line {
            Ok(event) => event,
            Err(ProtocolError::Io(_)) => break,
            Err(e) => Event::error("", format!("the sandbox sent a bad line: {e}")),
        };
        match &event {
            Event::Log { level, text } => {
                tracing::debug!(level = %level, "bridge: {text}");
                logs.push(ash_core::LogLevel::parse(level), text);
            }
            Event::Ready { .. } => tracing::warn!("bridge said ready twice"),
            // An error that names no command is a notice to every command in flight.
            Event::Error { id, .. } if id.is_empty() => {
                let waiting: Vec<_> = pending.lock().expect("lock").values().cloned().collect();
                for tx in waiting {
                    let _ = tx.send(event.clone()).await;
                }
            }
            Event::Message { id, .. }
            | Event::Error { id, .. }
            | Event::Done { id }
            | Event::ExecResult { id, .. } => {
                let last = !matches!(event, Event::Message { .. });
                let tx = {
                    let mut pending = pending.lock().expect("lock");
                    if last {
                        pending.remove(id)
                    } else {
                        pending.get(id).cloned()
                    }
                };
                match tx {
                    Some(tx) => {
                        let _ = tx.send(event).await;
                    }
                    None => tracing::debug!(command = %id, "event for a command nobody waits on"),
                }
            }
        }
    }
    pending.lock().expect("lock").clear();
}
