//! Sessions and their sandboxes.
//!
//! The database says which sessions exist and their status; this module holds the live
//! sandboxes. A session whose sandbox is gone (the server restarted, or the bridge died) gets
//! a new one over its kept workspace on its next message, with the agent's and the session's
//! env re-applied. One turn runs at a time per session: a second message while one runs is
//! refused ([`RuntimeError::Busy`]). `ASH_MAX_SANDBOXES` bounds live sandboxes; past it, a new
//! one is refused ([`RuntimeError::Unavailable`]) unless an idle one can be parked.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ash_core::{
    Agent, FrameKind, HookPoint, LimitOverrides, ParkReason, Session, SessionId, Transition,
};
use ash_protocol::Backend;
use ash_sandbox::doctor::{self, Verdict};
use ash_sandbox::{
    Api, Limits, Sandbox, SandboxError, SandboxHost, SandboxSpec, SandboxUsers, Upstream,
};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hooks;
use crate::pool::{self, Pool, WARM_PREFIX};
use crate::stream::{publish, Hub};
use crate::{Missing, Runtime, RuntimeConfig, RuntimeError};

/// Whether starting a sandbox on a full node may evict another.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    MakeRoom,
    OnlyIfFree,
}

/// Whether a session is being created (it has files nowhere yet) or already exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    New,
    Existing,
}

/// The live sandboxes of this node.
pub(crate) struct Sessions {
    host: SandboxHost,
    slots: Mutex<HashMap<SessionId, Arc<Slot>>>,
    max_sandboxes: usize,
    /// The server's default sandbox limits (an agent may set its own).
    limits: Limits,
    /// The bridge binary as configured (the host's `bridge` may be the server's own copy).
    host_bridge_as_configured: std::path::PathBuf,
    capacity: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    pool: Pool,
}

/// A session's place in the runtime: its sandbox, its hub and its turn lock.
pub(crate) struct Slot {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    /// Held by a turn, and by a pause, stop, resume or fork while it changes the session:
    /// one at a time, whichever comes first; the others get 409. (A delete writes `ended`
    /// first instead, which whoever holds the lock next reads.)
    turn: Arc<tokio::sync::Mutex<()>>,
    hub: Hub,
    /// Its upload to the snapshot store.
    pub(crate) upload: Mutex<crate::snapshots::Upload>,
    /// The workspace's fingerprint when its last snapshot was stored from this node.
    pub(crate) stored: Mutex<Option<u64>>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            live: Default::default(),
            turn: Default::default(),
            hub: Hub::new(),
            upload: Default::default(),
            stored: Default::default(),
        }
    }
}

