//! The session runtime: which sessions have a sandbox on this node, capacity and eviction,
//! the warm pool, the turn driver, and the fan-out of each session's log to its followers.
//!
//! It knows nothing of HTTP. Every frontend — the REST edge today; tools, MCP and workflows
//! next — drives sessions through [`Runtime`]'s methods and gets a [`RuntimeError`] when one
//! refuses or fails, which says what happened in a variant, not a status code. The runtime is
//! built once with everything it uses (the store, the plugins, the sandbox host); nothing
//! reaches it through a request.
//!
//! Failure rules: a frame is in the log before any follower sees it; a turn always ends in the
//! log (`done`, after an `error` when it failed), even when its sandbox dies, the store fails
//! it (logged once the store is back) or the server stops (at the end of the grace period);
//! a turn left open by a crash is closed by [`Runtime::close_open_turns`] at the next start.

mod agents;
mod attachments;
mod cluster;
mod credentials;
mod drain;
mod error;
mod hooks;
mod lifecycle;
mod metrics;
mod pool;
mod queue;
mod sessions;
mod snapshots;
mod stream;
mod tools;
mod turn;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ash_plugin_host::Plugins;
use ash_sandbox::{Limits, SandboxUsers, UidRange};
use ash_snapshots::SnapshotStore;
use ash_store::{Appended, Appends, Store};

/// How long a stop waits for snapshot uploads in flight.
const UPLOAD_WAIT: Duration = Duration::from_secs(10);

pub use agents::{blocking, place_folder, read_manifest, validate_env, FileChange};
pub use attachments::NewAttachment;
pub use cluster::{Cluster, Placement};
pub use credentials::Sealer;
pub use error::{Missing, RuntimeError, StoreFault};
pub use lifecycle::{now, ExecOutcome, Files, NewSession, EXEC_MAX, MAX_COMMAND_BYTES};
pub use metrics::Metrics;
pub use queue::NewQueueItem;
pub use stream::{Frame, FrameStream};
pub use tools::{Caller, ToolOutput};
pub use turn::{Answer, MAX_CONTENT_BLOCKS, MAX_CONTENT_CHARS};

/// What the runtime needs to know; the CLI fills it from flags, env and the settings file.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Sandboxes, snapshots and managed agents live under it.
    pub data_dir: PathBuf,
    pub max_sandboxes: usize,
    /// Resource limits of every sandbox, unless its agent's `ash.toml` sets its own.
    pub limits: Limits,
    /// A session whose sandbox has had no turn for this long is paused and its sandbox freed.
    pub idle_timeout: Duration,
    /// How long a stop waits for running turns to end before it ends them
    /// (`shutdown_grace_secs`).
    pub shutdown_grace: Duration,
    /// The wait before a failed queue item's first retry (`queue_retry_base_ms`).
    pub queue_retry_base: Duration,
    /// Log each tool call's arguments and result too, each cut at 4 KiB (`tool_log_payloads`).
    pub tool_log_payloads: bool,
    pub bwrap: PathBuf,
    pub bridge: PathBuf,
    /// The host uids a root server gives its sandboxes, one each (`sandbox_uids`); `None`
    /// takes the `ash` line of `/etc/subuid`, else the built-in range. Unused when the server
    /// is not root.
    pub sandbox_uids: Option<UidRange>,
    /// Syscalls of the sandbox filter's refusals an agent may ask back in its `ash.toml`
    /// (`sandbox_grant_syscalls`); empty grants none.
    pub sandbox_grant_syscalls: Vec<String>,
    /// Bytes of memory all sandboxes together may use (`sandbox_memory_budget_mb`): their
    /// parent cgroup's limit, so `max_sandboxes` × the memory limit cannot overcommit the host.
    pub memory_budget: u64,
    /// The size of each workspace's own filesystem (`sandbox_disk_mb`, `sandbox_disk_files`);
    /// `None` turns workspace quotas off. Applies where the server is root with loop devices.
    pub disk_quota: Option<ash_sandbox::disk::Quota>,
    /// How much one turn, and one session's log, may hold.
    pub event_caps: EventCaps,
    /// The runner id this node holds sandboxes as in a cluster (its sessions' `runnerId`);
    /// `None` for the single process.
    pub runner: Option<String>,
    /// A node of a cluster (a coordinator or a runner): agents' folders are read from the
    /// snapshot store, where every coordinator sends them.
    pub cluster: bool,
}

/// Caps on what an agent's events may add to the log; a turn past one ends with a `limit`
/// frame.
#[derive(Debug, Clone, Copy)]
pub struct EventCaps {
    /// Bytes of events (and stored messages) one turn may log.
    pub turn_bytes: usize,
    /// Events one turn may log.
    pub turn_events: usize,
    /// Events one session's log may hold.
    pub session_events: i64,
    /// Bytes of events and messages one session's log may hold.
    pub session_bytes: u64,
}

impl Default for EventCaps {
    fn default() -> Self {
        Self {
            turn_bytes: 64 << 20,
            turn_events: 20_000,
            session_events: 1_000_000,
            session_bytes: 1 << 30,
        }
    }
}

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("refusing to start sandboxes: {0}")]
    SandboxUsers(String),
}

