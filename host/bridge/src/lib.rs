//! The bridge: the one process Ash starts inside each sandbox.
//!
//! It talks to the host over the socket inherited as fd `ASH_BRIDGE_FD` (the host keeps the
//! other end of a socketpair, so there is no socket file to find, race for or chmod), says
//! `ready`, takes a `configure` naming the backend, then runs `query` commands, each in its
//! own task so `interrupt` can stop one. All events go out through one writer task, a line
//! at a time. A line from the host that is not a valid command gets an `error` event (with
//! the line's `id` when it has one) and the bridge carries on; losing the host connection
//! ends the bridge.

mod claude;
mod command;
mod echo;
mod exec;
mod failure;
mod openai;

use std::collections::HashMap;
use std::os::fd::FromRawFd;

use ash_protocol::{encode, Backend, Command, Event, LineReader, MAX_LINE_BYTES, PROTOCOL_VERSION};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where a backend sends the events of the commands it runs.
pub(crate) type Events = mpsc::Sender<Event>;

/// Runs the bridge until the host hangs up or sends `shutdown`.
pub fn main() -> std::process::ExitCode {
    // Before the runtime opens descriptors of its own.
    let fd = match host_fd().and_then(|fd| keep_to_ourselves(fd).map(|()| fd)) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("ash-bridge: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(fd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ash-bridge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps the host socket away from everything the bridge starts: it is closed on exec, every
/// other inherited descriptor is closed now, and the bridge becomes non-dumpable, so a process
/// of the same uid can neither ptrace it nor open `/proc/<bridge>/fd/<socket>`.
fn keep_to_ourselves(socket: i32) -> Result<(), String> {
    let fail = |what: &str| format!("cannot {what}: {}", std::io::Error::last_os_error());
    // SAFETY: fcntl, close_range and prctl on this process's own descriptors and attributes.
    unsafe {
        if libc::fcntl(socket, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(fail("mark the host socket close-on-exec"));
        }
        let above = socket as u32 + 1;
        if libc::syscall(libc::SYS_close_range, above, u32::MAX, 0) < 0 {
            return Err(fail("close inherited descriptors"));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 {
            return Err(fail("make the bridge non-dumpable"));
        }
    }
    Ok(())
}

/// The host socket's descriptor, from `ASH_BRIDGE_FD`.
fn host_fd() -> Result<i32, String> {
    std::env::var("ASH_BRIDGE_FD")
        .map_err(|_| {
            "ASH_BRIDGE_FD is not set: the bridge is started by the ash server".to_owned()
        })?
        .parse()
        .map_err(|_| "ASH_BRIDGE_FD is not a file descriptor number".to_owned())
}

async fn run(fd: i32) -> Result<(), String> {
    // SAFETY: the host passes this fd for us alone; nothing else in this process owns it.
    let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let socket = tokio::net::UnixStream::from_std(socket).map_err(|e| e.to_string())?;
    let (read, mut write) = socket.into_split();

    let (events, mut outbox) = mpsc::channel::<Event>(256);
    let writer = tokio::spawn(async move {
        while let Some(event) = outbox.recv().await {
            if write.write_all(&encode(&event)).await.is_err() {
                break;
            }
        }
    });
    let _ = events
        .send(Event::Ready {
            protocol: PROTOCOL_VERSION,
        })
        .await;

    let mut commands = LineReader::new(BufReader::new(read), MAX_LINE_BYTES);
    let mut bridge = Bridge {
        events: events.clone(),
        backend: None,
        running: HashMap::new(),
    };
    while let Some(line) = commands.next::<Value>().await {
        let outcome = match line {
            Ok(value) => bridge.handle(value).await,
            Err(ash_protocol::ProtocolError::Io(e)) => {
                return Err(format!("host connection failed: {e}"))
            }
            Err(e) => bridge.reply_error(String::new(), e.to_string()).await,
        };
        if outcome == Flow::Stop {
            break;
        }
    }
    drop(bridge);
    drop(events);
    let _ = writer.await;
    Ok(())
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

enum Driver {
    Echo { delay: std::time::Duration },
    Command(command::Program),
    Openai { model: String, api_key_env: String },
    ClaudeCode(claude::Claude),
}

struct Bridge {
    events: Events,
    backend: Option<Driver>,
    running: HashMap<String, JoinHandle<()>>,
}

impl Bridge {
    async fn handle(&mut self, line: Value) -> Flow {
        let id = line
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let command = match serde_json::from_value::<Command>(line) {
            Ok(command) => command,
            Err(e) => return self.reply_error(id, format!("invalid command: {e}")).await,
        };
        self.running.retain(|_, task| !task.is_finished());
        match command {
            Command::Configure { id, backend } => {
                let result = match backend {
                    Backend::Echo { delay_ms } => Ok(Driver::Echo {
                        delay: std::time::Duration::from_millis(delay_ms),
                    }),
                    Backend::Command { argv } => {
                        command::Program::start(&argv, self.events.clone()).map(Driver::Command)
                    }
                    Backend::Openai {
                        model, api_key_env, ..
                    } => Ok(Driver::Openai { model, api_key_env }),
                    Backend::ClaudeCode {
                        path,
                        model,
                        permission_mode,
                        api_key_env,
                        ..
                    } => claude::Claude::start(path, model, permission_mode, api_key_env)
                        .await
                        .map(Driver::ClaudeCode),
                };
                match result {
                    Ok(driver) => {
                        self.backend = Some(driver);
                        self.send(Event::Done { id }).await;
                    }
                    Err(e) => self.send(Event::error(id, e)).await,
                }
            }
            Command::Query {
                id,
                prompt,
                session_id,
                options,
            } => {
                let events = self.events.clone();
                let task = match &self.backend {
                    None => {
                        return self
                            .reply_error(id, "query before configure: no backend chosen".into())
                            .await
                    }
                    Some(Driver::Echo { delay }) => {
                        let turn = echo::Turn {
                            id: id.clone(),
                            prompt,
                            session_id,
                            options,
                            delay: *delay,
                        };
                        tokio::spawn(echo::run(turn, events))
                    }
                    Some(Driver::Openai { model, api_key_env }) => {
                        let turn = openai::Turn {
                            id: id.clone(),
                            prompt,
                            session_id,
                            options,
                            model: model.clone(),
                            api_key_env: api_key_env.clone(),
                        };
                        tokio::spawn(openai::run(turn, events))
                    }
                    Some(Driver::ClaudeCode(claude)) => {
                        let turn = claude.turn(id.clone(), prompt, options);
                        tokio::spawn(claude::run(turn, events))
                    }
                    Some(Driver::Command(program)) => {
                        let query = Command::Query {
                            id: id.clone(),
                            prompt,
                            session_id,
                            options,
                        };
                        tokio::spawn(program.forward(query))
                    }
                };
                self.running.insert(id, task);
            }
            Command::Interrupt { id, target } => {
                if let Some(Driver::Command(program)) = &self.backend {
                    program.forward(Command::Interrupt { id, target }).await;
                    return Flow::Continue;
                }
                if let Some(task) = self.running.remove(&target) {
                    task.abort();
                    // Once the task is gone, what it started is stopped (backends kill their
                    // processes as they are dropped), so `interrupted` means stopped.
                    let _ = task.await;
                    self.send(Event::error(target, "interrupted")).await;
                }
                self.send(Event::Done { id }).await;
            }
            Command::Exec {
                id,
                command,
                timeout_ms,
            } => {
                let task = tokio::spawn(exec::run(
                    id.clone(),
                    command,
                    timeout_ms,
                    self.events.clone(),
                ));
                self.running.insert(id, task);
            }
            Command::Shutdown { id } => {
                for task in self.running.values() {
                    task.abort();
                }
                self.send(Event::Done { id }).await;
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn reply_error(&self, id: String, error: String) -> Flow {
        self.send(Event::error(id, error)).await;
        Flow::Continue
    }

    async fn send(&self, event: Event) {
        let _ = self.events.send(event).await;
    }
}
