//! An agent as the runtime reads it: its `ash.toml`, checked against the operator's grants.

use std::collections::BTreeMap;
use std::path::Path;

use ash_core::{Agent, AgentManifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};

use crate::{Runtime, RuntimeError};

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

/// The agent's `ash.toml`, read from its folder now (it may have been redeployed).
pub(crate) async fn manifest(agent: &Agent) -> Result<AgentManifest, RuntimeError> {
    let dir = Path::new(&agent.path).to_owned();
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

impl Runtime {
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

/// Runs blocking file work off the async runtime.
pub async fn blocking<T: Send + 'static, E: From<RuntimeError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::internal("file task failed", e))?
}
