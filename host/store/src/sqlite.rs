use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use ash_core::{
    Agent, AgentName, Credential, CredentialType, Message, Role, Session, SessionEvent, SessionId,
    SessionStatus, DEFAULT_TENANT,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::{now, StoreError};

/// The SQLite-backed store. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The storage port on this file.
    pub fn storage(&self) -> crate::SqlStorage {
        crate::SqlStorage::sqlite(self.pool.clone())
    }

    /// Creates the agent, or replaces its path and env and bumps its version.
    pub async fn upsert_agent(
        &self,
        name: &AgentName,
        path: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Agent, StoreError> {
        let now = now();
        let env = serde_json::to_string(env).expect("a string map serialises");
        let row = sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, version, path, env, created_at, updated_at)
             VALUES (?, ?, ?, 1, ?, ?, ?, ?)
             ON CONFLICT (tenant_id, name) DO UPDATE
               SET version = version + 1, path = excluded.path, env = excluded.env, updated_at = excluded.updated_at
             RETURNING *",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(DEFAULT_TENANT)
        .bind(name.as_str())
        .bind(path)
        .bind(env)
        .bind(&now)
        .bind(&now)
        .fetch_one(&self.pool)
        .await?;
        agent_from_row(&row)
    }

    pub async fn get_agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query("SELECT * FROM agents WHERE tenant_id = ? AND name = ?")
            .bind(DEFAULT_TENANT)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE tenant_id = ? ORDER BY name")
            .bind(DEFAULT_TENANT)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Removes the agent; `false` if there was none.
    pub async fn delete_agent(&self, name: &AgentName) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM agents WHERE tenant_id = ? AND name = ?")
            .bind(DEFAULT_TENANT)
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, agent_name, sandbox_id, status, runner_id, parent_session_id, env, credential_id, created_at, last_active_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(session.id.to_string())
        .bind(&session.tenant_id)
        .bind(session.agent_name.as_str())
        .bind(&session.sandbox_id)
        .bind(session.status.as_str())
        .bind(&session.runner_id)
        .bind(&session.parent_session_id)
        .bind(serde_json::to_string(&session.env).expect("a string map serialises"))
        .bind(&session.credential_id)
        .bind(&session.created_at)
        .bind(&session.last_active_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(DEFAULT_TENANT)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Sessions newest first, optionally of one agent only.
    pub async fn list_sessions(
        &self,
        agent: Option<&AgentName>,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE tenant_id = ? AND (? IS NULL OR agent_name = ?)
             ORDER BY created_at DESC, id",
        )
        .bind(DEFAULT_TENANT)
        .bind(agent.map(AgentName::as_str))
        .bind(agent.map(AgentName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Sets the status and returns the updated session.
    pub async fn set_session_status(
        &self,
        id: SessionId,
        status: SessionStatus,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("UPDATE sessions SET status = ?, last_active_at = ? WHERE id = ? AND tenant_id = ? RETURNING *")
            .bind(status.as_str())
            .bind(now())
            .bind(id.to_string())
            .bind(DEFAULT_TENANT)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// How many sessions there are in each status (statuses without any are left out).
    pub async fn count_sessions(&self) -> Result<Vec<(SessionStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM sessions WHERE tenant_id = ? GROUP BY status",
        )
        .bind(DEFAULT_TENANT)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(raw, count)| {
                SessionStatus::parse(&raw)
                    .map(|status| (status, count))
                    .ok_or(StoreError::Corrupt(format!(
                        "unknown session status {raw:?}"
                    )))
            })
            .collect()
    }

    /// Appends messages and log events to a session in one transaction, each with the next
    /// sequence number of its kind (the first is 1), and returns the stored events.
    pub async fn append<K: AsRef<str> + Sync>(
        &self,
        session: SessionId,
        messages: &[(Role, String)],
        events: &[(K, String)],
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let id = session.to_string();
        let now = now();
        // The first statement writes, so the transaction holds the write lock from the start
        // and MAX(sequence) cannot change under it.
        let mut tx = self.pool.begin().await?;
        for (role, content) in messages {
            sqlx::query(
                "INSERT INTO messages (id, tenant_id, session_id, role, content, sequence, created_at)
                 SELECT ?, ?, ?, ?, ?, COALESCE(MAX(sequence), 0) + 1, ? FROM messages WHERE session_id = ?",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(DEFAULT_TENANT)
            .bind(&id)
            .bind(role.as_str())
            .bind(content)
            .bind(&now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        }
        let mut stored = Vec::with_capacity(events.len());
        for (kind, data) in events {
            let row = sqlx::query(
                "INSERT INTO session_events (id, tenant_id, session_id, type, data, sequence, created_at)
                 SELECT ?, ?, ?, ?, ?, COALESCE(MAX(sequence), 0) + 1, ? FROM session_events WHERE session_id = ?
                 RETURNING *",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(DEFAULT_TENANT)
            .bind(&id)
            .bind(kind.as_ref())
            .bind(data)
            .bind(&now)
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            stored.push(event_from_row(&row)?);
        }
        sqlx::query("UPDATE sessions SET last_active_at = ? WHERE id = ?")
            .bind(&now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Log events with a sequence above `after`, oldest first, at most `limit`, of one type if given.
    pub async fn list_events(
        &self,
        session: SessionId,
        after: i64,
        limit: i64,
        kind: Option<&str>,
    ) -> Result<Vec<SessionEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM session_events WHERE session_id = ? AND sequence > ? AND (? IS NULL OR type = ?)
             ORDER BY sequence LIMIT ?",
        )
        .bind(session.to_string())
        .bind(after)
        .bind(kind)
        .bind(kind)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Sessions whose log ends in the middle of a turn (the server stopped before its `done`).
    pub async fn unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT e.session_id FROM session_events e
             JOIN (SELECT session_id, MAX(sequence) AS last FROM session_events GROUP BY session_id) m
               ON e.session_id = m.session_id AND e.sequence = m.last
             WHERE e.type != 'done'",
        )
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|id| SessionId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    /// Copies every message of `from` to `to`, keeping their sequence numbers.
    pub async fn copy_messages(&self, from: SessionId, to: SessionId) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "INSERT INTO messages (id, tenant_id, session_id, role, content, sequence, created_at)
             SELECT lower(hex(randomblob(16))), tenant_id, ?, role, content, sequence, created_at
             FROM messages WHERE session_id = ? ORDER BY sequence",
        )
        .bind(to.to_string())
        .bind(from.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Messages with a sequence above `after`, oldest first, at most `limit`.
    pub async fn list_messages(
        &self,
        session: SessionId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query("SELECT * FROM messages WHERE session_id = ? AND sequence > ? ORDER BY sequence LIMIT ?")
            .bind(session.to_string())
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_from_row).collect()
    }

    pub async fn insert_api_key(&self, key_hash: &str, label: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_keys (id, tenant_id, key_hash, label, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(DEFAULT_TENANT)
            .bind(key_hash)
            .bind(label)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The tenant owning the key with this hash, if any.
    pub async fn api_key_tenant(&self, key_hash: &str) -> Result<Option<String>, StoreError> {
        let tenant = sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(tenant)
    }

    pub async fn count_api_keys(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// A credential's key as stored: AES-256-GCM ciphertext, nonce, tag and key-derivation
/// salt, each base64. The store never sees the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
    pub salt: String,
}

impl Store {
    pub async fn insert_credential(
        &self,
        credential: &Credential,
        sealed: &SealedKey,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credentials (id, tenant_id, type, encrypted_key, iv, auth_tag, salt, label, active, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&credential.id)
        .bind(DEFAULT_TENANT)
        .bind(credential.kind.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.tag)
        .bind(&sealed.salt)
        .bind(&credential.label)
        .bind(credential.active)
        .bind(&credential.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Credentials, oldest first.
    pub async fn list_credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query("SELECT * FROM credentials WHERE tenant_id = ? ORDER BY created_at")
            .bind(DEFAULT_TENANT)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| credential_from_row(row).map(|(credential, _)| credential))
            .collect()
    }

    /// A credential with its sealed key.
    pub async fn get_credential(
        &self,
        id: &str,
    ) -> Result<Option<(Credential, SealedKey)>, StoreError> {
        let row = sqlx::query("SELECT * FROM credentials WHERE id = ? AND tenant_id = ?")
            .bind(id)
            .bind(DEFAULT_TENANT)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credential_from_row).transpose()
    }

    /// Records that a session's sandbox got the credential now.
    pub async fn touch_credential(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE credentials SET last_used_at = ? WHERE id = ? AND tenant_id = ?")
            .bind(now())
            .bind(id)
            .bind(DEFAULT_TENANT)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM credentials WHERE id = ? AND tenant_id = ?")
            .bind(id)
            .bind(DEFAULT_TENANT)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn credential_from_row(row: &SqliteRow) -> Result<(Credential, SealedKey), StoreError> {
    let kind: String = row.try_get("type")?;
    let credential = Credential {
        id: row.try_get("id")?,
        kind: CredentialType::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("credential type {kind:?}")))?,
        label: row.try_get("label")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    };
    let sealed = SealedKey {
        ciphertext: row.try_get("encrypted_key")?,
        nonce: row.try_get("iv")?,
        tag: row.try_get("auth_tag")?,
        salt: row.try_get("salt")?,
    };
    Ok((credential, sealed))
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent, StoreError> {
    let name: String = row.try_get("name")?;
    let env: String = row.try_get("env")?;
    Ok(Agent {
        id: row.try_get("id")?,
        name: AgentName::try_from(name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        tenant_id: row.try_get("tenant_id")?,
        version: row.try_get("version")?,
        path: row.try_get("path")?,
        env: serde_json::from_str(&env)
            .map_err(|e| StoreError::Corrupt(format!("agent env: {e}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    let id: String = row.try_get("id")?;
    let agent: String = row.try_get("agent_name")?;
    let status: String = row.try_get("status")?;
    let env: String = row.try_get("env")?;
    let corrupt = |what: String| StoreError::Corrupt(what);
    Ok(Session {
        id: SessionId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        tenant_id: row.try_get("tenant_id")?,
        agent_name: AgentName::try_from(agent).map_err(|e| corrupt(e.to_string()))?,
        sandbox_id: row.try_get("sandbox_id")?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("session status {status:?}")))?,
        runner_id: row.try_get("runner_id")?,
        parent_session_id: row.try_get("parent_session_id")?,
        env: serde_json::from_str(&env).map_err(|e| corrupt(format!("session env: {e}")))?,
        credential_id: row.try_get("credential_id")?,
        created_at: row.try_get("created_at")?,
        last_active_at: row.try_get("last_active_at")?,
    })
}

fn message_from_row(row: &SqliteRow) -> Result<Message, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(Message {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        tenant_id: row.try_get("tenant_id")?,
        role: match role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(StoreError::Corrupt(format!("message role {other:?}"))),
        },
        content: row.try_get("content")?,
        sequence: row.try_get("sequence")?,
        created_at: row.try_get("created_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<SessionEvent, StoreError> {
    Ok(SessionEvent {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        tenant_id: row.try_get("tenant_id")?,
        kind: row.try_get("type")?,
        data: row.try_get("data")?,
        sequence: row.try_get("sequence")?,
        created_at: row.try_get("created_at")?,
    })
}
