//! The Ash server: REST + SSE over axum, API-key auth, Prometheus metrics.
//!
//! Requests are authenticated before any route runs (only `/health` is public). Every
//! error is answered as `{"error", "statusCode"}` with a message that says what to fix;
//! storage and sandbox failures are logged in full and answered without internals. Every
//! request body has a size cap. Agent turns run in their own task, so a client that goes
//! away never stops a turn half-way through its writes.

mod agents;
mod auth;
mod credentials;
mod drain;
mod error;
mod files;
mod health;
mod hooks;
mod lifecycle;
mod metrics;
mod openapi;
mod pool;
mod sessions;
mod state;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub use ash_plugin_host::PluginConfig;
pub use ash_sandbox::{
    default_memory_budget, disk, doctor, seccomp, Limits, SandboxUsers, UidRange,
};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use state::{open_storage, AppState};

/// Everything the server needs to start; the CLI fills it from flags, env and `ash.toml`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub data_dir: PathBuf,
    /// Where records are kept.
    pub storage: StorageConfig,
    /// A key accepted as-is (`ASH_API_KEY`); no key is generated when it is set.
    pub api_key: Option<String>,
    pub max_sandboxes: usize,
    /// Resource limits of every sandbox, unless its agent's `ash.toml` sets its own.
    pub limits: ash_sandbox::Limits,
    /// A session whose sandbox has had no turn for this long is paused and its sandbox freed.
    pub idle_timeout: std::time::Duration,
    /// How long a stop waits for running turns to end before it ends them
    /// (`shutdown_grace_secs`).
    pub shutdown_grace: std::time::Duration,
    pub bwrap: PathBuf,
    pub bridge: PathBuf,
    /// The host uids a root server gives its sandboxes, one each (`sandbox_uids`); `None`
    /// takes the `ash` line of `/etc/subuid`, else the built-in range. Unused when the server
    /// is not root.
    pub sandbox_uids: Option<ash_sandbox::UidRange>,
    /// The folders path-mode deploys may come from (`deploy_roots`); empty turns path mode
    /// off. Never the data dir.
    pub deploy_roots: Vec<PathBuf>,
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
    /// Agents deployed on start when no agent of that name exists (the bundled examples).
    pub seed_agents: Vec<SeedAgent>,
    /// WebAssembly plugins to load (`[[plugins]]` in the settings file).
    pub plugins: Vec<ash_plugin_host::PluginConfig>,
    /// The master key credentials are encrypted under (`ASH_CREDENTIAL_KEY`); credentials
    /// are off without it.
    pub credential_key: Option<String>,
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

/// Where the server keeps its records.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A built-in backend: an SQLite file (the default: `<data dir>/ash.db`) or Postgres.
    Database(ash_store::Database),
    /// A storage plugin (`[storage]` in the settings file).
    Plugin(ash_plugin_host::PluginConfig),
}

/// An agent shipped inside the binary: its name and its files (relative path, bytes).
#[derive(Debug, Clone)]
pub struct SeedAgent {
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] ash_store::StoreError),
    #[error("cannot load the storage plugin: {0}")]
    StoragePlugin(ash_plugin_host::PluginError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot deploy a bundled agent: {0}")]
    Seed(String),
    #[error("bridge binary not found at {0}: build it with cargo build, or set ASH_BRIDGE_BIN")]
    NoBridge(String),
    #[error("cannot load plugins: {0}")]
    Plugin(#[from] ash_plugin_host::PluginError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("refusing to start sandboxes: {0}")]
    SandboxUsers(String),
}

/// A server that has opened its store and bound its port, ready to [`run`](Self::run).
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    /// The key generated on first start, to be shown to the operator once.
    pub new_api_key: Option<String>,
}

impl Server {
    /// Opens the data dir and database, makes sure an API key exists, binds the port.
    pub async fn prepare(config: ServerConfig) -> Result<Self, StartError> {
        if !config.bridge.is_file() {
            return Err(StartError::NoBridge(config.bridge.display().to_string()));
        }
        state::create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let seeds = config.seed_agents.clone();
        let (state, new_api_key) = AppState::open(config).await?;
        for seed in seeds {
            agents::seed(&state, seed)
                .await
                .map_err(|e| StartError::Seed(e.message))?;
        }
        state.sessions.clear_stale_warm().await;
        for session in state.store.unfinished_turns().await? {
            let error = "the server stopped during this turn; send the message again";
            let closing = stream::closing(session, Some(error));
            let ends = Some(ash_store::TurnMark::Ends);
            state.store.append(session, &[], &closing, ends).await?;
            tracing::warn!(session = %session, "closed a turn the last run left open");
        }
        Ok(Self {
            listener,
            state: Arc::new(state),
            new_api_key,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains ([`drain`]) and stops every sandbox.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Checking the host (it starts bwrap once) and sweeping stale cgroups can take a while;
        // neither holds up serving.
        let state = self.state.clone();
        let data_dir = state.config.data_dir.clone();
        tokio::spawn(async move { state.sessions.check_host(data_dir).await });
        let sweeper = tokio::spawn(sweep_idle(self.state.clone()));
        for agent in self.state.store.list_agents().await.unwrap_or_default() {
            tokio::spawn(pool::fill(self.state.clone(), agent.name));
        }
        let app = router(self.state.clone());
        // Frames are small and written one by one: without TCP_NODELAY, Nagle's algorithm
        // and the client's delayed ACK hold each one back for ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
        });
        let closed = self.state.drain.closed();
        let mut serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(closed)
                .await
        });
        tokio::select! {
            _ = shutdown => {}
            ended = &mut serving => return ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        }
        drain::drain(&self.state, self.state.config.shutdown_grace).await;
        drain::last_wait(serving).await;
        sweeper.abort();
        self.state.sessions.stop_all().await;
        // Observers get every event queued before the server stops.
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.plugins.flush()).await;
        Ok(())
    }
}

/// Parks idle sessions, checking at half the idle timeout (at most every minute).
async fn sweep_idle(state: Arc<AppState>) {
    let timeout = state.config.idle_timeout;
    let every = (timeout / 2).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(60),
    );
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        state.sessions.sweep_idle(&state, timeout).await;
    }
}

/// Default cap for request bodies.
const BODY_LIMIT: usize = 1024 * 1024;

/// Every route with its OpenAPI entries, each module adding its own: those behind the API
/// key, and the public ones.
type Routes = utoipa_axum::router::OpenApiRouter<Arc<AppState>>;

fn routes() -> (Routes, Routes) {
    use utoipa_axum::routes;
    let keyed = Routes::new()
        .merge(agents::routes())
        .merge(sessions::routes())
        .merge(lifecycle::routes())
        .merge(files::routes())
        .merge(credentials::routes())
        .routes(routes!(health::metrics));
    let public = Routes::new().routes(routes!(health::health));
    (keyed, public)
}

fn router(state: Arc<AppState>) -> Router {
    let (keyed, public) = routes();
    let api = Router::from(keyed).layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_key,
    ));
    Router::from(public)
        .route("/docs/json", axum::routing::get(openapi::serve))
        .merge(api)
        .fallback(|| async { ApiError::not_found("Not found: no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            drain::refuse_new_work,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
