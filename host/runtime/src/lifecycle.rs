//! A session's life: create, pause, stop and resume (warm or cold), fork, exec, end, and the
//! folder its files are read from and written to.
//!
//! Pause and stop write a durable snapshot of the workspace before they return, holding the
//! session's turn lock so the files hold still (busy while a turn runs). Resume is warm when
//! the sandbox is still up; otherwise a new sandbox starts over the workspace — or over the
//! last snapshot when the workspace is gone — so the files and the backend's conversation
//! survive. An end is written to the store before the sandbox goes, so whatever comes
//! meanwhile reads it and stops there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ash_core::{
    AgentName, HookPoint, ResumePath, Session, SessionConfig, SessionId, SessionStatus, Transition,
    DEFAULT_TENANT,
};
use ash_protocol::Event;

use crate::sessions::Origin;
use crate::{hooks, validate_env, Missing, Runtime, RuntimeError};

/// The longest system prompt a session may bring.
const MAX_SYSTEM_PROMPT: usize = 1_000_000;
/// The longest command text `exec` takes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// `exec`'s largest timeout, as in the reference API.
pub const EXEC_MAX: Duration = Duration::from_secs(300);

/// What a new session asks for.
#[derive(Debug, Default)]
pub struct NewSession {
    pub agent: String,
    /// A stored credential whose key the session's sandboxes get.
    pub credential_id: Option<String>,
    pub extra_env: BTreeMap<String, String>,
    pub system_prompt: Option<String>,
    /// The backend options of all its turns.
    pub config: SessionConfig,
}

/// How an `exec` ended. Each output keeps its first MiB; `truncated` says whether more was
/// dropped.
#[derive(Debug)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Killed at its timeout (exit code 124).
    pub timed_out: bool,
    pub truncated: bool,
}

/// Where a session's files are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// Its workspace.
    Workspace,
    /// Its last snapshot: the workspace is gone.
    Snapshot,
}

