use std::path::Path;
use std::sync::Arc;

use ash_plugin_host::StoragePlugin;
use ash_store::Store;

use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::{ServerConfig, StartError};

/// Shared by every request.
pub struct AppState {
    pub config: ServerConfig,
    pub store: Store,
    /// The storage plugin the records are on, if they are on one (for `/health`).
    pub storage_plugin: Option<StoragePlugin>,
    pub keys: Keys,
    pub sessions: Sessions,
    pub metrics: Metrics,
    pub plugins: ash_plugin_host::Plugins,
    pub sealer: Option<crate::credentials::Sealer>,
    /// The data dir's disk had less than a tenth free when last looked at (`/health`).
    pub disk_low: std::sync::atomic::AtomicBool,
    /// Where a stop stands.
    pub drain: crate::drain::Drain,
}

impl AppState {
    /// Opens the store and bootstraps the API key; returns a newly generated key, if any.
    pub(crate) async fn open(config: ServerConfig) -> Result<(Self, Option<String>), StartError> {
        let sealer = crate::credentials::Sealer::new(config.credential_key.as_deref())?;
        let cache = config.data_dir.join("plugin-cache");
        let (store, storage_plugin) = open_storage(&config.storage, Some(&cache)).await?;
        let (keys, new_key) = Keys::bootstrap(&store, &config).await?;
        if let Some(unknown) = config.sandbox_grant_syscalls.iter().find(|name| {
            !ash_sandbox::seccomp::BLOCKED
                .iter()
                .any(|b| &b.name == name)
        }) {
            return Err(StartError::Config(format!(
                "sandbox_grant_syscalls: {unknown:?} is not a syscall the sandbox filter refuses (see docs/operations.md)"
            )));
        }
        let users = ash_sandbox::SandboxUsers::for_this_process(config.sandbox_uids)
            .map_err(StartError::SandboxUsers)?;
        let disks = match (config.disk_quota, &users) {
            (Some(quota), ash_sandbox::SandboxUsers::PerSandbox { .. })
                if ash_sandbox::disk::support().is_ok() =>
            {
                let root = config.data_dir.join("sandboxes");
                std::fs::create_dir_all(&root).map_err(|source| StartError::DataDir {
                    path: root.display().to_string(),
                    source,
                })?;
                let disks = ash_sandbox::disk::Disks::prepare(&config.data_dir, &root, quota)
                    .map_err(|e| {
                        StartError::SandboxUsers(format!(
                            "cannot make the workspace filesystem template: {e}"
                        ))
                    })?;
                Some(Arc::new(disks))
            }
            _ => None,
        };
        let sessions = Sessions::new(&config, users, disks);
        let plugins = load_plugins(config.plugins.clone(), cache).await?;
        let state = Self {
            plugins,
            sealer,
            metrics: Metrics::new(config.max_sandboxes),
            config,
            store,
            storage_plugin,
            keys,
            sessions,
            disk_low: Default::default(),
            drain: Default::default(),
        };
        Ok((state, new_key))
    }
}

/// Opens the configured storage: connects to (and migrates) the database, or loads the storage
/// plugin (compiled components cached in `cache`), which is returned too.
pub async fn open_storage(
    config: &crate::StorageConfig,
    cache: Option<&Path>,
) -> Result<(Store, Option<StoragePlugin>), StartError> {
    match config {
        crate::StorageConfig::Database(database) => {
            Ok((Store::new(Arc::new(database.open().await?)), None))
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
            Ok((store, Some(loaded)))
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
