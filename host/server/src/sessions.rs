//! Sessions and their sandboxes.
//!
//! The database says which sessions exist and their status; this module holds the live
//! sandboxes. A session whose sandbox is gone (the server restarted, or the bridge died) gets
//! a new one over its kept workspace on its next message, with the agent's and the session's
//! env re-applied. One turn runs at a time per session: a second message while one runs gets
//! 409. `ASH_MAX_SANDBOXES` bounds live sandboxes; past it, creation gets 503.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ash_core::{
    Agent, AgentManifest, AgentName, HookPoint, LimitOverrides, ParkReason, Role, Session,
    SessionId, SessionStatus, Transition, DEFAULT_TENANT,
};
use ash_protocol::{Backend, QueryOptions};
use ash_sandbox::doctor::{self, Verdict};
use ash_sandbox::{
    Api, Limits, Sandbox, SandboxError, SandboxHost, SandboxSpec, SandboxUsers, Upstream,
};
use ash_store::TurnMark;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, KeepAliveStream, Sse};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::agents::{agent_not_found, blocking, read_manifest, validate_env};
use crate::error::{Json, Query};
use crate::hooks;
use crate::openapi::{EventList, Interrupted, MessageList, SessionList, SessionReply};
use crate::pool::{self, Pool, WARM_PREFIX};
use crate::stream::{self, closing, follow, publish, publish_ending, Frames, Hub};
use crate::{ApiError, AppState, ServerConfig};

/// Cap for a message body (content blocks may carry base64 images and documents).
const MESSAGE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The reference API's caps on message content.
const MAX_CONTENT_CHARS: usize = 500_000;
const MAX_CONTENT_BLOCKS: usize = 20;

/// Whether starting a sandbox on a full node may evict another.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    MakeRoom,
    OnlyIfFree,
}

/// The live sandboxes of this node.
pub struct Sessions {
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
struct Slot {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    /// Held by a turn, and by a pause, stop, resume or fork while it changes the session:
    /// one at a time, whichever comes first; the others get 409. (A delete writes `ended`
    /// first instead, which whoever holds the lock next reads.)
    turn: Arc<tokio::sync::Mutex<()>>,
    hub: Hub,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            live: Default::default(),
            turn: Default::default(),
            hub: Hub::new(),
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
        config: &ServerConfig,
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
    pub(crate) async fn check_host(&self, data_dir: PathBuf) {
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

    fn slot(&self, id: SessionId) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("lock")
            .entry(id)
            .or_default()
            .clone()
    }

    /// The session's live sandbox, starting one over its workspace if it has none.
    pub(crate) async fn live(
        &self,
        state: &AppState,
        session: &Session,
        system_prompt: Option<&str>,
    ) -> Result<Arc<Live>, ApiError> {
        let slot = self.slot(session.id);
        let mut live = slot.live.lock().await;
        if let Some(current) = live.as_ref() {
            if current.sandbox.is_alive().await {
                return Ok(current.clone());
            }
            tracing::warn!(session = %session.id, "sandbox had exited; starting a new one over its workspace");
            *live = None;
        }
        let agent = state
            .store
            .get_agent(&session.agent_name)
            .await?
            .ok_or_else(agent_not_found)?;
        let started = self.start(state, session, &agent, system_prompt).await?;
        *live = Some(started.clone());
        Ok(started)
    }

    async fn start(
        &self,
        state: &AppState,
        session: &Session,
        agent: &Agent,
        system_prompt: Option<&str>,
    ) -> Result<Arc<Live>, ApiError> {
        // Agent env, then the credential's key, then the session's own extraEnv.
        let mut env = agent.env.clone();
        if let Some(credential) = &session.credential_id {
            let (var, key) = crate::credentials::env_for(state, credential).await?;
            env.insert(var.to_owned(), key);
        }
        env.extend(session.env.clone());
        let id = session.id.to_string();
        self.start_sandbox(state, &id, agent, &env, system_prompt, Room::MakeRoom)
            .await
    }

