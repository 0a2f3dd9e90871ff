use std::path::Path;

use ash_store::Store;

use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::{ServerConfig, StartError};

/// Shared by every request.
pub struct AppState {
    pub config: ServerConfig,
    pub store: Store,
    pub keys: Keys,
    pub sessions: Sessions,
    pub metrics: Metrics,
}

impl AppState {
    /// Opens the store and bootstraps the API key; returns a newly generated key, if any.
    pub(crate) async fn open(config: ServerConfig) -> Result<(Self, Option<String>), StartError> {
        let store = Store::open(&config.data_dir.join("ash.db")).await?;
        let (keys, new_key) = Keys::bootstrap(&store, &config).await?;
        let sessions = Sessions::new(&config);
        let state = Self {
            metrics: Metrics::new(config.max_sandboxes),
            config,
            store,
            keys,
            sessions,
        };
        Ok((state, new_key))
    }
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