/// A session's running sandbox.
pub(crate) struct Live {
    pub(crate) sandbox: Sandbox,
    /// The bridge command id of the running turn, for `interrupt`.
    current: Mutex<Option<String>>,
    /// When a turn last started or ended, for the idle sweep and eviction.
    last_used: Mutex<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl Live {
    /// Names the running turn's bridge command, for `interrupt`.
    pub(crate) fn running(&self, command: &str) {
        *self.current.lock().expect("lock") = Some(command.to_owned());
    }
}

/// A session's turn lock, held.
pub(crate) type TurnLock = tokio::sync::OwnedMutexGuard<()>;

/// Held while a turn runs: counts the sandbox as running, names the turn for `interrupt`,
/// and frees the session for its next turn when dropped.
pub(crate) struct TurnGuard {
    live: Arc<Live>,
    running: Arc<AtomicUsize>,
    _turn: TurnLock,
}

impl TurnGuard {
    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.live.sandbox
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.live.current.lock().expect("lock").take();
        *self.live.last_used.lock().expect("lock") = Instant::now();
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Sessions {
    pub(crate) fn new(
        config: &RuntimeConfig,
        users: SandboxUsers,
        disks: Option<Arc<ash_sandbox::disk::Disks>>,
    ) -> Self {
        let bridge = users
            .bridge_for_sandboxes(&config.bridge)
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot copy the bridge to /run/ash/bin ({e}); sandboxes bind {}",
                    config.bridge.display()
                );
                config.bridge.clone()
            });
        let host = SandboxHost {
            bwrap: config.bwrap.clone(),
            bridge,
            root: config.data_dir.join("sandboxes"),
            snapshots: config.data_dir.join("snapshots"),
            cgroup_group: cgroup_group(&config.data_dir),
            users: Arc::new(users),
            memory_budget: config.memory_budget,
            disks,
        };
        Self {
            host,
            limits: config.limits,
            host_bridge_as_configured: config.bridge.clone(),
            slots: Mutex::default(),
            max_sandboxes: config.max_sandboxes,
            capacity: Arc::new(Semaphore::new(config.max_sandboxes)),
            running: Arc::default(),
            pool: Pool::default(),
        }
    }

    /// Where sandboxes keep their workspaces and snapshots.
    pub(crate) fn host(&self) -> &SandboxHost {
        &self.host
    }

    /// Logs what this host can do for sandboxes (the `ash doctor` findings) and removes what
    /// sandboxes of earlier runs left in the kernel (empty cgroups).
    pub(crate) async fn check_host(&self, config: &RuntimeConfig) {
        let data_dir = config.data_dir.clone();
        let (bwrap, bridge) = (self.host.bwrap.clone(), self.host.bridge.clone());
        let users = self.host.users.clone();
        let quotas = match &self.host.disks {
            Some(disks) => Ok(disks.quota),
            None => Err(ash_sandbox::disk::support()
                .err()
                .unwrap_or_else(|| "turned off (sandbox_disk_mb = 0)".into())),
        };
        let findings = tokio::task::spawn_blocking(move || {
            doctor::check(&bwrap, &bridge, Ok(&users), quotas, &data_dir)
        })
        .await
        .unwrap_or_default();
        for f in findings {
            match f.verdict {
                Verdict::Ok => tracing::info!("{}: {}", f.what, f.detail),
                Verdict::Degraded => tracing::warn!("{}: {} (fix: {})", f.what, f.detail, f.fix),
                Verdict::Broken => tracing::error!(
                    "{}: {} (fix: {}); sessions cannot start",
                    f.what,
                    f.detail,
                    f.fix
                ),
            }
        }
        if self.host.cgroups_available() {
            let (budget, each) = (
                self.host.memory_budget >> 20,
                self.limits.memory_bytes >> 20,
            );
            let most = each * self.max_sandboxes as u64;
            if most > budget {
                tracing::info!("memory budget: all sandboxes together are held to {budget} MiB (sandbox_memory_budget_mb); {} sandboxes of {each} MiB could ask for {most} MiB, so under pressure the kernel kills inside sandboxes, never outside them", self.max_sandboxes);
            } else {
                tracing::info!("memory budget: all sandboxes together are held to {budget} MiB");
            }
            self.host.sweep_cgroups().await;
        }
    }

    /// (live sandboxes, sandboxes in a turn).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.max_sandboxes - self.capacity.available_permits(),
            self.running.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn slot(&self, id: SessionId) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("lock")
            .entry(id)
            .or_default()
            .clone()
    }

    /// The session's sandbox here, if it has one (asking makes no slot for it).
    pub(crate) async fn sandbox_of(&self, id: SessionId) -> Option<Arc<Live>> {
        let slot = self.slots.lock().expect("lock").get(&id).cloned()?;
        let live = slot.live.lock().await.clone();
        live
    }

    /// The warm pool.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stops a sandbox that belongs to no session and deletes its files.
    pub(crate) async fn retire(&self, id: &str, live: &Live) {
        live.sandbox.stop().await;
        self.host.forget(id).await;
    }

    /// Deletes warm sandboxes' folders that an earlier run left behind.
    pub(crate) async fn clear_stale_warm(&self) {
        let root = self.host.root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(WARM_PREFIX) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        })
        .await;
    }

    /// Sessions with a sandbox and no running turn, with when they were last used.
    async fn idle_sandboxes(&self) -> Vec<(SessionId, Instant)> {
        let mut idle = Vec::new();
        for (id, slot) in self.all_slots() {
            let Ok(live) = slot.live.try_lock() else {
                continue;
            };
            if let Some(live) = live
                .as_ref()
                .filter(|l| l.current.lock().expect("lock").is_none())
            {
                idle.push((id, *live.last_used.lock().expect("lock")));
            }
        }
        idle
    }

    /// A turn in the session's sandbox, under its turn lock (from [`Self::hold`]).
    pub(crate) fn begin_turn(&self, live: &Arc<Live>, turn: TurnLock) -> TurnGuard {
        self.running.fetch_add(1, Ordering::Relaxed);
        *live.last_used.lock().expect("lock") = Instant::now();
        TurnGuard {
            live: live.clone(),
            running: self.running.clone(),
            _turn: turn,
        }
    }

    /// Wakes the session's followers here, if it has any: another server appended to its log.
    pub(crate) fn wake(&self, id: SessionId) {
        let slot = self.slots.lock().expect("lock").get(&id).cloned();
        if let Some(slot) = slot {
            slot.hub.wake();
        }
    }

    /// Wakes every follower here (other servers' appends may have been missed).
    pub(crate) fn wake_all(&self) {
        let slots: Vec<_> = self.slots.lock().expect("lock").values().cloned().collect();
        for slot in slots {
            slot.hub.wake();
        }
    }

    /// The session's hub, which publishes its log as it grows.
    pub(crate) fn hub(&self, id: SessionId) -> Hub {
        self.slot(id).hub.clone()
    }

    /// Stops the session's running turn; `false` when none is running.
    pub(crate) async fn interrupt(&self, id: SessionId) -> Result<bool, RuntimeError> {
        let slot = self.slots.lock().expect("lock").get(&id).cloned();
        let Some(slot) = slot else { return Ok(false) };
        let live = slot.live.lock().await.clone();
        let Some(live) = live else { return Ok(false) };
        let target = live.current.lock().expect("lock").clone();
        let Some(target) = target else {
            return Ok(false);
        };
        live.sandbox.interrupt(&target).await.map_err(|e| match e {
            SandboxError::Unanswered(_) => RuntimeError::Unanswered(e.to_string()),
            e => RuntimeError::internal("interrupt failed", e),
        })?;
        Ok(true)
    }

    /// Forgets a sandbox that failed mid-turn, so the next message starts a new one. The
    /// old sandbox is gone before a new one of the session can start.
    pub(crate) async fn discard(&self, id: SessionId) {
        Self::stop_live(&self.slot(id)).await;
    }

    /// Stops the slot's sandbox, holding its place until it is gone.
    async fn stop_live(slot: &Slot) {
        let mut live = slot.live.lock().await;
        if let Some(old) = live.take() {
            old.sandbox.stop().await;
        }
    }

    /// Stops the session's sandbox, if any, and deletes its workspace and snapshots.
    pub(crate) async fn end(&self, id: SessionId) {
        let slot = self.slots.lock().expect("lock").remove(&id);
        if let Some(slot) = slot {
            Self::stop_live(&slot).await;
        }
        self.host.forget(&id.to_string()).await;
    }

    /// Claims the session's turn lock, so nothing else changes it meanwhile (and its workspace
    /// holds still); busy while a turn — or a pause, stop or fork — has it.
    pub(crate) fn hold(&self, id: SessionId) -> Result<TurnLock, RuntimeError> {
        self.slot(id)
            .turn
            .clone()
            .try_lock_owned()
            .map_err(|_| RuntimeError::Busy)
    }

    /// Copies one session's workspace to a new session.
    pub(crate) async fn fork(&self, from: SessionId, to: SessionId) -> Result<(), RuntimeError> {
        self.host
            .fork(&from.to_string(), &to.to_string())
            .await
            .map_err(RuntimeError::sandbox("Failed to fork the workspace"))
    }

    /// Writes a durable snapshot of the session's workspace.
    pub(crate) async fn snapshot(&self, id: SessionId) -> Result<(), RuntimeError> {
        self.host
            .snapshot(&id.to_string())
            .await
            .map_err(RuntimeError::sandbox("Failed to snapshot the workspace"))
    }

    /// True when the session has a running sandbox.
    pub(crate) async fn is_warm(&self, id: SessionId) -> bool {
        let live = self.slot(id).live.lock().await.clone();
        match live {
            Some(live) => live.sandbox.is_alive().await,
            None => false,
        }
    }

    /// Stops every sandbox, keeping workspaces for the next start (warm ones are deleted), and
    /// removes the server's own copy of the bridge.
    pub(crate) async fn stop_all(&self) {
        for (id, live) in self.pool.drain(None) {
            self.retire(&id, &live).await;
        }
        self.stop_sessions().await;
        if self.host.bridge != self.host_bridge_as_configured {
            let _ = tokio::fs::remove_file(&self.host.bridge).await;
        }
    }

    /// Every session's slot, taken out of the registry's lock.
    fn all_slots(&self) -> Vec<(SessionId, Arc<Slot>)> {
        self.slots
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect()
    }

    /// The sessions with a sandbox here.
    pub(crate) async fn held(&self) -> Vec<SessionId> {
        let mut held = Vec::new();
        for (id, slot) in self.all_slots() {
            if slot.live.lock().await.is_some() {
                held.push(id);
            }
        }
        held
    }

    /// Stops every session's sandbox, keeping workspaces.
    pub(crate) async fn stop_sessions(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            let live = slot.live.lock().await.take();
            if let Some(live) = live {
                live.sandbox.stop().await;
            }
        }
    }
}

