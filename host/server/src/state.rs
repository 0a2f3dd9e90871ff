use std::path::Path;
use std::sync::Arc;

use ash_plugin_host::StoragePlugin;
use ash_runtime::{Parts, Runtime, Sealer};
use ash_store::{SqlStorage, Store};

use crate::auth::Keys;
use crate::coordinator::Coordinator;
use crate::runner::Membership;
use crate::{ClusterConfig, ClusterRole, ServerConfig, StartError};

/// Shared by every request.
pub struct AppState {
    pub config: ServerConfig,
    /// The session runtime every route drives.
    pub runtime: Arc<Runtime>,
    /// The records (the runtime's store too).
    pub store: Store,
    /// The storage plugin the records are on, if they are on one (for `/health`).
    pub storage_plugin: Option<StoragePlugin>,
    pub keys: Keys,
    /// The data dir's disk had less than a tenth free when last looked at (`/health`).
    pub disk_low: std::sync::atomic::AtomicBool,
    /// Set on a coordinator: the runner registry it places sessions with.
    pub(crate) coordinator: Option<Coordinator>,
    /// Set on a runner: its place in the cluster.
    pub(crate) membership: Option<Arc<Membership>>,
    /// The MCP clients connected here, told when the tool registry changes.
    pub(crate) mcp_clients: crate::mcp::Clients,
}

impl AppState {
    /// Opens the store, bootstraps the API key and builds the runtime; returns a newly
    /// generated key, if any.
    pub(crate) async fn open(
        mut config: ServerConfig,
    ) -> Result<(Self, Option<String>), StartError> {
        let sealer = Sealer::new(config.credential_key.as_deref())?;
        let data_dir = &config.runtime.data_dir;
        let cache = data_dir.join("plugin-cache");
        let node = node_id(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.join(NODE_FILE).display().to_string(),
            source,
        })?;
        let (store, backing) = open_storage(&config.storage, Some(&cache)).await?;
        let store = store.on_node(&node);
        let runners = match &backing {
            Backing::Database(sql) => sql.runners(),
            Backing::Plugin(_) => None,
        };
        let (appends, storage_plugin) = match backing {
            Backing::Database(sql) => (sql.appends().await?, None),
            Backing::Plugin(plugin) => (None, Some(plugin)),
        };
        let (mut coordinator, mut membership) = (None, None);
        match config.cluster.clone() {
            None => {}
            Some(ClusterConfig { token, .. }) if token.len() < 32 => {
                return Err(StartError::Cluster(
                    "ASH_CLUSTER_TOKEN must be at least 32 bytes (e.g. openssl rand -hex 32)".into(),
                ))
            }
            Some(_) if runners.is_none() => {
                return Err(StartError::Cluster(
                    "a cluster's coordinators and runners share one Postgres: set ASH_DATABASE_URL to it".into(),
                ))
            }
            Some(ClusterConfig {
                token,
                role: ClusterRole::Coordinator { ttl },
            }) => {
                // Sessions run on the runners, never here.
                config.runtime.max_sandboxes = 0;
                config.runtime.cluster = true;
                let runners = runners.expect("checked above");
                let cluster = ash_runtime::Cluster { runners, ttl };
                coordinator = Some(Coordinator::new(cluster, token));
            }
            Some(ClusterConfig {
                token,
                role: ClusterRole::Runner {
                    coordinators,
                    address,
                },
            }) => {
                config.runtime.runner = Some(node.clone());
                config.runtime.cluster = true;
                let capacity = config.runtime.max_sandboxes as u64;
                let m = Membership::new(node.clone(), coordinators, address, token, capacity);
                membership = Some(Arc::new(m));
            }
        }
        let (keys, new_key) = match membership {
            // A runner takes no API key: coordinators prove themselves with the cluster token.
            Some(_) => (Keys::none(), None),
            None => Keys::bootstrap(&store, &config).await?,
        };
        let plugins = load_plugins(config.plugins.clone(), cache).await?;
        let snapshots = ash_snapshots::SnapshotStore::open(
            config.snapshot_store.as_deref(),
            &config.runtime.data_dir.join("snapshot-store"),
        )?;
        tracing::info!(
            store = snapshots.location(),
            "workspace snapshots go to the snapshot store"
        );
        let parts = Parts {
            store: store.clone(),
            plugins,
            sealer,
            snapshots,
            appends,
        };
        let runtime = Runtime::open(config.runtime.clone(), parts)?;
        let state = Self {
            runtime: Arc::new(runtime),
            config,
            store,
            storage_plugin,
            keys,
            disk_low: Default::default(),
            coordinator,
            membership,
            mcp_clients: Default::default(),
        };
        Ok((state, new_key))
    }
}

/// Where a server keeps its id: the same across restarts on one data dir, distinct between
/// servers, so each closes only the turns it left open.
const NODE_FILE: &str = "node-id";

/// This server's id, made on its first start.
fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(NODE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// What the records are on.
pub enum Backing {
    Database(SqlStorage),
    Plugin(StoragePlugin),
}

/// Opens the configured storage: connects to (and migrates) the database, or loads the storage
/// plugin (compiled components cached in `cache`); returns which it is too.
pub async fn open_storage(
    config: &crate::StorageConfig,
    cache: Option<&Path>,
) -> Result<(Store, Backing), StartError> {
    match config {
        crate::StorageConfig::Database(database) => {
            let sql = database.open().await?;
            Ok((Store::new(Arc::new(sql.clone())), Backing::Database(sql)))
        }
        crate::StorageConfig::Plugin(plugin) => {
            let (plugin, cache) = (plugin.clone(), cache.map(Path::to_owned));
            let loaded =
                tokio::task::spawn_blocking(move || StoragePlugin::load(&plugin, cache.as_deref()))
                    .await
                    .map_err(|e| {
                        StartError::StoragePlugin(ash_plugin_host::PluginError::Manifest(
                            e.to_string(),
                        ))
                    })?
                    .map_err(StartError::StoragePlugin)?;
            let status = loaded.status();
            tracing::info!(plugin = %status.id, version = %status.version, "storage plugin loaded");
            let store = Store::new(Arc::new(loaded.clone()));
            // A database is reached while connecting; a plugin's store only by a first call.
            store.has_api_keys().await?;
            Ok((store, Backing::Plugin(loaded)))
        }
    }
}

/// Loads (compiles) the configured plugins off the runtime.
async fn load_plugins(
    configs: Vec<ash_plugin_host::PluginConfig>,
    cache: std::path::PathBuf,
) -> Result<ash_plugin_host::Plugins, StartError> {
    let plugins =
        tokio::task::spawn_blocking(move || ash_plugin_host::Plugins::load(&configs, Some(&cache)))
            .await
            .map_err(|e| ash_plugin_host::PluginError::Manifest(e.to_string()))??;
    for status in plugins.status() {
        tracing::info!(plugin = %status.id, version = %status.version, kind = ?status.kind, "plugin loaded");
    }
    Ok(plugins)
}

/// Creates `dir` (and parents) readable by this user only.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
