//! Sandboxes: one bubblewrap jail per session, with the bridge inside.
//!
//! A sandbox sees a read-only `/usr` (and the `/bin`, `/lib` links into it), a few
//! read-only files from `/etc`, fresh `/proc` (its kernel knobs read-only, its kernel
//! surfaces masked), `/dev` and `/tmp`, its own workspace at `/workspace`, and the bridge
//! binary at `/ash/bridge` — never the host's `/`, the data dir or another session's files.
//! Every namespace is unshared (network included), the process runs as uid 1000 with no
//! capabilities, in a new session, under a seccomp filter (`seccomp`), and dies with the
//! server. On the host it is never root: a root server gives each sandbox an unprivileged uid
//! of its own (`users`). The environment is cleared and rebuilt from an allowlist plus the
//! agent's env. The host walks a workspace only fd-relative, never following a link (`tree`).
//!
//! The host speaks to the bridge over a socketpair inherited as fd 3, the only descriptor the
//! sandbox gets. If the bridge dies, every command waiting on it sees its event stream end, so
//! no caller waits forever.

mod bwrap;
mod client;
pub mod disk;
pub mod doctor;
mod files;
mod limits;
pub mod logs;
mod proxy;
pub mod seccomp;
mod tree;
mod users;
mod workspace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ash_protocol::{Backend, Command, Event};

pub use client::Turn;
pub use files::{FileEntry, FileError, Workspace};
pub use limits::{default_memory_budget, LimitHit, Limits};
pub use proxy::{Api, Proxy, Upstream};
pub use users::{SandboxUsers, UidRange};
use workspace::{copy_into_workspace, latest, snapshot};

/// How long a new bridge may take to say `ready` and accept its backend.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a bridge may take to exit after `shutdown` before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a sandbox could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot prepare the sandbox workspace: {0}")]
    Workspace(String),
    #[error("the data dir's disk is full: {0}")]
    DiskFull(String),
    #[error("cannot start bwrap at {path}: {source} (install it with apt-get install bubblewrap)")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("sandbox failed to start: {0}")]
    Start(String),
    #[error("the sandbox's bridge has exited")]
    Gone,
    #[error("the agent did not answer the interrupt within {0:?}; its turn may still be running")]
    Unanswered(std::time::Duration),
}

impl SandboxError {
    /// A workspace operation's I/O failure: [`Self::DiskFull`] when it ran out of space.
    fn workspace(context: &str, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull => Self::DiskFull(format!("{context}{e}")),
            _ => Self::Workspace(format!("{context}{e}")),
        }
    }
}

/// How long an interrupt waits for the agent to confirm it (a `command` agent answers for
/// itself, and a hostile one may never do).
const INTERRUPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the sandbox's pieces live on the host.
#[derive(Debug, Clone)]
pub struct SandboxHost {
    /// The `bwrap` executable.
    pub bwrap: PathBuf,
    /// The `ash-bridge` executable, bound read-only into every sandbox.
    pub bridge: PathBuf,
    /// Parent of every sandbox's own folder.
    pub root: PathBuf,
    /// Parent of every session's snapshot folder.
    pub snapshots: PathBuf,
    /// The cgroup folder (under each controller) holding this server's sandboxes; one per
    /// data dir, so servers on one machine never touch each other's.
    pub cgroup_group: String,
    /// Which host uid each sandbox runs as.
    pub users: std::sync::Arc<SandboxUsers>,
    /// Bytes of memory all sandboxes together may use (enforced where there are cgroups).
    pub memory_budget: u64,
    /// Each workspace a filesystem of its own (its quota), where the host allows it.
    pub disks: Option<std::sync::Arc<disk::Disks>>,
}

impl SandboxHost {
    /// Whether sandboxes get cgroup limits (memory, processes, CPU) here, or rlimits only.
    pub fn cgroups_available(&self) -> bool {
        limits::available()
    }

