//! An agent as the runtime reads it: its folder (on a runner, fetched from the snapshot store)
//! and its `ash.toml`, checked against the operator's grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ash_core::{Agent, AgentManifest, AgentName, SessionStatus, MANIFEST_FILE, MAX_MANIFEST_BYTES};

use crate::{Runtime, RuntimeError};

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
        let dir = match self.config.runner {
            None => PathBuf::from(&agent.path),
            Some(_) => self.fetched_agent(agent).await?,
        };
        Ok((dir.clone(), manifest_at(dir).await?))
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
        let granted = &self.config.sandbox_grant_syscalls;
        match manifest.sandbox.syscalls.iter().find(|asked| !granted.contains(asked)) {
            None => Ok(()),
            Some(asked) => Err(RuntimeError::Forbidden(format!(
                "ash.toml asks for syscall {asked:?}, which this server's operator has not granted (sandbox_grant_syscalls in its settings)"
            ))),
        }
    }
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