/// The current time as the API shows it (RFC 3339, milliseconds, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Runtime {
    /// The session with this id.
    pub async fn session(&self, raw_id: &str) -> Result<Session, RuntimeError> {
        let id = SessionId::parse(raw_id)?;
        self.store
            .get_session(id)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Session))
    }

    /// Starts a session of the agent: its sandbox first (a warm one when it asks for nothing
    /// of its own), then its record.
    pub async fn create(self: &Arc<Self>, new: NewSession) -> Result<Session, RuntimeError> {
        let agent_name = AgentName::try_from(new.agent)?;
        validate_env(&new.extra_env)?;
        new.config.check()?;
        if new
            .system_prompt
            .as_ref()
            .is_some_and(|p| p.len() > MAX_SYSTEM_PROMPT)
        {
            return Err(RuntimeError::invalid(
                "systemPrompt must be at most 1,000,000 bytes",
            ));
        }
        let agent = self
            .store
            .get_agent(&agent_name)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Agent))?;
        // The session's own prompt, else the agent's active version's.
        let system_prompt = match new.system_prompt {
            Some(prompt) => Some(prompt),
            None => self.store.active_prompt(&agent).await?,
        };
        let now = now();
        let id = SessionId::new();
        let session = Session {
            id,
            tenant_id: DEFAULT_TENANT.into(),
            agent_name,
            sandbox_id: id.to_string(),
            status: SessionStatus::Active,
            runner_id: self.config.runner.clone(),
            parent_session_id: None,
            env: new.extra_env,
            credential_id: new.credential_id,
            config: new.config,
            created_at: now.clone(),
            last_active_at: now,
            logged_bytes: 0,
        };
        self.place(&session, &agent, system_prompt.as_deref())
            .await?;
        if let Err(e) = self.store.insert_session(&session).await {
            self.sessions.end(id).await;
            return Err(e.into());
        }
        tracing::info!(session = %id, agent = %session.agent_name, "session created");
        hooks::lifecycle(self, HookPoint::SessionCreated, &session, None);
        Ok(session)
    }

    /// Ends the session: it takes nothing more, its sandbox stops and its files are deleted.
    pub async fn end(&self, raw_id: &str) -> Result<Session, RuntimeError> {
        let session = self.session(raw_id).await?;
        // Ended first: a message or resume that comes meanwhile reads it and stops there.
        let session = self.transition(session.id, Transition::End).await?;
        self.forget(session.id).await;
        tracing::info!(session = %session.id, "session ended");
        hooks::lifecycle(self, HookPoint::SessionEnded, &session, None);
        Ok(session)
    }

    /// Writes a durable snapshot of the workspace, then stops taking messages. The sandbox
    /// stays up, so resuming is instant.
    pub async fn pause(self: &Arc<Self>, raw_id: &str) -> Result<Session, RuntimeError> {
        self.set_aside(raw_id, Transition::Pause).await
    }

    /// Snapshots the workspace and stops the sandbox; the files and the conversation stay for
    /// [`Self::resume`].
    pub async fn stop(self: &Arc<Self>, raw_id: &str) -> Result<Session, RuntimeError> {
        self.set_aside(raw_id, Transition::Stop).await
    }

    /// A pause or a stop: the snapshot, and for a stop the sandbox's end, under the turn lock,
    /// held to the end (a message meanwhile is refused, one after it reads the new status).
    async fn set_aside(
        self: &Arc<Self>,
        raw_id: &str,
        transition: Transition,
    ) -> Result<Session, RuntimeError> {
        let session = self.session(raw_id).await?;
        session.status.apply(transition)?;
        let _still = self.sessions.hold(session.id)?;
        self.sessions.snapshot(session.id).await?;
        self.snapshot_later(session.id);
        if transition == Transition::Stop {
            self.sessions.discard(session.id).await;
        }
        self.announce(session.id, transition).await
    }

    /// Back to `active` — warm when its sandbox is still up, cold otherwise (a new sandbox over
    /// its workspace, or over its last snapshot when the workspace is gone), with the agent's
    /// and the session's env applied again.
    pub async fn resume(&self, raw_id: &str) -> Result<Session, RuntimeError> {
        let session = self.session(raw_id).await?;
        session.status.apply(Transition::Resume)?;
        if session.status == SessionStatus::Active {
            return Ok(session);
        }
        // Held to the end, as a pause or stop holds it: one of them at a time.
        let _still = self.sessions.hold(session.id)?;
        let path = match self.sessions.is_warm(session.id).await {
            true => ResumePath::Warm,
            false => ResumePath::Cold,
        };
        self.live(&session, None, Origin::Existing).await?;
        let path = path.as_str();
        self.metrics.resumes.with_label_values(&[path]).inc();
        tracing::info!(session = %session.id, path, "session resumed");
        self.announce(session.id, Transition::Resume).await
    }

    /// A new session (`paused`, `parentSessionId` set) with a copy of the workspace and of the
    /// conversation; resume it to use it.
    /// The lines its sandbox printed after index `after` (-1: all kept); none when it has no
    /// sandbox here now.
    pub async fn logs(
        &self,
        raw_id: &str,
        after: i64,
    ) -> Result<Vec<ash_core::LogLine>, RuntimeError> {
        let session = self.session(raw_id).await?;
        Ok(match self.sessions.sandbox_of(session.id).await {
            Some(live) => live.sandbox.logs(after),
            None => Vec::new(),
        })
    }

    /// Patches the session's backend options for its next turns, whatever its status.
    pub async fn configure(
        &self,
        raw_id: &str,
        patch: SessionConfig,
    ) -> Result<Session, RuntimeError> {
        patch.check()?;
        let id = self.session(raw_id).await?.id;
        self.store
            .configure_session(id, patch)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Session))
    }

    pub async fn fork(&self, raw_id: &str) -> Result<Session, RuntimeError> {
        let parent = self.session(raw_id).await?;
        if parent.status == SessionStatus::Ended {
            return Err(RuntimeError::Gone(
                "Session has ended; its files are gone, so it cannot be forked",
            ));
        }
        let _still = self.sessions.hold(parent.id)?;
        let id = SessionId::new();
        let child = Session {
            id,
            sandbox_id: id.to_string(),
            status: SessionStatus::Paused,
            parent_session_id: Some(parent.id.to_string()),
            created_at: now(),
            last_active_at: now(),
            ..parent.clone()
        };
        self.sessions.fork(parent.id, child.id).await?;
        self.store.insert_session(&child).await?;
        self.store.copy_messages(parent.id, child.id).await?;
        tracing::info!(parent = %parent.id, session = %child.id, "session forked");
        hooks::lifecycle(self, HookPoint::SessionCreated, &child, None);
        Ok(child)
    }

    /// Runs a shell command in the session's workspace, inside its sandbox, as the agent would;
    /// it (and everything it started) is killed after `timeout`.
    pub async fn exec(
        &self,
        raw_id: &str,
        command: String,
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        if command.is_empty() || command.len() > MAX_COMMAND_BYTES {
            return Err(RuntimeError::invalid(format!(
                "command must be 1-{MAX_COMMAND_BYTES} bytes"
            )));
        }
        if timeout.is_zero() || timeout > EXEC_MAX {
            return Err(RuntimeError::invalid(format!(
                "timeout must be 1-{} milliseconds",
                EXEC_MAX.as_millis()
            )));
        }
        let session = self.session(raw_id).await?;
        session.status.accept_message()?;
        let live = self.live(&session, None, Origin::Existing).await?;
        let answer = live.sandbox.exec(command, timeout);
        let failed = |detail: String| RuntimeError::internal("Exec failed", detail);
        match tokio::time::timeout(timeout + Duration::from_secs(5), answer).await {
            Ok(Ok(Event::ExecResult {
                exit_code,
                stdout,
                stderr,
                timed_out,
                truncated,
                ..
            })) => Ok(ExecOutcome {
                exit_code,
                stdout,
                stderr,
                timed_out,
                truncated,
            }),
            Ok(Ok(Event::Error { error, .. })) => Err(failed(error)),
            Ok(Ok(other)) => Err(failed(format!("unexpected answer {other:?}"))),
            Ok(Err(e)) => Err(RuntimeError::internal("Sandbox not available", e)),
            Err(_) => Err(failed("the sandbox did not answer in time".into())),
        }
    }

    /// Ends the agent's sessions (their sandboxes stop), forgets the agent and stops its warm
    /// sandboxes; deletes its folder when the server wrote it (`managed`).
    pub async fn remove_agent(&self, name: &AgentName) -> Result<ash_core::Agent, RuntimeError> {
        let agent = self
            .store
            .get_agent(name)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Agent))?;
        for session in self.store.list_sessions(Some(name)).await? {
            if session.status != SessionStatus::Ended {
                self.store.transition(session.id, Transition::End).await?;
                self.forget(session.id).await;
            }
        }
        self.store.delete_agent(name).await?;
        for (id, live) in self.sessions.pool().drain(Some(name)) {
            self.sessions.retire(&id, &live).await;
        }
        let managed = self.managed_agents().join(name.as_str());
        if Path::new(&agent.path) == managed {
            crate::agents::remove_folder(managed).await?;
        }
        Ok(agent)
    }

    /// Where the server writes the agents deployed with their files.
    pub fn managed_agents(&self) -> PathBuf {
        self.config.data_dir.join("agents")
    }

    /// The session and the folder to read its files from: its workspace, or its last snapshot
    /// when the workspace is gone (from the snapshot store when this node has neither).
    pub async fn files_to_read(
        &self,
        raw_id: &str,
    ) -> Result<(Session, PathBuf, Files), RuntimeError> {
        let session = self.session(raw_id).await?;
        // Mounts the workspace's filesystem too, where it has one.
        self.restore_if_gone(session.id).await?;
        let host = self.sessions.host();
        let id = session.id.to_string();
        let workspace = host.workspace(&id);
        if workspace.is_dir() {
            return Ok((session, workspace, Files::Workspace));
        }
        let snapshot = host
            .latest_snapshot(&id)
            .ok_or(RuntimeError::NotFound(Missing::Workspace))?;
        Ok((session, snapshot, Files::Snapshot))
    }

    /// The session and its workspace to write to, brought back from the last snapshot (local,
    /// else the snapshot store's) if it was lost.
    pub async fn files_to_write(&self, raw_id: &str) -> Result<(Session, PathBuf), RuntimeError> {
        let session = self.session(raw_id).await?;
        self.restore_if_gone(session.id).await?;
        let host = self.sessions.host();
        let id = session.id.to_string();
        let restored = host
            .restore_workspace(&id)
            .await
            .map_err(RuntimeError::sandbox("Failed to restore the workspace"))?;
        if !restored {
            return Err(RuntimeError::NotFound(Missing::Workspace));
        }
        Ok((session, host.workspace(&id)))
    }

    /// After files were written or deleted from outside the sandbox: saves them as the
    /// session's snapshot when no sandbox runs it (`true` when a live sandbox has them
    /// already), and soon to the snapshot store either way, so they outlive this node.
    pub async fn files_written(self: &Arc<Self>, session: SessionId) -> Result<bool, RuntimeError> {
        self.snapshot_later(session);
        if self.sessions.is_warm(session).await {
            return Ok(true);
        }
        self.sessions.snapshot(session).await?;
        Ok(false)
    }

    /// Changes the session's status in the store.
    async fn transition(
        &self,
        id: SessionId,
        transition: Transition,
    ) -> Result<Session, RuntimeError> {
        self.store
            .transition(id, transition)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Session))
    }

    /// Changes the status and tells the observers.
    async fn announce(
        &self,
        id: SessionId,
        transition: Transition,
    ) -> Result<Session, RuntimeError> {
        let session = self.transition(id, transition).await?;
        let hook = match transition {
            Transition::Resume => HookPoint::SessionResumed,
            _ => HookPoint::SessionPaused,
        };
        hooks::lifecycle(self, hook, &session, None);
        Ok(session)
    }
}