    /// Removes cgroups that sandboxes of stopped or crashed servers left empty.
    pub async fn sweep_cgroups(&self) {
        let _ = tokio::task::spawn_blocking(limits::sweep).await;
    }

    /// The sandbox's workspace folder (it may not exist; with quotas, call [`Self::ready`]
    /// first).
    pub fn workspace(&self, id: &str) -> PathBuf {
        match self.disks {
            Some(_) => self.root.join(id).join(disk::MOUNT).join("workspace"),
            None => self.root.join(id).join("workspace"),
        }
    }

    /// Mounts the sandbox's filesystem when workspaces have quotas (making it on first use);
    /// nothing otherwise.
    pub async fn ready(&self, id: &str) -> Result<(), SandboxError> {
        let Some(disks) = self.disks.clone() else {
            return Ok(());
        };
        let sandbox = self.root.join(id);
        let provider = disks.clone();
        let provided = tokio::task::spawn_blocking(move || provider.provide(&sandbox))
            .await
            .map_err(|e| SandboxError::Workspace(e.to_string()))?
            .map_err(|e| SandboxError::workspace("cannot mount the workspace's filesystem: ", e))?;
        if provided {
            // Off the caller's path: the next new sandbox finds one ready.
            tokio::task::spawn_blocking(move || disks.refill());
        }
        Ok(())
    }

    /// The sandbox's last durable snapshot, if it has one.
    pub fn latest_snapshot(&self, id: &str) -> Option<PathBuf> {
        latest(&self.snapshots.join(id))
    }

    /// Brings back a lost workspace from the last snapshot; `false` when there is neither.
    pub async fn restore_workspace(&self, id: &str) -> Result<bool, SandboxError> {
        self.ready(id).await?;
        let workspace = self.workspace(id);
        if workspace.is_dir() {
            return Ok(true);
        }
        let Some(snapshot) = self.latest_snapshot(id) else {
            return Ok(false);
        };
        tokio::task::spawn_blocking(move || copy_into_workspace(&snapshot, &workspace))
            .await
            .map_err(|e| SandboxError::Workspace(e.to_string()))?
            .map_err(|e| SandboxError::workspace("restore failed: ", e))?;
        Ok(true)
    }

    /// Whether the sandbox has files to start from here: its workspace, or a local snapshot.
    pub async fn has_files(&self, id: &str) -> Result<bool, SandboxError> {
        self.ready(id).await?;
        Ok(self.workspace(id).is_dir() || self.latest_snapshot(id).is_some())
    }

    /// The whole workspace as a tar.gz (for the snapshot store), at most `limit` bytes of
    /// content; links are kept as links, never followed.
    pub async fn pack_workspace(&self, id: &str, limit: u64) -> Result<Vec<u8>, SandboxError> {
        self.ready(id).await?;
        let workspace = self.workspace(id);
        tokio::task::spawn_blocking(move || {
            let dir = files::Workspace::open(&workspace)
                .map_err(|e| SandboxError::workspace("cannot open the workspace: ", e))?;
            dir.pack_all(limit)
                .map_err(|e| SandboxError::Workspace(format!("cannot pack the workspace: {e}")))
        })
        .await
        .map_err(|e| SandboxError::Workspace(e.to_string()))?
    }

    /// The workspace's [`files::Workspace::fingerprint`]: whether it changed since a snapshot.
    pub async fn fingerprint_workspace(&self, id: &str) -> Result<u64, SandboxError> {
        self.ready(id).await?;
        let workspace = self.workspace(id);
        tokio::task::spawn_blocking(move || {
            files::Workspace::open(&workspace)
                .and_then(|dir| dir.fingerprint())
                .map_err(|e| SandboxError::workspace("cannot read the workspace: ", e))
        })
        .await
        .map_err(|e| SandboxError::Workspace(e.to_string()))?
    }