    /// Starts a sandbox `id` for the agent; when the node is full, `room` says whether it may
    /// evict (a session may; a warm sandbox for the pool may not, or the pool would park the
    /// very sessions it exists to serve).
    pub(crate) async fn start_sandbox(
        &self,
        state: &AppState,
        id: &str,
        agent: &Agent,
        env: &BTreeMap<String, String>,
        system_prompt: Option<&str>,
        room: Room,
    ) -> Result<Arc<Live>, ApiError> {
        let permit = match self.capacity.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Full: free a warm sandbox or park the least recently used idle session, then retry.
            Err(_) if room == Room::MakeRoom && self.evict_one(state).await => {
                self.capacity.clone().try_acquire_owned().ok()
            }
            Err(_) => None,
        };
        let permit = permit.ok_or_else(|| {
            let message = format!("Sandbox capacity reached ({} live, all busy); end a session or raise ASH_MAX_SANDBOXES", self.max_sandboxes);
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        })?;
        let manifest = manifest(agent).await?;
        crate::agents::check_grants(&state.config, &manifest)?;
        let agent_dir = Path::new(&agent.path).to_owned();
        let limits = merge_limits(state.config.limits, &manifest.limits);
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
        let sandbox = Sandbox::start(&self.host, spec)
            .await
            .map_err(|e| ApiError::sandbox("Failed to create session sandbox", e))?;
        state
            .metrics
            .sandbox_start
            .observe(clock.elapsed().as_secs_f64());
        Ok(Arc::new(Live {
            sandbox,
            current: Mutex::default(),
            last_used: Mutex::new(Instant::now()),
            _permit: permit,
        }))
    }

    /// The warm pool.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Starts a new session's sandbox: a warm one from the agent's pool when the session asks
    /// for nothing of its own (no env, no prompt), else a fresh one.
    pub(crate) async fn create(
        &self,
        state: &Arc<AppState>,
        session: &Session,
        agent: &Agent,
        system_prompt: Option<&str>,
    ) -> Result<(), ApiError> {
        if session.env.is_empty() && session.credential_id.is_none() && system_prompt.is_none() {
            if let Some((warm, live)) = self.pool.claim(agent) {
                let (from, to) = (
                    self.host.root.join(&warm),
                    self.host.root.join(session.id.to_string()),
                );
                // The workspace is bind-mounted by inode: renaming its folder moves it under the
                // session's name while the sandbox keeps running.
                match tokio::fs::rename(&from, &to).await {
                    Ok(()) => {
                        *self.slot(session.id).live.lock().await = Some(live);
                        state.metrics.prewarm_hits.inc();
                        tokio::spawn(pool::fill(state.clone(), agent.name.clone()));
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %warm, "cannot hand out a warm sandbox: {e}");
                        self.retire(&warm, &live).await;
                    }
                }
            }
        }
        self.live(state, session, system_prompt).await.map(drop)
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

    /// Frees a warm sandbox, or else parks the least recently used session that has a sandbox
    /// and no running turn; `false` when every sandbox is busy.
    async fn evict_one(&self, state: &AppState) -> bool {
        if let Some((id, live)) = self.pool.take_any() {
            self.retire(&id, &live).await;
            return true;
        }
        let mut candidates = self.idle_sandboxes().await;
        candidates.sort_by_key(|(_, last_used)| *last_used);
        for (id, _) in candidates {
            if self.park(state, id, ParkReason::Evicted).await {
                return true;
            }
        }
        false
    }

    /// Parks every session whose sandbox has had no turn for `timeout`.
    pub(crate) async fn sweep_idle(&self, state: &AppState, timeout: std::time::Duration) {
        for (id, last_used) in self.idle_sandboxes().await {
            if last_used.elapsed() >= timeout {
                self.park(state, id, ParkReason::Idle).await;
            }
        }
    }

