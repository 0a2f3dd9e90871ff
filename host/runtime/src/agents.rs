//! An agent as the runtime reads it: its folder (on a runner, fetched from the snapshot store)
//! and its `ash.toml`, checked against the operator's grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ash_core::{
    Agent, AgentManifest, AgentName, RelativePath, SessionStatus, MANIFEST_FILE, MAX_MANIFEST_BYTES,
};
use ash_sandbox::{FileError, Workspace};

use crate::{Missing, Runtime, RuntimeError};

/// The most file content an agent's folder sent to runners holds.
const AGENT_LIMIT: u64 = 256 << 20;

/// The agent's `ash.toml` text, if it has one.
pub fn read_manifest(dir: &Path) -> Result<Option<String>, RuntimeError> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::metadata(&path) {
        Err(_) => Ok(None),
        Ok(meta) if meta.len() > MAX_MANIFEST_BYTES as u64 => Err(RuntimeError::invalid(format!(
            "invalid ash.toml: larger than {MAX_MANIFEST_BYTES} bytes"
        ))),
        Ok(_) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| RuntimeError::invalid(format!("cannot read ash.toml: {e}"))),
    }
}

/// The `ash.toml` in an agent's folder.
async fn manifest_at(dir: PathBuf) -> Result<AgentManifest, RuntimeError> {
    let text = blocking(move || {
        if !dir.is_dir() {
            return Err(RuntimeError::AgentUnusable(format!(
                "Agent directory {} is missing; redeploy the agent",
                dir.display()
            )));
        }
        read_manifest(&dir)
    })
    .await?;
    AgentManifest::parse(text.as_deref()).map_err(|e| RuntimeError::AgentUnusable(e.to_string()))
}

/// Where an agent version's folder is in the snapshot store.
fn bundle_key(name: &AgentName, version: i64) -> String {
    format!("agents/{name}/{version}")
}

impl Runtime {
    /// The agent's folder on this node and its `ash.toml`, read now (it may have been
    /// redeployed). A runner of a cluster is on another machine than the deploy that wrote the
    /// folder: it fetches each version's folder from the snapshot store once, where the
    /// coordinator put it ([`Self::publish_agent`]), and keeps it under its data dir.
    pub(crate) async fn agent_files(
        &self,
        agent: &Agent,
    ) -> Result<(PathBuf, AgentManifest), RuntimeError> {
        let dir = self.agent_dir(agent).await?;
        Ok((dir.clone(), manifest_at(dir).await?))
    }

    /// The agent's folder as this node reads it: where it was deployed, or on a node of a
    /// cluster, this node's copy of the version's folder from the snapshot store.
    pub async fn agent_dir(&self, agent: &Agent) -> Result<PathBuf, RuntimeError> {
        match self.config.cluster {
            false => Ok(PathBuf::from(&agent.path)),
            true => self.fetched_agent(agent).await,
        }
    }