    /// Makes a bundle from [`Self::pack_workspace`] the workspace of a sandbox that has none
    /// here; the bundle is checked whole before anything is written. Returns the files written.
    pub async fn unpack_workspace(
        &self,
        id: &str,
        bundle: bytes::Bytes,
        limit: u64,
    ) -> Result<usize, SandboxError> {
        self.ready(id).await?;
        let workspace = self.workspace(id);
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&workspace)
                .map_err(|e| SandboxError::workspace("cannot make the workspace: ", e))?;
            let dir = files::Workspace::open(&workspace)
                .map_err(|e| SandboxError::workspace("cannot open the workspace: ", e))?;
            dir.unpack(&bundle, limit).map_err(|e| {
                let _ = std::fs::remove_dir_all(&workspace);
                SandboxError::Workspace(format!("cannot unpack the snapshot: {e}"))
            })
        })
        .await
        .map_err(|e| SandboxError::Workspace(e.to_string()))?
    }

    /// Makes a durable snapshot of the sandbox's workspace; returns once it is on disk.
    pub async fn snapshot(&self, id: &str) -> Result<(), SandboxError> {
        self.ready(id).await?;
        let (workspace, dir) = (self.workspace(id), self.snapshots.join(id));
        tokio::task::spawn_blocking(move || snapshot(&workspace, &dir))
            .await
            .map_err(|e| SandboxError::Workspace(e.to_string()))?
            .map_err(|e| SandboxError::workspace("snapshot failed: ", e))
    }

    /// Copies one sandbox's workspace (or, if it is gone, its last snapshot) to be another's.
    pub async fn fork(&self, from: &str, to: &str) -> Result<(), SandboxError> {
        self.ready(from).await?;
        self.ready(to).await?;
        let source = self.workspace(from);
        let snapshot = self.latest_snapshot(from);
        let target = self.workspace(to);
        tokio::task::spawn_blocking(move || {
            let source = if source.is_dir() {
                source
            } else {
                snapshot.ok_or_else(|| std::io::Error::other("nothing left to copy"))?
            };
            copy_into_workspace(&source, &target)
        })
        .await
        .map_err(|e| SandboxError::Workspace(e.to_string()))?
        .map_err(|e| SandboxError::workspace("fork failed: ", e))
    }

    /// Deletes the sandbox's workspace and snapshots.
    pub async fn forget(&self, id: &str) {
        let (sandbox, snapshots) = (self.root.join(id), self.snapshots.join(id));
        let _ = tokio::task::spawn_blocking(move || {
            disk::Disks::unmount(&sandbox);
            let _ = std::fs::remove_dir_all(sandbox);
            let _ = std::fs::remove_dir_all(snapshots);
        })
        .await;
    }
}

/// Claims the sandbox's host uid (a root server's; `None` otherwise), keeping the one its
/// workspace already belongs to when that is free, and gives the workspace to it.
fn own_workspace(
    users: &SandboxUsers,
    workspace: &Path,
) -> std::io::Result<Option<users::UidClaim>> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::symlink_metadata(workspace)?.uid();
    let claim = users.claim(Some(owner))?;
    if let Some(claim) = &claim {
        if claim.uid != owner {
            tree::chown(&tree::open_dir(workspace)?, claim.uid)?;
        }
    }
    Ok(claim)
}

/// What one sandbox runs.
pub struct SandboxSpec<'a> {
    pub id: &'a str,
    /// Copied into the workspace when the workspace does not exist yet.
    pub agent_dir: &'a Path,
    /// Replaces the workspace's `CLAUDE.md` when the workspace is first made.
    pub system_prompt: Option<&'a str>,
    pub backend: Backend,
    /// Added to the allowlisted environment; cannot override the bridge's own variables.
    pub env: &'a BTreeMap<String, String>,
    pub limits: Limits,
    /// The model endpoint the sandbox reaches through a model proxy, with its key (which
    /// stays on the host); `None` for backends that call no model.
    pub upstream: Option<proxy::Upstream>,
    /// Syscalls of [`seccomp::BLOCKED`] this sandbox may make (the operator granted them).
    pub syscalls: &'a [String],
}

