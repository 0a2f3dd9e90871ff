//! Attachments: files sent with a session. Each is kept in the snapshot store under
//! `attachments/<id>` (checked like a snapshot, so any node of a cluster serves it), recorded
//! in the store, and placed in the session's workspace as `attachments/<filename>` through the
//! confined workspace view, never following a link the agent made.

use std::sync::Arc;

use ash_core::{check_attachment_name, Attachment, RelativePath, MAX_ATTACHMENT_BYTES};

use crate::{blocking, now, Missing, Runtime, RuntimeError};

/// What a client sends to attach.
pub struct NewAttachment {
    pub filename: String,
    pub mime_type: Option<String>,
    /// The message it belongs to (a UUID); `unlinked` when none.
    pub message_id: Option<String>,
    pub bytes: Vec<u8>,
}

fn object(id: &str) -> String {
    format!("attachments/{id}")
}

impl Runtime {
    /// Keeps the file and places it in the session's workspace.
    pub async fn attach(
        self: &Arc<Self>,
        raw_id: &str,
        new: NewAttachment,
    ) -> Result<Attachment, RuntimeError> {
        check_attachment_name(&new.filename)?;
        if new.bytes.is_empty() {
            return Err(RuntimeError::invalid("content is empty"));
        }
        if new.bytes.len() > MAX_ATTACHMENT_BYTES {
            return Err(RuntimeError::TooLarge(format!(
                "an attachment holds at most {MAX_ATTACHMENT_BYTES} bytes"
            )));
        }
        let mime_type = new
            .mime_type
            .unwrap_or_else(|| "application/octet-stream".into());
        let plausible = |m: &str| {
            m.len() <= 255
                && m.contains('/')
                && m.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        };
        if !plausible(&mime_type) {
            return Err(RuntimeError::invalid(
                "mimeType must be a media type such as text/plain, at most 255 characters",
            ));
        }
        let message_id = match new.message_id {
            Some(id) if uuid::Uuid::parse_str(&id).is_err() => {
                return Err(RuntimeError::invalid("messageId must be a UUID"))
            }
            Some(id) => id,
            None => "unlinked".into(),
        };
        let (session, dir) = self.files_to_write(raw_id).await?;
        let attachment = Attachment {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: session.tenant_id.clone(),
            message_id,
            session_id: session.id,
            filename: new.filename,
            mime_type,
            size: new.bytes.len() as u64,
            created_at: now(),
        };
        let bytes = bytes::Bytes::from(new.bytes);
        let kept = self
            .snapshots
            .put(&object(&attachment.id), bytes.clone())
            .await;
        kept.map_err(|e| {
            RuntimeError::Unavailable(format!(
                "the attachment could not be kept in the snapshot store ({e}); send it again"
            ))
        })?;
        self.store.insert_attachment(&attachment).await?;
        let path = RelativePath::parse(&format!("attachments/{}", attachment.filename))?;
        blocking(move || {
            let workspace = ash_sandbox::Workspace::open(&dir)?;
            workspace
                .write(&path, &bytes, false)
                .map_err(|e| RuntimeError::invalid(format!("cannot place the attachment: {e}")))
        })
        .await?;
        self.files_written(session.id).await?;
        tracing::info!(session = %session.id, attachment = %attachment.id, size = attachment.size, "attachment kept");
        Ok(attachment)
    }

    /// A session's attachments, oldest first.
    pub async fn attachments(&self, raw_id: &str) -> Result<Vec<Attachment>, RuntimeError> {
        let session = self.session(raw_id).await?;
        Ok(self.store.list_attachments(session.id).await?)
    }

    /// An attachment and its bytes.
    pub async fn attachment(&self, id: &str) -> Result<(Attachment, bytes::Bytes), RuntimeError> {
        let found = self.store.get_attachment(id).await?;
        let attachment = found.ok_or(RuntimeError::NotFound(Missing::Attachment))?;
        let bytes = match self.snapshots.get(&object(id)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(RuntimeError::NotFound(Missing::Attachment)),
            Err(ash_snapshots::SnapshotError::Store(e)) => {
                return Err(RuntimeError::Unavailable(format!(
                    "the snapshot store that keeps attachments cannot be reached ({e}); try again"
                )))
            }
            Err(e) => return Err(RuntimeError::internal("cannot read the attachment", e)),
        };
        Ok((attachment, bytes))
    }

    /// Forgets an attachment (the copy in the workspace is the agent's now, and stays).
    pub async fn detach(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.store.delete_attachment(id).await? {
            return Err(RuntimeError::NotFound(Missing::Attachment));
        }
        if let Err(e) = self.snapshots.delete(&object(id)).await {
            tracing::warn!(attachment = %id, "the deleted attachment's bytes stay in the snapshot store: {e}");
        }
        Ok(())
    }
}