    /// Holds off every other change of a managed agent's folder on this node (deploys and
    /// file changes) until dropped.
    pub async fn agent_folder_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.agent_folders.lock().await
    }

    /// Changes the agent's files as its next version: its folder is copied, changed, checked
    /// (`CLAUDE.md` stays, `ash.toml` parses and asks for nothing ungranted) and swapped in
    /// whole, so a sandbox starts from one version or the other, never a mix. A folder on the
    /// server (a path-mode deploy) is the operator's and is not changed. `_held` is
    /// [`Self::agent_folder_lock`]'s guard, held until the new version is sent on.
    pub async fn change_agent_files(
        &self,
        _held: &tokio::sync::MutexGuard<'_, ()>,
        name: &AgentName,
        changes: Vec<FileChange>,
    ) -> Result<Agent, RuntimeError> {
        let agent = self
            .store
            .get_agent(name)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Agent))?;
        let root = self.managed_agents();
        if !self.config.cluster && Path::new(&agent.path).parent() != Some(root.as_path()) {
            return Err(RuntimeError::Conflict(format!(
                "agent {name} is deployed from a folder on the server ({}), which Ash does not change; change the files there and deploy again",
                agent.path
            )));
        }
        let base = self.agent_dir(&agent).await?;
        let grants = self.config.sandbox_grant_syscalls.clone();
        let target = name.clone();
        let dir = blocking(move || {
            let staging = root.join(format!(".staging-{}", uuid::Uuid::new_v4()));
            let changed = changed_copy(&base, &root, &staging, changes, &grants);
            match changed {
                Ok(()) => Ok(place_folder(&root, &target, &staging)?),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    Err(e)
                }
            }
        })
        .await?;
        let replaced = self
            .store
            .replace_agent_folder(name, &dir.to_string_lossy(), agent.version)
            .await?;
        replaced.ok_or_else(|| {
            RuntimeError::Conflict(format!(
                "agent {name} changed while its files were being written; read them again and retry"
            ))
        })
    }

    /// The runner's copy of the agent version's folder, fetched from the snapshot store when
    /// it has none yet; the copies of versions before the one preceding it are deleted.
    async fn fetched_agent(&self, agent: &Agent) -> Result<PathBuf, RuntimeError> {
        let folder = self.fetched_agents().join(agent.name.as_str());
        let dir = folder.join(agent.version.to_string());
        if dir.is_dir() {
            return Ok(dir);
        }
        let key = bundle_key(&agent.name, agent.version);
        let bundle = match self.snapshots.get(&key).await {
            Ok(Some(bundle)) => bundle,
            Ok(None) => {
                return Err(RuntimeError::AgentUnusable(format!(
                    "version {} of agent {} is not in the snapshot store {} (its deploy did not finish sending it there); deploy the agent again",
                    agent.version,
                    agent.name,
                    self.snapshots.location()
                )))
            }
            Err(ash_snapshots::SnapshotError::Store(e)) => {
                return Err(RuntimeError::Unavailable(format!(
                    "the agent's files are in the snapshot store, which cannot be reached ({e}); try again once it is back"
                )))
            }
            Err(e) => return Err(RuntimeError::AgentUnusable(e.to_string())),
        };
        let version = agent.version;
        blocking(move || {
            std::fs::create_dir_all(&folder)?;
            let staging = folder.join(format!(".staging-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir(&staging)?;
            let unpacked = ash_sandbox::Workspace::open(&staging)
                .map_err(|e| RuntimeError::internal("cannot open the agent's folder", e))
                .and_then(|files| {
                    files.unpack(&bundle, AGENT_LIMIT).map_err(|e| {
                        RuntimeError::AgentUnusable(format!(
                            "the agent's files in the snapshot store cannot be used: {e}"
                        ))
                    })
                });
            // Another start of this version may have put it in place meanwhile: either copy is whole.
            let placed = unpacked.and_then(|_| match std::fs::rename(&staging, &dir) {
                Err(_) if dir.is_dir() => Ok(()),
                placed => Ok(placed?),
            });
            if staging.exists() {
                std::fs::remove_dir_all(&staging)?;
            }
            placed?;
            for old in std::fs::read_dir(&folder)?.flatten() {
                let name = old.file_name();
                let older = name
                    .to_str()
                    .and_then(|n| n.parse::<i64>().ok())
                    .is_some_and(|v| v < version - 1);
                if older {
                    std::fs::remove_dir_all(old.path())?;
                }
            }
            Ok(dir)
        })
        .await
    }

    /// Where a runner keeps the agent folders it fetched.
    fn fetched_agents(&self) -> PathBuf {
        self.config.data_dir.join("fetched-agents")
    }

    /// Sends the agent's folder to the snapshot store, where the runners of a cluster fetch it
    /// (a coordinator does this at every deploy), and deletes the version before it there.
    pub async fn publish_agent(&self, agent: &Agent) -> Result<(), RuntimeError> {
        let dir = PathBuf::from(&agent.path);
        let bundle = blocking(move || {
            ash_sandbox::Workspace::open(&dir)
                .map_err(|e| RuntimeError::internal("cannot open the agent's folder", e))?
                .pack_all(AGENT_LIMIT)
                .map_err(|e| {
                    RuntimeError::invalid(format!(
                        "the agent's folder cannot be sent to the runners: {e}"
                    ))
                })
        })
        .await?;
        let key = bundle_key(&agent.name, agent.version);
        let sent = self.snapshots.put(&key, bundle.into()).await;
        sent.map_err(|e| self.unsent(e))?;
        self.unpublish(&agent.name, agent.version - 1).await;
        Ok(())
    }

    /// Makes version `from`'s folder in the snapshot store the agent's current version's (it
    /// was changed in place), and deletes `from` there.
    pub async fn republish_agent(&self, agent: &Agent, from: i64) -> Result<(), RuntimeError> {
        let fetched = self.snapshots.get(&bundle_key(&agent.name, from)).await;
        let bundle = fetched.map_err(|e| self.unsent(e))?.ok_or_else(|| {
            RuntimeError::AgentUnusable(format!(
                "version {from} of agent {} is not in the snapshot store {}; deploy the agent again",
                agent.name,
                self.snapshots.location()
            ))
        })?;
        let key = bundle_key(&agent.name, agent.version);
        let sent = self.snapshots.put(&key, bundle).await;
        sent.map_err(|e| self.unsent(e))?;
        self.unpublish(&agent.name, from).await;
        Ok(())
    }

    fn unsent(&self, e: ash_snapshots::SnapshotError) -> RuntimeError {
        RuntimeError::Unavailable(format!(
            "the agent was changed, but its files could not be sent to the snapshot store {}, where runners fetch them ({e}); do it again once the store is back",
            self.snapshots.location()
        ))
    }

    /// Deletes an agent version's folder from the snapshot store, where it can.
    pub async fn unpublish(&self, name: &AgentName, version: i64) {
        if let Err(e) = self.snapshots.delete(&bundle_key(name, version)).await {
            tracing::warn!(agent = %name, version, "an agent's old files stay in the snapshot store: {e}");
        }
    }

    /// A runner hears that an agent was deployed or deleted: its warm pool is brought to the
    /// new version, or emptied; for a deleted agent, the sandboxes of its sessions here stop
    /// (they ended) and its fetched folders are deleted.
    pub async fn agent_changed(self: &Arc<Self>, name: AgentName) -> Result<(), RuntimeError> {
        let deleted = self.store.get_agent(&name).await?.is_none();
        if deleted {
            let held = self.sessions.held().await;
            for session in self.store.list_sessions(Some(&name)).await? {
                if session.status == SessionStatus::Ended && held.contains(&session.id) {
                    self.sessions.end(session.id).await;
                }
            }
            remove_folder(self.fetched_agents().join(name.as_str())).await?;
        }
        self.agent_deployed(name);
        Ok(())
    }

    /// Refuses a manifest asking for syscalls the operator has not granted.
    pub fn check_grants(&self, manifest: &AgentManifest) -> Result<(), RuntimeError> {
        check_grants(manifest, &self.config.sandbox_grant_syscalls)
    }
}

fn check_grants(manifest: &AgentManifest, granted: &[String]) -> Result<(), RuntimeError> {
    match manifest.sandbox.syscalls.iter().find(|asked| !granted.contains(asked)) {
        None => Ok(()),
        Some(asked) => Err(RuntimeError::Forbidden(format!(
            "ash.toml asks for syscall {asked:?}, which this server's operator has not granted (sandbox_grant_syscalls in its settings)"
        ))),
    }
}

/// A change to one of an agent's files.
pub enum FileChange {
    Write(RelativePath, Vec<u8>),
    Delete(RelativePath),
}

/// Copies the agent's folder `base` to `staging` (under `root`) and applies `changes` there,
/// each confined to the folder; then checks what the agent would be.
fn changed_copy(
    base: &Path,
    root: &Path,
    staging: &Path,
    changes: Vec<FileChange>,
    grants: &[String],
) -> Result<(), RuntimeError> {
    let opened = |dir: &Path| {
        Workspace::open(dir)
            .map_err(|e| RuntimeError::internal("cannot open the agent's folder", e))
    };
    let bundle = opened(base)?.pack_all(AGENT_LIMIT).map_err(file_error)?;
    std::fs::create_dir_all(root)?;
    std::fs::create_dir(staging)?;
    let folder = opened(staging)?;
    folder.unpack(&bundle, AGENT_LIMIT).map_err(file_error)?;
    for change in changes {
        match change {
            FileChange::Write(path, bytes) => folder.write(&path, &bytes, false),
            FileChange::Delete(path) => folder.remove(&path),
        }
        .map_err(file_error)?;
    }
    if !staging.join("CLAUDE.md").is_file() {
        return Err(RuntimeError::invalid(
            "an agent's folder must keep its CLAUDE.md",
        ));
    }
    let manifest = AgentManifest::parse(read_manifest(staging)?.as_deref())?;
    check_grants(&manifest, grants)
}

fn file_error(e: FileError) -> RuntimeError {
    match e {
        FileError::NotFound(_) => RuntimeError::NotFound(Missing::AgentFile),
        FileError::TooLarge { .. } => RuntimeError::TooLarge(e.to_string()),
        FileError::Io(e) => RuntimeError::Io(e),
        e => RuntimeError::invalid(e.to_string()),
    }
}

/// Swaps the folder at `staging` in for the agent's folder under `root`, whole, and returns
/// where it is; the folder it replaces is deleted.
pub fn place_folder(root: &Path, name: &AgentName, staging: &Path) -> std::io::Result<PathBuf> {
    let target = root.join(name.as_str());
    let old = root.join(format!(".old-{}", uuid::Uuid::new_v4()));
    let had_old = std::fs::rename(&target, &old).is_ok();
    std::fs::rename(staging, &target)?;
    if had_old {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(target)
}

/// Checks env names (`[A-Za-z_][A-Za-z0-9_]*`) and values (64 KiB, no NUL).
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), RuntimeError> {
    for (key, value) in env {
        let valid_key = !key.is_empty()
            && key.len() <= 256
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_key {
            return Err(RuntimeError::invalid(format!(
                "env name {key:?} must match [A-Za-z_][A-Za-z0-9_]* (at most 256)"
            )));
        }
        if value.len() > 64 * 1024 || value.contains('\0') {
            return Err(RuntimeError::invalid(format!(
                "env value of {key} must be at most 64 KiB, without NUL"
            )));
        }
    }
    Ok(())
}

/// Deletes an agent's folder and what it holds; one already gone is fine.
pub(crate) async fn remove_folder(dir: PathBuf) -> Result<(), RuntimeError> {
    blocking(move || match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::from(e)),
        _ => Ok(()),
    })
    .await
}

/// Runs blocking file work off the async runtime.
pub async fn blocking<T: Send + 'static, E: From<RuntimeError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::internal("file task failed", e))?
}
