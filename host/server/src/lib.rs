//! The Ash server's HTTP edge: REST + SSE over axum, API-key auth, Prometheus metrics,
//! OpenAPI. It drives the session runtime (`ash_runtime`) and decides every status code.
//!
//! Requests are authenticated before any route runs (only `/health` is public). Every
//! error is answered as `{"error", "statusCode"}` with a message that says what to fix;
//! storage and sandbox failures are logged in full and answered without internals. Every
//! request body has a size cap.

mod agents;
mod auth;
mod credentials;
mod drain;
mod error;
mod files;
mod health;
mod lifecycle;
mod openapi;
mod sessions;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub use ash_plugin_host::PluginConfig;
pub use ash_runtime::{EventCaps, RuntimeConfig};
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
    /// What the session runtime is given (the data dir, sandboxes, caps).
    pub runtime: RuntimeConfig,
    /// Where records are kept.
    pub storage: StorageConfig,
    /// Where workspace snapshots go (`snapshot_store`): `s3://<bucket>[/<prefix>]` or an
    /// absolute folder; `None` is `<data dir>/snapshot-store`.
    pub snapshot_store: Option<String>,
    /// A key accepted as-is (`ASH_API_KEY`); no key is generated when it is set.
    pub api_key: Option<String>,
    /// The folders path-mode deploys may come from (`deploy_roots`); empty turns path mode
    /// off. Never the data dir.
    pub deploy_roots: Vec<PathBuf>,
    /// Agents deployed on start when no agent of that name exists (the bundled examples).
    pub seed_agents: Vec<SeedAgent>,
    /// WebAssembly plugins to load (`[[plugins]]` in the settings file).
    pub plugins: Vec<ash_plugin_host::PluginConfig>,
    /// The master key credentials are encrypted under (`ASH_CREDENTIAL_KEY`); credentials
    /// are off without it.
    pub credential_key: Option<String>,
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
    #[error(transparent)]
    Runtime(#[from] ash_runtime::OpenError),
    #[error("snapshot_store: {0}")]
    Snapshots(#[from] ash_snapshots::SnapshotError),
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
        let bridge = &config.runtime.bridge;
        if !bridge.is_file() {
            return Err(StartError::NoBridge(bridge.display().to_string()));
        }
        let data_dir = &config.runtime.data_dir;
        state::create_private_dir(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.display().to_string(),
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
        state.runtime.close_open_turns().await?;
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

    /// Serves until `shutdown` completes, then drains (the runtime's bounded stop) and stops
    /// every sandbox.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let runtime = self.state.runtime.clone();
        let sweeper = runtime.start();
        let app = router(self.state.clone());
        // Frames are small and written one by one: without TCP_NODELAY, Nagle's algorithm
        // and the client's delayed ACK hold each one back for ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
        });
        let closed = runtime.closed();
        let mut serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(closed)
                .await
        });
        tokio::select! {
            _ = shutdown => {}
            ended = &mut serving => return ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        }
        runtime.drain().await;
        drain::last_wait(serving).await;
        sweeper.abort();
        runtime.shutdown().await;
        Ok(())
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