impl Runtime {
    /// The session's live sandbox, starting one over its workspace if it has none (an
    /// existing session's workspace is brought back from the snapshot store when this node
    /// has lost it).
    pub(crate) async fn live(
        &self,
        session: &Session,
        system_prompt: Option<&str>,
        origin: Origin,
    ) -> Result<Arc<Live>, RuntimeError> {
        let slot = self.sessions.slot(session.id);
        let mut live = slot.live.lock().await;
        if let Some(current) = live.as_ref() {
            if current.sandbox.is_alive().await {
                return Ok(current.clone());
            }
            tracing::warn!(session = %session.id, "sandbox had exited; starting a new one over its workspace");
            *live = None;
        }
        let agent = self
            .store
            .get_agent(&session.agent_name)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Agent))?;
        if origin == Origin::Existing {
            self.restore_if_gone(session.id).await?;
        }
        let started = self.start_for(session, &agent, system_prompt).await?;
        *live = Some(started.clone());
        Ok(started)
    }

    async fn start_for(
        &self,
        session: &Session,
        agent: &Agent,
        system_prompt: Option<&str>,
    ) -> Result<Arc<Live>, RuntimeError> {
        // Agent env, then the credential's key, then the session's own extraEnv.
        let mut env = agent.env.clone();
        if let Some(credential) = &session.credential_id {
            let (var, key) = self.credential_env(credential).await?;
            env.insert(var.to_owned(), key);
        }
        env.extend(session.env.clone());
        let id = session.id.to_string();
        self.start_sandbox(&id, agent, &env, system_prompt, Room::MakeRoom)
            .await
    }

    /// Starts a sandbox `id` for the agent; when the node is full, `room` says whether it may
    /// evict (a session may; a warm sandbox for the pool may not, or the pool would park the
    /// very sessions it exists to serve).
    pub(crate) async fn start_sandbox(
        &self,
        id: &str,
        agent: &Agent,
        env: &BTreeMap<String, String>,
        system_prompt: Option<&str>,
        room: Room,
    ) -> Result<Arc<Live>, RuntimeError> {
        let capacity = &self.sessions.capacity;
        let permit = match capacity.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Full: free a warm sandbox or park the least recently used idle session, then retry.
            Err(_) if room == Room::MakeRoom && self.evict_one().await => {
                capacity.clone().try_acquire_owned().ok()
            }
            Err(_) => None,
        };
        let permit = permit.ok_or_else(|| {
            RuntimeError::Unavailable(format!("Sandbox capacity reached ({} live, all busy); end a session or raise ASH_MAX_SANDBOXES", self.sessions.max_sandboxes))
        })?;
        let (agent_dir, manifest) = self.agent_files(agent).await?;
        self.check_grants(&manifest)?;
        let limits = merge_limits(self.config.limits, &manifest.limits);
        let (env, upstream) = model_upstream(&manifest.backend, env)?;
        let spec = SandboxSpec {
            id,
            agent_dir: &agent_dir,
            system_prompt,
            backend: manifest.backend,
            env: &env,
            limits,
            upstream,
            syscalls: &manifest.sandbox.syscalls,
        };
        let clock = Instant::now();
        let sandbox = Sandbox::start(&self.sessions.host, spec)
            .await
            .map_err(RuntimeError::sandbox("Failed to create session sandbox"))?;
        self.metrics
            .sandbox_start
            .observe(clock.elapsed().as_secs_f64());
        Ok(Arc::new(Live {
            sandbox,
            current: Mutex::default(),
            last_used: Mutex::new(Instant::now()),
            _permit: permit,
        }))
    }

    /// Starts a new session's sandbox: a warm one from the agent's pool when the session asks
    /// for nothing of its own (no env, no credential) and its prompt is the one the warm
    /// sandbox started with (the active version's, or none), else a fresh one.
    pub(crate) async fn place(
        self: &Arc<Self>,
        session: &Session,
        agent: &Agent,
        system_prompt: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let sessions = &self.sessions;
        if session.env.is_empty() && session.credential_id.is_none() {
            if let Some((warm, live)) = sessions.pool.claim(agent, system_prompt) {
                let (from, to) = (
                    sessions.host.root.join(&warm),
                    sessions.host.root.join(session.id.to_string()),
                );
                // The workspace is bind-mounted by inode: renaming its folder moves it under the
                // session's name while the sandbox keeps running.
                match tokio::fs::rename(&from, &to).await {
                    Ok(()) => {
                        *sessions.slot(session.id).live.lock().await = Some(live);
                        self.metrics.prewarm_hits.inc();
                        tokio::spawn(pool::fill(self.clone(), agent.name.clone()));
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %warm, "cannot hand out a warm sandbox: {e}");
                        sessions.retire(&warm, &live).await;
                    }
                }
            }
        }
        self.live(session, system_prompt, Origin::New)
            .await
            .map(drop)
    }

    /// Frees a warm sandbox, or else parks the least recently used session that has a sandbox
    /// and no running turn; `false` when every sandbox is busy.
    async fn evict_one(&self) -> bool {
        if let Some((id, live)) = self.sessions.pool.take_any() {
            self.sessions.retire(&id, &live).await;
            return true;
        }
        let mut candidates = self.sessions.idle_sandboxes().await;
        candidates.sort_by_key(|(_, last_used)| *last_used);
        for (id, _) in candidates {
            if self.park(id, ParkReason::Evicted).await {
                return true;
            }
        }
        false
    }

    /// Parks every session whose sandbox has had no turn for `timeout`.
    pub(crate) async fn sweep_idle(&self, timeout: std::time::Duration) {
        for (id, last_used) in self.sessions.idle_sandboxes().await {
            if last_used.elapsed() >= timeout {
                self.park(id, ParkReason::Idle).await;
            }
        }
    }

    /// Snapshots an idle session, stops its sandbox (freeing its capacity) and marks it paused,
    /// as a pause would; `false` when it is busy (starting, or in a turn) and was left alone.
    async fn park(&self, id: SessionId, reason: ParkReason) -> bool {
        let slot = self.sessions.slots.lock().expect("lock").get(&id).cloned();
        let Some(slot) = slot else { return false };
        let Ok(mut held) = slot.live.try_lock() else {
            return false;
        };
        let Some(live) = held.clone() else {
            return false;
        };
        let Ok(_quiet) = slot.turn.clone().try_lock_owned() else {
            return false;
        };
        if let Err(e) = self.sessions.host.snapshot(&id.to_string()).await {
            tracing::error!(session = %id, "cannot park the session: {e}");
            return false;
        }
        live.sandbox.stop().await;
        *held = None;
        drop((held, live));
        // Only an active session becomes paused; one paused or stopped meanwhile stays so.
        match self.store.transition(id, Transition::Pause).await {
            Ok(Some(paused)) => {
                let said = Some(reason.as_str());
                if reason == ParkReason::Evicted {
                    hooks::lifecycle(self, HookPoint::SandboxEvicted, &paused, said);
                }
                hooks::lifecycle(self, HookPoint::SessionPaused, &paused, said);
            }
            Ok(None) | Err(ash_store::StoreError::Refused(_)) => {}
            Err(e) => tracing::error!(session = %id, "cannot mark a parked session paused: {e}"),
        }
        let reason = reason.as_str();
        let data = json!({"action": "paused", "reason": reason}).to_string();
        let lifecycle = [(FrameKind::Lifecycle, data)];
        let _ = publish(self, &slot.hub, id, &[], &lifecycle, None).await;
        tracing::info!(session = %id, reason, "session paused to free its sandbox");
        true
    }
}