/// The session runtime of one node. Cheap to share behind an `Arc`.
pub struct Runtime {
    pub config: RuntimeConfig,
    pub store: Store,
    pub plugins: Plugins,
    pub metrics: Metrics,
    sealer: Option<Sealer>,
    sessions: sessions::Sessions,
    drain: drain::Drain,
    snapshots: SnapshotStore,
    /// Snapshot uploads and deletes in flight, waited for (a while) at shutdown.
    uploads: tokio_util::task::TaskTracker,
    /// Other servers' appends, until [`Self::start`] follows them.
    appends: std::sync::Mutex<Option<Appends>>,
    /// Held while a managed agent's folder changes ([`Self::agent_folder_lock`]).
    agent_folders: tokio::sync::Mutex<()>,
    /// Told of each new queue item, so the queue runs it without waiting for its next look.
    queued: tokio::sync::Notify,
    /// The tools' compiled input schemas.
    schemas: tools::Schemas,
    /// The client of `http` tools: no redirects (a redirect could lead off the allowed hosts).
    http: reqwest::Client,
}

/// What the runtime is built from.
pub struct Parts {
    pub store: Store,
    pub plugins: Plugins,
    /// Opens stored credentials; none: credentials are off.
    pub sealer: Option<Sealer>,
    /// Where workspace snapshots go.
    pub snapshots: SnapshotStore,
    /// The appends other servers make to the shared log (Postgres), to wake followers here.
    pub appends: Option<Appends>,
}

impl Runtime {
    /// Checks the sandbox settings, claims the sandboxes' uids and prepares the workspace
    /// filesystems.
    pub fn open(config: RuntimeConfig, parts: Parts) -> Result<Self, OpenError> {
        let Parts {
            store,
            plugins,
            sealer,
            snapshots,
            appends,
        } = parts;
        if let Some(unknown) = config.sandbox_grant_syscalls.iter().find(|name| {
            !ash_sandbox::seccomp::BLOCKED
                .iter()
                .any(|b| &b.name == name)
        }) {
            return Err(OpenError::Config(format!(
                "sandbox_grant_syscalls: {unknown:?} is not a syscall the sandbox filter refuses (see docs/operations.md)"
            )));
        }
        let users =
            SandboxUsers::for_this_process(config.sandbox_uids).map_err(OpenError::SandboxUsers)?;
        let disks = match (config.disk_quota, &users) {
            (Some(quota), SandboxUsers::PerSandbox { .. })
                if ash_sandbox::disk::support().is_ok() =>
            {
                let root = config.data_dir.join("sandboxes");
                std::fs::create_dir_all(&root).map_err(|e| {
                    OpenError::Config(format!("cannot create {}: {e}", root.display()))
                })?;
                let disks = ash_sandbox::disk::Disks::prepare(&config.data_dir, &root, quota)
                    .map_err(|e| {
                        OpenError::SandboxUsers(format!(
                            "cannot make the workspace filesystem template: {e}"
                        ))
                    })?;
                Some(Arc::new(disks))
            }
            _ => None,
        };
        Ok(Self {
            sessions: sessions::Sessions::new(&config, users, disks),
            metrics: Metrics::new(config.max_sandboxes),
            config,
            store,
            plugins,
            sealer,
            drain: Default::default(),
            snapshots,
            uploads: Default::default(),
            appends: std::sync::Mutex::new(appends),
            agent_folders: tokio::sync::Mutex::default(),
            queued: tokio::sync::Notify::new(),
            schemas: tools::Schemas::default(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("the HTTP client builds"),
        })
    }

    /// Closes in the log the turns an earlier run left open (it stopped mid-turn), and
    /// deletes the warm sandboxes' folders it left.
    pub async fn close_open_turns(&self) -> Result<(), ash_store::StoreError> {
        self.sessions.clear_stale_warm().await;
        let error = "the server stopped during this turn; send the message again";
        for session in close_turns(&self.store, error).await? {
            tracing::warn!(session = %session, "closed a turn the last run left open");
        }
        Ok(())
    }

    /// Closes in the log the turns runner `node` left open: it was declared dead, so they
    /// will never end there. Their followers here are woken (followers elsewhere hear of it
    /// from the database).
    pub async fn close_turns_of(&self, node: &str) -> Result<(), ash_store::StoreError> {
        let store = self.store.clone().on_node(node);
        let error = "the runner running this turn stopped answering and was declared dead; send the message again (the session starts on another runner)";
        for session in close_turns(&store, error).await? {
            self.sessions.wake(session);
            tracing::warn!(session = %session, runner = node, "closed a turn of a dead runner");
        }
        Ok(())
    }

    /// Starts the runtime's own work: the host check (logged), the idle sweep and the warm
    /// pools. Stops with [`Self::shutdown`].
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move { runtime.sessions.check_host(&runtime.config).await });
        let runtime = self.clone();
        tokio::spawn(async move {
            for agent in runtime.store.list_agents().await.unwrap_or_default() {
                tokio::spawn(pool::fill(runtime.clone(), agent.name));
            }
        });
        if let Some(appends) = self.appends.lock().expect("lock").take() {
            tokio::spawn(wake_followers(self.clone(), appends));
        }
        // A node that holds sandboxes runs queue items (a coordinator's go to its runners).
        if self.config.max_sandboxes > 0 {
            tokio::spawn(queue::run(self.clone()));
        }
        tokio::spawn(sweep_idle(self.clone()))
    }

    /// The stop's first steps ([`drain`]): no new work, the grace period for running turns,
    /// their end in the log, then every follower is told to go. Returns once they have been.
    pub async fn drain(&self) {
        drain::drain(&self.drain, self.config.shutdown_grace).await
    }

    /// A stop has begun: take no new work.
    pub fn draining(&self) -> bool {
        self.drain.began()
    }

    /// Resolves when the followers have been told to go (the listener may close).
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.drain.closed()
    }

    /// Waits a while for snapshot uploads, stops every sandbox (workspaces stay for the next
    /// start) and flushes the observers.
    pub async fn shutdown(self: &Arc<Self>) {
        self.uploads.close();
        if tokio::time::timeout(UPLOAD_WAIT, self.uploads.wait())
            .await
            .is_err()
        {
            tracing::warn!("stopping: snapshot uploads still running after {UPLOAD_WAIT:?}; those sessions keep their previous snapshot in the store");
        }
        self.sessions.stop_all().await;
        // Observers get every event queued before the server stops.
        let runtime = self.clone();
        let _ = tokio::task::spawn_blocking(move || runtime.plugins.flush()).await;
    }

    /// A session was placed on this runner by a coordinator: whatever this node kept of it
    /// from an earlier stay (a sandbox, a workspace) is older than the snapshot store's, so it
    /// goes, and the session's next start brings the workspace back from the store.
    pub async fn adopt(&self, raw_id: &str) -> Result<(), RuntimeError> {
        let id = ash_core::SessionId::parse(raw_id)?;
        let _still = self.sessions.hold(id)?;
        self.sessions.end(id).await;
        Ok(())
    }

    /// This runner lost its place in the cluster (its heartbeats went unanswered, or it was
    /// declared dead): its sessions are being started elsewhere, so every sandbox of a session
    /// stops now. Workspaces stay until the session is placed here again ([`Self::adopt`]).
    pub async fn fence(&self) {
        self.sessions.stop_sessions().await;
    }

    /// Sends every session's workspace with a sandbox here to the snapshot store (a runner
    /// handing its sessions back); [`Self::shutdown`] waits for the uploads.
    pub async fn snapshot_all(self: &Arc<Self>) {
        for id in self.sessions.held().await {
            self.snapshot_later(id);
        }
    }

    /// (live sandboxes, sandboxes in a turn, warm sandboxes, warm sandboxes starting).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (live, running) = self.sessions.counts();
        let pool = self.sessions.pool();
        (live, running, pool.len(), pool.warming())
    }

    /// The agent was deployed (or redeployed): its warm pool is brought to its version.
    pub fn agent_deployed(self: &Arc<Self>, agent: ash_core::AgentName) {
        tokio::spawn(pool::fill(self.clone(), agent));
    }
}

