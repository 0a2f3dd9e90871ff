//! The Ash server's HTTP edge: REST + SSE over axum, API-key auth, Prometheus metrics,
//! OpenAPI. It drives the session runtime (`ash_runtime`) and decides every status code.
//!
//! Requests are authenticated before any route runs (only `/health` is public). Every
//! error is answered as `{"error", "statusCode"}` with a message that says what to fix;
//! storage and sandbox failures are logged in full and answered without internals. Every
//! request body has a size cap.

mod agent_files;
mod agents;
mod attachments;
mod auth;
mod coordinator;
mod credentials;
mod dashboard;
mod drain;
mod error;
mod explorer;
mod files;
mod health;
mod keys;
mod lifecycle;
mod mcp;
mod openapi;
mod queue;
mod runner;
mod sessions;
mod state;
mod tools;
mod trace;
mod usage;
mod versions;

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
    /// This server's part in a cluster; `None`: the single process (sessions run here).
    pub cluster: Option<ClusterConfig>,
}

/// A server's part in a cluster of coordinators and runners on one Postgres.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The secret coordinators and runners prove themselves to each other with
    /// (`ASH_CLUSTER_TOKEN`), at least 32 bytes.
    pub token: String,
    pub role: ClusterRole,
}

#[derive(Debug, Clone)]
pub enum ClusterRole {
    /// Serves the API, holds no sandbox, places sessions on runners. A runner not heard from
    /// for `ttl` is declared dead.
    Coordinator { ttl: std::time::Duration },
    /// Holds sandboxes and serves coordinators only; joins through `coordinators` (URLs, tried
    /// in order), reached at `address`.
    Runner {
        coordinators: Vec<String>,
        address: String,
    },
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
    #[error("cluster: {0}")]
    Cluster(String),
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
        if config.cluster.is_some() && config.snapshot_store.is_none() {
            return Err(StartError::Cluster(
                "a cluster's nodes share agents and workspaces through one snapshot store: set ASH_SNAPSHOT_STORE (snapshot_store) to s3://<bucket>[/<prefix>], or to a folder every node mounts, on every node".into(),
            ));
        }
        let mut config = config;
        if let Some(ClusterConfig {
            role: ClusterRole::Runner { address, .. },
            ..
        }) = &mut config.cluster
        {
            let bound = listener.local_addr().map_err(|source| StartError::Bind {
                addr: config.host.clone(),
                source,
            })?;
            if address.is_empty() {
                if bound.ip().is_unspecified() {
                    return Err(StartError::Cluster(format!(
                        "this runner listens on {bound}: give --advertise http://<address coordinators reach it at>:{}",
                        bound.port()
                    )));
                }
                *address = format!("http://{bound}");
            }
        }
        let seeds = match config.cluster {
            // Agents are the coordinators' to deploy.
            Some(ClusterConfig {
                role: ClusterRole::Runner { .. },
                ..
            }) => Vec::new(),
            _ => config.seed_agents.clone(),
        };
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
        let state = self.state.clone();
        let runtime = state.runtime.clone();
        let sweeper = runtime.start();
        let cluster = match (&state.coordinator, &state.membership) {
            (Some(c), _) => Some(c.cluster.clone().start(runtime.clone())),
            (_, Some(m)) => Some(tokio::spawn(runner::keep_place(state.clone(), m.clone()))),
            _ => None,
        };
        let replaced = state.membership.as_ref().map(|m| m.replaced.clone());
        let shutdown = async move {
            match replaced {
                Some(replaced) => tokio::select! {
                    _ = shutdown => {}
                    _ = replaced.cancelled() => {}
                },
                None => shutdown.await,
            }
        };
        let app = router(state.clone());
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
        if let Some(m) = &state.membership {
            m.drain(&state).await;
        }
        runtime.drain().await;
        drain::last_wait(serving).await;
        sweeper.abort();
        if let Some(cluster) = cluster {
            cluster.abort();
        }
        if state.membership.is_some() {
            // Handed back with the files as they are now.
            runtime.snapshot_all().await;
        }
        runtime.shutdown().await;
        if let Some(m) = &state.membership {
            m.leave().await;
        }
        Ok(())
    }
}

/// Default cap for request bodies.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// Every route with its OpenAPI entries, each module adding its own: those behind the API
/// key, and the public ones.
type Routes = utoipa_axum::router::OpenApiRouter<Arc<AppState>>;

fn routes() -> (Routes, Routes) {
    use utoipa_axum::routes;
    let keyed = Routes::new()
        .merge(agents::routes())
        .merge(agent_files::routes())
        .merge(versions::routes())
        .merge(usage::routes())
        .merge(queue::routes())
        .merge(tools::routes())
        .merge(sessions::routes())
        .merge(lifecycle::routes())
        .merge(files::routes())
        .merge(credentials::routes())
        .merge(keys::routes())
        .merge(attachments::routes())
        .routes(routes!(coordinator::runners))
        .routes(routes!(health::metrics));
    let public = Routes::new().routes(routes!(health::health));
    (keyed, public)
}

fn router(state: Arc<AppState>) -> Router {
    use axum::middleware::from_fn_with_state;
    let (keyed, public) = routes();
    let api = Router::from(keyed).nest_service("/mcp", mcp::service(state.clone()));
    let app = Router::from(public)
        .route("/docs/json", axum::routing::get(openapi::serve))
        .merge(explorer::routes())
        .merge(dashboard::routes());
    let app = if state.membership.is_some() {
        // A runner: coordinators only, every route behind the cluster token.
        app.merge(api)
            .merge(runner::internal_routes())
            .layer(from_fn_with_state(
                state.clone(),
                runner::require_coordinator,
            ))
    } else if state.coordinator.is_some() {
        // A coordinator: what needs a sandbox goes on to a runner once the key is checked.
        let api = api
            .layer(from_fn_with_state(state.clone(), coordinator::route))
            .layer(from_fn_with_state(state.clone(), auth::require_key));
        app.merge(api)
            .merge(coordinator::internal_routes(state.clone()))
    } else {
        app.merge(api.layer(from_fn_with_state(state.clone(), auth::require_key)))
    };
    app.fallback(|| async { ApiError::not_found("Not found: no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            drain::refuse_new_work,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(trace::request_span))
        .with_state(state)
}
