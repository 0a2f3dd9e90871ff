//! Workspace snapshots in the snapshot store (`ash_snapshots`), so a session's files survive
//! the loss of this node's disk and can follow the session to another node.
//!
//! After each turn that ends with the sandbox still there, after a pause or stop, and after
//! files are written or deleted from outside the sandbox, the whole
//! workspace is packed and sent, off the turn's path (its `done` never waits for it), 250 ms
//! later: at most one upload per session runs at a time, and the requests that come meanwhile
//! make one more after it, so a session taking turns back to back sends about four snapshots
//! a second, each of its newest state. A workspace whose fingerprint (names, sizes, modification times, link targets) is
//! the one last stored from this node is not sent again. An upload that fails leaves the last good snapshot in place (the store swaps in a
//! new one only once it is there whole) and is logged; the next turn tries again. A session
//! whose node has neither its workspace nor a local snapshot is brought back from the store
//! before its sandbox starts; if the store cannot be reached, the start is refused rather
//! than begun from the agent's folder without the session's files.

use std::sync::Arc;

use ash_core::SessionId;

use crate::sessions::Slot;
use crate::{Runtime, RuntimeError};

/// The most file content a snapshot holds (the default workspace quota).
const SNAPSHOT_LIMIT: u64 = 512 << 20;

/// How long an upload waits after it is asked for: a session taking turns back to back sends
/// one snapshot for all of them, not one beside each next turn.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Where a session's upload stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upload {
    #[default]
    Idle,
    /// Settling before it runs, or running.
    Running,
    /// Running (or settling before it runs), and asked for again meanwhile.
    Again,
}

impl Runtime {
    /// Sends the session's workspace to the snapshot store soon, off the caller's path.
    pub(crate) fn snapshot_later(self: &Arc<Self>, id: SessionId) {
        let slot = self.sessions.slot(id);
        {
            let mut upload = slot.upload.lock().expect("lock");
            if *upload != Upload::Idle {
                *upload = Upload::Again;
                return;
            }
            *upload = Upload::Running;
        }
        let runtime = self.clone();
        self.uploads.spawn(async move {
            loop {
                // Turns that end meanwhile are in this one upload (their requests are absorbed).
                tokio::time::sleep(SETTLE).await;
                *slot.upload.lock().expect("lock") = Upload::Running;
                runtime.upload(id, &slot).await;
                let mut upload = slot.upload.lock().expect("lock");
                if *upload == Upload::Again {
                    *upload = Upload::Running;
                } else {
                    *upload = Upload::Idle;
                    return;
                }
            }
        });
    }

    /// Stores the workspace's snapshot unless it is unchanged since the last one stored.
    async fn upload(&self, id: SessionId, slot: &Slot) {
        let key = id.to_string();
        let host = self.sessions.host();
        let sent = match host.fingerprint_workspace(&key).await {
            Ok(now) if *slot.stored.lock().expect("lock") == Some(now) => Ok(None),
            Ok(now) => match host.pack_workspace(&key, SNAPSHOT_LIMIT).await {
                Ok(bundle) => self
                    .snapshots
                    .put(&key, bundle.into())
                    .await
                    .map(|()| Some(now))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        let outcome = match sent {
            Ok(None) => "unchanged",
            Ok(Some(now)) => {
                *slot.stored.lock().expect("lock") = Some(now);
                "ok"
            }
            Err(why) => {
                tracing::warn!(session = %id, store = self.snapshots.location(), "cannot store the session's snapshot: {why}; its last good snapshot stays, and its next turn tries again");
                "failed"
            }
        };
        self.metrics
            .snapshot_uploads
            .with_label_values(&[outcome])
            .inc();
    }

    /// Brings the session's workspace back from the snapshot store when this node has none
    /// (nor a local snapshot); nothing when the store has none either.
    pub(crate) async fn restore_if_gone(&self, id: SessionId) -> Result<(), RuntimeError> {
        let key = id.to_string();
        let host = self.sessions.host();
        if host
            .has_files(&key)
            .await
            .map_err(RuntimeError::sandbox("Failed to mount the workspace"))?
        {
            return Ok(());
        }
        let fetched = self.snapshots.get(&key).await;
        let restored = match fetched {
            Ok(None) => return Ok(()),
            Ok(Some(bundle)) => host
                .unpack_workspace(&key, bundle, SNAPSHOT_LIMIT)
                .await
                .map_err(RuntimeError::sandbox("Failed to restore the workspace")),
            Err(ash_snapshots::SnapshotError::Store(e)) => Err(RuntimeError::Unavailable(format!(
                "the session's files are in the snapshot store, which cannot be reached ({e}); try again once it is back"
            ))),
            Err(e) => Err(RuntimeError::internal("Failed to restore the workspace", e)),
        };
        let outcome = if restored.is_ok() { "ok" } else { "failed" };
        self.metrics
            .snapshot_restores
            .with_label_values(&[outcome])
            .inc();
        let files = restored?;
        tracing::info!(session = %id, files, store = self.snapshots.location(), "workspace brought back from the snapshot store");
        Ok(())
    }

    /// Forgets an ended session here: stops its sandbox, deletes its workspace and local
    /// snapshots, and (off the caller's path) its snapshot in the store.
    pub(crate) async fn forget(&self, id: SessionId) {
        self.sessions.end(id).await;
        let snapshots = self.snapshots.clone();
        self.uploads.spawn(async move {
            if let Err(e) = snapshots.delete(&id.to_string()).await {
                tracing::warn!(session = %id, "cannot delete the ended session's snapshot from the store: {e}");
            }
        });
    }
}