/// A running sandbox. Dropping it kills the sandbox.
pub struct Sandbox {
    child: tokio::sync::Mutex<tokio::process::Child>,
    bridge: client::BridgeClient,
    /// What it printed lately.
    logs: Arc<logs::Logs>,
    /// `None` where the host offers no usable cgroups (rlimits still apply).
    cgroups: Option<limits::Cgroups>,
    /// Stops with the sandbox.
    _proxy: Option<proxy::Proxy>,
    /// The sandbox's own host uid (a root server's); released after the bridge is gone.
    _uid: Option<users::UidClaim>,
}

impl Sandbox {
    /// Prepares the workspace (a copy of the agent on first start, or of the session's last
    /// snapshot when its workspace was lost), starts bwrap with the
    /// bridge and configures the backend. Returns once the bridge is ready for queries.
    pub async fn start(
        host: &SandboxHost,
        mut spec: SandboxSpec<'_>,
    ) -> Result<Self, SandboxError> {
        host.ready(spec.id).await?;
        let workspace = host.workspace(spec.id);
        if !workspace.exists() {
            let snapshot = host.latest_snapshot(spec.id);
            let (agent, to) = (spec.agent_dir.to_owned(), workspace.clone());
            let prompt = spec.system_prompt.map(str::to_owned);
            tokio::task::spawn_blocking(move || match snapshot {
                // A session whose workspace is gone comes back from its last snapshot.
                Some(snapshot) => copy_into_workspace(&snapshot, &to),
                None => {
                    copy_into_workspace(&agent, &to)?;
                    prompt.map_or(Ok(()), |prompt| {
                        std::fs::write(to.join("CLAUDE.md"), prompt)
                    })
                }
            })
            .await
            .map_err(|e| SandboxError::Workspace(e.to_string()))?
            .map_err(|e| SandboxError::workspace("", e))?;
        }
        let uid = {
            let (users, workspace) = (host.users.clone(), workspace.clone());
            tokio::task::spawn_blocking(move || own_workspace(&users, &workspace))
                .await
                .map_err(|e| SandboxError::Start(e.to_string()))?
                .map_err(|e| SandboxError::Start(format!("cannot give the sandbox a uid: {e}")))?
        };
        let cgroups = {
            // One folder per sandbox, not per session (nor reused by a later server): a
            // session's next sandbox never meets what its last one leaves behind (the kill of
            // its processes, the removal of its folder, its counters).
            static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pid = std::process::id();
            let (id, limits) = (format!("{}.{pid}.{n}", spec.id), spec.limits);
            let group = host.cgroup_group.clone();
            let budget = host.memory_budget;
            tokio::task::spawn_blocking(move || {
                limits::Cgroups::create(&group, &id, limits, budget)
            })
            .await
            .map_err(|e| SandboxError::Start(e.to_string()))?
            .map_err(|e| SandboxError::Start(format!("cannot set up cgroups: {e}")))?
        };
        let run_dir = host.root.join(spec.id).join("run");
        let proxy = spec
            .upstream
            .take()
            .map(|upstream| proxy::Proxy::start(&run_dir, upstream, uid.as_ref().map(|c| c.uid)))
            .transpose()?;
        let sources = bwrap::Sources {
            bridge: &host.bridge,
            workspace: &workspace,
            proxy: proxy.as_ref().map(|_| run_dir.as_path()),
        };
        let (mut child, socket) = bwrap::spawn(
            host,
            sources,
            uid.as_ref().map(|claim| claim.uid),
            &spec,
            cgroups.as_ref(),
        )?;
        let logs = Arc::new(logs::Logs::default());
        let bridge = match tokio::time::timeout(
            START_TIMEOUT,
            client::BridgeClient::connect(socket, logs.clone()),
        )
        .await
        {
            Ok(Ok(bridge)) => bridge,
            Ok(Err(_)) | Err(_) => {
                return Err(SandboxError::Start(bwrap::failure(&mut child).await))
            }
        };
        bwrap::log_stderr(&mut child, spec.id.to_owned(), logs.clone());
        logs.push(
            ash_core::LogLevel::System,
            "sandbox started; its bridge is up",
        );
        let sandbox = Self {
            child: tokio::sync::Mutex::new(child),
            bridge,
            logs,
            cgroups,
            _proxy: proxy,
            _uid: uid,
        };
        let configure = Command::Configure {
            id: client::next_id(),
            backend: spec.backend,
        };
        let mut answer = sandbox.bridge.send(configure).await?;
        match tokio::time::timeout(START_TIMEOUT, answer.next()).await {
            Ok(Some(Event::Done { .. })) => Ok(sandbox),
            Ok(Some(Event::Error { error, .. })) => Err(SandboxError::Start(error)),
            _ => Err(SandboxError::Start(
                "the bridge did not accept its backend in time".into(),
            )),
        }
    }