    /// Sessions with a sandbox and no running turn, with when they were last used.
    async fn idle_sandboxes(&self) -> Vec<(SessionId, Instant)> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        let mut idle = Vec::new();
        for (id, slot) in slots {
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

    /// Snapshots an idle session, stops its sandbox (freeing its capacity) and marks it paused,
    /// as a pause would; `false` when it is busy (starting, or in a turn) and was left alone.
    async fn park(&self, state: &AppState, id: SessionId, reason: ParkReason) -> bool {
        let slot = self.slots.lock().expect("lock").get(&id).cloned();
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
        if let Err(e) = self.host.snapshot(&id.to_string()).await {
            tracing::error!(session = %id, "cannot park the session: {e}");
            return false;
        }
        live.sandbox.stop().await;
        *held = None;
        drop((held, live));
        // Only an active session becomes paused; one paused or stopped meanwhile stays so.
        match state.store.transition(id, Transition::Pause).await {
            Ok(Some(paused)) => {
                let said = Some(reason.as_str());
                if reason == ParkReason::Evicted {
                    hooks::lifecycle(state, HookPoint::SandboxEvicted, &paused, said);
                }
                hooks::lifecycle(state, HookPoint::SessionPaused, &paused, said);
            }
            Ok(None) | Err(ash_store::StoreError::Refused(_)) => {}
            Err(e) => tracing::error!(session = %id, "cannot mark a parked session paused: {e}"),
        }
        let reason = reason.as_str();
        let data = json!({"action": "paused", "reason": reason}).to_string();
        let lifecycle = [("lifecycle".to_owned(), data)];
        let _ = publish(state, &slot.hub, id, &[], &lifecycle, None).await;
        tracing::info!(session = %id, reason, "session paused to free its sandbox");
        true
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

    /// The session's hub, which publishes its log as it grows.
    pub(crate) fn hub(&self, id: SessionId) -> Hub {
        self.slot(id).hub.clone()
    }

    /// Stops the session's running turn; `false` when none is running.
    pub(crate) async fn interrupt(&self, id: SessionId) -> Result<bool, ApiError> {
        let slot = self.slots.lock().expect("lock").get(&id).cloned();
        let Some(slot) = slot else { return Ok(false) };
        let live = slot.live.lock().await.clone();
        let Some(live) = live else { return Ok(false) };
        let target = live.current.lock().expect("lock").clone();
        let Some(target) = target else {
            return Ok(false);
        };
        live.sandbox.interrupt(&target).await.map_err(|e| match e {
            SandboxError::Unanswered(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            e => ApiError::internal("interrupt failed", e),
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
    /// holds still); 409 while a turn — or a pause, stop or fork — has it.
    pub(crate) fn hold(&self, id: SessionId) -> Result<TurnLock, ApiError> {
        self.slot(id).turn.clone().try_lock_owned().map_err(|_| {
            ApiError::new(
                StatusCode::CONFLICT,
                "The session is busy (a turn, or a pause, stop or fork of it, is running); wait for its done event, or interrupt it",
            )
        })
    }

    /// Copies one session's workspace to a new session.
    pub(crate) async fn fork(&self, from: SessionId, to: SessionId) -> Result<(), ApiError> {
        self.host
            .fork(&from.to_string(), &to.to_string())
            .await
            .map_err(|e| ApiError::sandbox("Failed to fork the workspace", e))
    }

    /// Writes a durable snapshot of the session's workspace.
    pub(crate) async fn snapshot(&self, id: SessionId) -> Result<(), ApiError> {
        self.host
            .snapshot(&id.to_string())
            .await
            .map_err(|e| ApiError::sandbox("Failed to snapshot the workspace", e))
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
        if self.host.bridge != self.host_bridge_as_configured {
            let _ = tokio::fs::remove_file(&self.host.bridge).await;
        }
    }
}

/// `ash-<hash of the data dir>`: stable across restarts of one server, distinct between servers.
fn cgroup_group(data_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ash-{hex}")
}

/// The agent's `ash.toml`, read from its folder now (it may have been redeployed).
pub(crate) async fn manifest(agent: &Agent) -> Result<AgentManifest, ApiError> {
    let dir = Path::new(&agent.path).to_owned();
    let text = blocking(move || {
        if !dir.is_dir() {
            let message = format!(
                "Agent directory {} is missing; redeploy the agent",
                dir.display()
            );
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message));
        }
        read_manifest(&dir)
    })
    .await?;
    AgentManifest::parse(text.as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// The server's default limits with the agent's `[limits]` laid over them.
/// For a backend that calls a model through the host's proxy: the endpoint with its key,
/// and the environment without the key — it never enters the sandbox.
fn model_upstream(
    backend: &Backend,
    env: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Option<Upstream>), ApiError> {
    let Some((base_url, api_key_env)) = backend.model_endpoint() else {
        return Ok((env.clone(), None));
    };
    let api = match backend {
        Backend::ClaudeCode { .. } => Api::AnthropicMessages,
        _ => Api::OpenaiChat,
    };
    let mut env = env.clone();
    let key = env.remove(api_key_env).filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
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

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, end))
        .routes(routes!(send).layer(DefaultBodyLimit::max(MESSAGE_BODY_LIMIT)))
        .routes(routes!(messages))
        .routes(routes!(events))
        .routes(routes!(stream))
        .routes(routes!(interrupt))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSessionBody {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,255}$")]
    agent: String,
    /// A stored credential whose key the session's sandboxes get (see `/api/credentials`).
    #[schema(max_length = 255)]
    credential_id: Option<String>,
    #[serde(default)]
    extra_env: BTreeMap<String, String>,
    system_prompt: Option<String>,
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions", request_body = CreateSessionBody,
    responses((status = 201, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 422, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateSessionBody>,
) -> Result<(StatusCode, Json<SessionReply>), ApiError> {
    let agent_name = AgentName::try_from(body.agent)?;
    validate_env(&body.extra_env)?;
    if body
        .system_prompt
        .as_ref()
        .is_some_and(|p| p.len() > 1_000_000)
    {
        return Err(ApiError::bad_request(
            "systemPrompt must be at most 1,000,000 bytes",
        ));
    }
    let agent = state
        .store
        .get_agent(&agent_name)
        .await?
        .ok_or_else(agent_not_found)?;
    let now = now();
    let id = SessionId::new();
    let session = Session {
        id,
        tenant_id: DEFAULT_TENANT.into(),
        agent_name,
        sandbox_id: id.to_string(),
        status: SessionStatus::Active,
        runner_id: None,
        parent_session_id: None,
        env: body.extra_env,
        credential_id: body.credential_id,
        created_at: now.clone(),
        last_active_at: now,
        logged_bytes: 0,
    };
    state
        .sessions
        .create(&state, &session, &agent, body.system_prompt.as_deref())
        .await?;
    if let Err(e) = state.store.insert_session(&session).await {
        state.sessions.end(id).await;
        return Err(e.into());
    }
    tracing::info!(session = %id, agent = %session.agent_name, "session created");
    hooks::lifecycle(&state, HookPoint::SessionCreated, &session, None);
    Ok((StatusCode::CREATED, Json(SessionReply { session })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only sessions of this agent.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,255}$")]
    agent: Option<String>,
}

#[utoipa::path(get, path = "/api/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, body = SessionList), (status = 400, body = crate::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let agent = query.agent.map(AgentName::try_from).transpose()?;
    let sessions = state.store.list_sessions(agent.as_ref()).await?;
    Ok(Json(SessionList { sessions }))
}

/// A checked page cursor: `limit` 1–1000 (default `default_limit`), `after` ≥ 0 (default 0).
fn page(
    limit: Option<i64>,
    after: Option<i64>,
    default_limit: i64,
) -> Result<(i64, i64), ApiError> {
    let (limit, after) = (limit.unwrap_or(default_limit), after.unwrap_or(0));
    if !(1..=1000).contains(&limit) || after < 0 {
        return Err(ApiError::bad_request(
            "limit must be 1-1000 and after at least 0",
        ));
    }
    Ok((limit, after))
}

/// The current time as the API shows it (RFC 3339, milliseconds, UTC).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) async fn find(state: &AppState, raw_id: &str) -> Result<Session, ApiError> {
    let id = SessionId::parse(raw_id)?;
    state
        .store
        .get_session(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Session not found"))
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    Ok(Json(SessionReply {
        session: find(&state, &id).await?,
    }))
}

#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SessionReply), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn end(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SessionReply>, ApiError> {
    let session = find(&state, &id).await?;
    // Ended first: a message or resume that comes meanwhile reads it and stops there.
    let session = state
        .store
        .transition(session.id, Transition::End)
        .await?
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    state.sessions.end(session.id).await;
    tracing::info!(session = %session.id, "session ended");
    hooks::lifecycle(&state, HookPoint::SessionEnded, &session, None);
    Ok(Json(SessionReply { session }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MessagesQuery {
    /// At most this many messages [default: 100].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only messages with a higher sequence [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
}

#[utoipa::path(get, path = "/api/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, format = Uuid), MessagesQuery),
    responses((status = 200, body = MessageList), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<MessagesQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let session = find(&state, &id).await?;
    let (limit, after) = page(query.limit, query.after, 100)?;
    let messages = state.store.list_messages(session.id, after, limit).await?;
    Ok(Json(MessageList { messages }))
}

/// `content` is a string (at most 500,000 characters) or 1-20 content blocks of type `text`,
/// `image` or `document`. `includePartialMessages: true` asks for `text_delta` frames; every
/// other field (`model`, `maxTurns`, `maxBudgetUsd`, `effort`, `thinking`, `outputFormat`, …)
/// goes to the backend with the turn.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SendBody {
    #[schema(schema_with = content_schema)]
    content: Value,
    #[serde(flatten)]
    #[schema(ignore)]
    options: QueryOptions,
}

#[utoipa::path(post, path = "/api/sessions/{id}/messages", tag = "sessions", params(("id" = String, Path, format = Uuid)), request_body = SendBody,
    responses((status = 200, content_type = "text/event-stream", description = "SSE frames: session_start, granular events, message, error, done; each with id: = its log sequence and one line of JSON data"), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(crate) async fn send(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<SendBody>,
) -> Result<Sse<KeepAliveStream<Frames>>, ApiError> {
    validate_content(&body.content)?;
    let session = find(&state, &id).await?;
    session.status.accept_message()?;
    let hub = state.sessions.hub(session.id);
    hub.refusal()?;
    // Counted as a turn from here: a stop that begins meanwhile waits for it.
    let tracked = state.drain.turns.token();
    let turn = state.sessions.hold(session.id)?;
    // Read again under the lock: a pause, stop or delete that ended just before it is seen.
    let session = find(&state, &id).await?;
    session.status.accept_message()?;
    let live = state.sessions.live(&state, &session, None).await?;
    let guard = state.sessions.begin_turn(&live, turn);
    let followers = hub.subscribe();
    let user = [(
        Role::User,
        json!({"type": "user", "content": body.content}).to_string(),
    )];
    let start = json!({"sessionId": session.id, "version": env!("CARGO_PKG_VERSION")}).to_string();
    let mut frames = hub.owed(session.id);
    frames.push(("session_start".to_owned(), start));
    let started = publish(
        &state,
        &hub,
        session.id,
        &user,
        &frames,
        Some(TurnMark::Begins),
    )
    .await?;
    hub.paid();
    let begun = started[started.len() - 1].sequence;
    hooks::observe(
        &state,
        HookPoint::MessageIn,
        "message",
        session.id,
        session.agent_name.as_str(),
        || user[0].1.clone(),
    );
    // From here the turn is its own task: a client that goes away cancels nothing.
    let (runtime, agent) = (state.clone(), session.agent_name.to_string());
    let logged = (begun, session.logged_bytes);
    state.drain.turns.spawn(async move {
        let id = session.id;
        match live
            .sandbox
            .query(body.content, id.to_string(), body.options)
            .await
        {
            Ok(turn) => {
                *live.current.lock().expect("lock") = Some(turn.id().to_owned());
                stream::run_turn(runtime, id, agent, hub, turn, guard, logged).await;
            }
            Err(e) => {
                tracing::error!(session = %id, "cannot start a turn: {e}");
                runtime.sessions.discard(id).await;
                let error = "the sandbox is not available; send the message again";
                let frames = closing(id, Some(error));
                publish_ending(&runtime, &hub, id, &[], &frames, guard).await;
            }
        }
    });
    drop(tracked);
    let after = begun - 1;
    Ok(
        Sse::new(follow(state, session.id, followers, after, true))
            .keep_alive(KeepAlive::default()),
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// At most this many events [default: 200].
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only events with a higher sequence [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only events of this type (an SSE event name).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
}

/// `GET /api/sessions/:id/events`: the log as paged JSON.
#[utoipa::path(get, path = "/api/sessions/{id}/events", tag = "sessions", params(("id" = String, Path, format = Uuid), EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let session = find(&state, &id).await?;
    let (limit, after) = page(query.limit, query.after, 200)?;
    let events = state
        .store
        .list_events(session.id, after, limit, query.kind.as_deref())
        .await?;
    Ok(Json(EventList { events }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Replay after this sequence when there is no `Last-Event-ID` [default: 0].
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// `GET /api/sessions/:id/stream`: the log after `Last-Event-ID` (or `?after=`, else from the
/// start) as SSE, then live frames as they are logged, until the client leaves.
#[utoipa::path(get, path = "/api/sessions/{id}/stream", tag = "sessions",
    params(("id" = String, Path, format = Uuid), StreamQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this sequence")),
    responses((status = 200, content_type = "text/event-stream", description = "SSE frames: session_start, granular events, message, error, done; each with id: = its log sequence and one line of JSON data"), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<KeepAliveStream<Frames>>, ApiError> {
    let session = find(&state, &id).await?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID must be an event sequence number")
                })?,
        ),
        None => None,
    };
    let after = last_event_id.or(query.after).unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("after must be at least 0"));
    }
    let followers = state.sessions.hub(session.id).subscribe();
    Ok(Sse::new(follow(state, session.id, followers, after, false))
        .keep_alive(KeepAlive::default()))
}

/// `POST /api/sessions/:id/interrupt`: stops the running turn, which ends with `error` + `done`.
#[utoipa::path(post, path = "/api/sessions/{id}/interrupt", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Interrupted), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 504, description = "the agent did not confirm the interrupt within 5 s", body = crate::openapi::ErrorBody)))]
pub(crate) async fn interrupt(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Interrupted>, ApiError> {
    let session = find(&state, &id).await?;
    let interrupted = state.sessions.interrupt(session.id).await?;
    Ok(Json(Interrupted { interrupted }))
}

/// The schema `validate_content` enforces, for the OpenAPI document.
fn content_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_CONTENT_CHARS));
    let kind = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["text", "image", "document"]));
    let block = ObjectBuilder::new().property("type", kind).required("type");
    let blocks = ArrayBuilder::new()
        .items(block)
        .min_items(Some(1))
        .max_items(Some(MAX_CONTENT_BLOCKS));
    OneOfBuilder::new().item(text).item(blocks).into()
}

fn validate_content(content: &Value) -> Result<(), ApiError> {
    match content {
        Value::String(text) if text.chars().count() <= MAX_CONTENT_CHARS => Ok(()),
        Value::String(_) => Err(ApiError::bad_request(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        ))),
        Value::Array(blocks) if blocks.is_empty() || blocks.len() > MAX_CONTENT_BLOCKS => Err(
            ApiError::bad_request(format!("content must have 1-{MAX_CONTENT_BLOCKS} blocks")),
        ),
        Value::Array(blocks) => {
            let known = |b: &Value| {
                matches!(
                    b.get("type").and_then(Value::as_str),
                    Some("text" | "image" | "document")
                )
            };
            if blocks.iter().all(known) {
                Ok(())
            } else {
                Err(ApiError::bad_request(
                    "each content block needs type text, image or document",
                ))
            }
        }
        _ => Err(ApiError::bad_request(
            "content must be a string or an array of content blocks",
        )),
    }
}