/// `ash-<hash of the data dir>`: stable across restarts of one server, distinct between servers.
fn cgroup_group(data_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ash-{hex}")
}

/// For a backend that calls a model through the host's proxy: the endpoint with its key,
/// and the environment without the key — it never enters the sandbox.
fn model_upstream(
    backend: &Backend,
    env: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Option<Upstream>), RuntimeError> {
    let Some((base_url, api_key_env)) = backend.model_endpoint() else {
        return Ok((env.clone(), None));
    };
    let api = match backend {
        Backend::ClaudeCode { .. } => Api::AnthropicMessages,
        _ => Api::OpenaiChat,
    };
    let mut env = env.clone();
    let key = env.remove(api_key_env).filter(|k| !k.is_empty()).ok_or_else(|| {
        RuntimeError::invalid(format!(
            "the agent's backend needs its API key in {api_key_env}: set it in the agent's env, the session's extraEnv or a credential"
        ))
    })?;
    let upstream = Upstream {
        base_url: base_url.to_owned(),
        key,
        api,
    };
    Ok((env, Some(upstream)))
}

/// The server's default limits with the agent's `[limits]` laid over them.
fn merge_limits(defaults: Limits, agent: &LimitOverrides) -> Limits {
    const MIB: u64 = 1024 * 1024;
    Limits {
        memory_bytes: agent.memory_mb.map_or(defaults.memory_bytes, |mb| mb * MIB),
        max_processes: agent.max_processes.unwrap_or(defaults.max_processes),
        cpu_percent: agent.cpu_percent.unwrap_or(defaults.cpu_percent),
        file_size_bytes: agent
            .file_size_mb
            .map_or(defaults.file_size_bytes, |mb| mb * MIB),
        open_files: agent.open_files.unwrap_or(defaults.open_files),
    }
}