    /// Starts one turn; its events arrive on the returned [`Turn`].
    pub async fn query(
        &self,
        prompt: serde_json::Value,
        session_id: String,
        options: ash_protocol::QueryOptions,
    ) -> Result<Turn, SandboxError> {
        self.bridge
            .send(Command::Query {
                id: client::next_id(),
                prompt,
                session_id,
                options,
            })
            .await
    }

    /// The lines of its log after index `after` (-1: all it keeps).
    pub fn logs(&self, after: i64) -> Vec<ash_core::LogLine> {
        self.logs.after(after)
    }

    /// Runs a shell command in the workspace; the bridge kills it at `timeout`.
    pub async fn exec(&self, command: String, timeout: Duration) -> Result<Event, SandboxError> {
        let timeout_ms = timeout.as_millis() as u64;
        let mut answer = self
            .bridge
            .send(Command::Exec {
                id: client::next_id(),
                command,
                timeout_ms,
            })
            .await?;
        answer.next().await.ok_or(SandboxError::Gone)
    }

    /// Stops the running command `target`; returns once the bridge has acted on it.
    pub async fn interrupt(&self, target: &str) -> Result<(), SandboxError> {
        let command = Command::Interrupt {
            id: client::next_id(),
            target: target.to_owned(),
        };
        let mut answer = self.bridge.send(command).await?;
        let answered = tokio::time::timeout(INTERRUPT_WAIT, async {
            while let Some(event) = answer.next().await {
                if matches!(event, Event::Done { .. } | Event::Error { .. }) {
                    break;
                }
            }
        });
        answered
            .await
            .map_err(|_| SandboxError::Unanswered(INTERRUPT_WAIT))
    }

    /// Asks the bridge to exit and kills it if it does not; the workspace stays on disk.
    pub async fn stop(&self) {
        if let Ok(mut answer) = self
            .bridge
            .send(Command::Shutdown {
                id: client::next_id(),
            })
            .await
        {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, answer.next()).await;
        }
        let mut child = self.child.lock().await;
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.kill_all();
            // Killed processes leave their cgroup a moment later; give them that moment so the
            // cgroup can be removed (a server start sweeps up any that outlive it).
            for _ in 0..20 {
                if cgroups.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Limits the sandbox ran into since the last call (empty without cgroups).
    pub fn limit_hits(&self) -> Vec<LimitHit> {
        self.cgroups
            .as_ref()
            .map(limits::Cgroups::new_hits)
            .unwrap_or_default()
    }

    /// True while the bridge process is running.
    pub async fn is_alive(&self) -> bool {
        matches!(self.child.lock().await.try_wait(), Ok(None))
    }
}