/// Ends every turn `store`'s node began and did not end, with `error` + `done`; returns
/// their sessions. A turn whose end came meanwhile is left as it is.
async fn close_turns(
    store: &Store,
    error: &str,
) -> Result<Vec<ash_core::SessionId>, ash_store::StoreError> {
    let mut closed = Vec::new();
    for session in store.unfinished_turns().await? {
        let closing = stream::closing(session, Some(error));
        let ends = Some(ash_store::TurnMark::Ends);
        match store.append(session, &[], &closing, ends).await {
            Ok(_) => closed.push(session),
            Err(ash_store::StoreError::TurnClosed(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(closed)
}

/// Wakes the followers here of each session another server appends to, so a client can
/// follow a session through any server on the database, a turn running elsewhere included.
/// While the database is out of reach it tries again with a growing wait, then wakes every
/// follower (announcements may have been missed meanwhile).
async fn wake_followers(runtime: Arc<Runtime>, mut appends: Appends) {
    let mut wait = Duration::from_millis(100);
    loop {
        match appends.next().await {
            Ok(Appended::Stream(stream)) => {
                let session = stream
                    .strip_prefix("events/")
                    .map(ash_core::SessionId::parse);
                if let Some(Ok(session)) = session {
                    runtime.sessions.wake(session);
                }
                wait = Duration::from_millis(100);
            }
            Ok(Appended::Missed) => runtime.sessions.wake_all(),
            Err(e) => {
                tracing::warn!("cannot hear other servers' appends ({e}); followers of their turns wait until the database is back");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Parks idle sessions, checking at half the idle timeout (at most every minute).
async fn sweep_idle(runtime: Arc<Runtime>) {
    let timeout = runtime.config.idle_timeout;
    let every = (timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        runtime.sweep_idle(timeout).await;
    }
}
