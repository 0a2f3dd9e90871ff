//! The server's records as JSON documents on the storage port, the same on every backend:
//!
//! | collection | key | index entries |
//! |---|---|---|
//! | `agents` | `<tenant>/<name>` | — |
//! | `agent-versions` | `<tenant>/<agent>/<number, 10 digits>` | — |
//! | `queue` | `<tenant>/<16 digits: 9999999999999999 − µs since 1970>/<id>` (newest first) | `id`, `status` |
//! | `dashboard-sessions` | the sign-in token's SHA-256 (hex) | — |
//! | `tools` | `<tenant>/<name>` | — |
//! | `usage` | `<tenant>/<16 digits: 9999999999999999 − µs since 1970>/<id>` (newest first) | `session` = its id, `agent` = its name |
//! | `sessions` | `<tenant>/<id>` | `agent` = `<tenant>/<agent>`, `status` = `<tenant>/<status>`, `turn` = the node that began it (`open` for a store that names none) while a turn is in flight |
//! | `api-keys` | the key's SHA-256 (hex) | — |
//! | `credentials` | `<tenant>/<id>` | — |
//!
//! and two streams per session, `messages/<id>` and `events/<id>` ([`crate::log`]).
//!
//! A change reads the record, changes it and writes it back under the revision it read; when
//! another writer got there first it reads again, a few times, then gives up with a conflict.
//! A document that does not parse as its record is `Corrupt`, naming its collection and key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ash_core::{
    Agent, AgentName, AgentVersion, ApiKey, Attachment, CoreError, Credential, CredentialType,
    Document, QueueItem, QueueStatus, Session, SessionConfig, SessionId, SessionStatus, Storage,
    StorageError, Transition, TurnUsage, UsageCounts, UsageEvent, Write, DEFAULT_TENANT,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{now, StoreError};

/// Documents one list or find returns at most.
pub(crate) const PAGE: u32 = 1000;
/// Reads and writes of one change before it gives up to a busier writer.
pub(crate) const ATTEMPTS: usize = 16;

/// The server's records, on any backend of the storage port. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) storage: Arc<dyn Storage>,
    /// Sessions in a turn, as their mark wrote them, with that revision: the turn's end writes
    /// from this instead of reading the session again (a conflict means it changed meanwhile,
    /// and it is read after all). Only sessions whose turn is open are held.
    marked: Arc<Mutex<HashMap<SessionId, (SessionRecord, u64)>>>,
    /// Bytes a session's log has taken since its last mark wrote its `loggedBytes`: the next
    /// mark adds them.
    unmarked: Arc<Mutex<HashMap<SessionId, u64>>>,
    /// The server whose turns this store marks ([`Self::on_node`]): only its own are left open
    /// for it to close after a crash.
    node: Arc<str>,
}

/// The node of a store that names none, and of turns marked before nodes were named.
const ONE_NODE: &str = "open";

/// A kind of record: the collection it lives in and the index entries it is found by.
pub(crate) trait Record: Serialize + DeserializeOwned {
    const COLLECTION: &'static str;

    fn index(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub(crate) fn parse<T: Record>(doc: &Document) -> Result<T, StoreError> {
    serde_json::from_str(&doc.data)
        .map_err(|e| StoreError::Corrupt(format!("{}/{}: {e}", doc.collection, doc.key)))
}

fn json(record: &impl Serialize) -> String {
    serde_json::to_string(record).expect("records serialise")
}

pub(crate) fn too_busy(collection: &str, key: &str) -> StoreError {
    StorageError::Conflict(format!("{collection}/{key} kept changing under this write")).into()
}

impl Store {
    /// The records on `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            marked: Arc::default(),
            unmarked: Arc::default(),
            node: Arc::from(ONE_NODE),
        }
    }

    /// The same records, with the turns it begins marked as `node`'s: a server's id, the same
    /// across its restarts, so that with several servers on one database each closes only the
    /// turns it left open.
    pub fn on_node(self, node: &str) -> Self {
        Self {
            node: Arc::from(node),
            ..self
        }
    }

    /// The server whose turns (and queue items) this store marks as its own.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn read<T: Record>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        match self.storage.get(T::COLLECTION, key).await? {
            None => Ok(None),
            Some(doc) => Ok(Some((parse(&doc)?, doc.revision))),
        }
    }

    /// Writes a new record; a conflict when the key is taken.
    async fn create<T: Record>(&self, key: &str, record: &T) -> Result<(), StoreError> {
        self.storage
            .put(T::COLLECTION, key, &json(record), 0, &record.index())
            .await?;
        Ok(())
    }

    /// Writes what `change` makes of the record under `key` (`None`: there is none yet) and
    /// returns it; when `change` returns `None`, writes nothing and returns `None`.
    async fn change<T: Record>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        for _ in 0..ATTEMPTS {
            let current = self.read::<T>(key).await?;
            let expected = current.as_ref().map_or(0, |(_, revision)| *revision);
            let Some(next) = change(current.map(|(record, _)| record)) else {
                return Ok(None);
            };
            let written = self
                .storage
                .put(T::COLLECTION, key, &json(&next), expected, &next.index())
                .await;
            match written {
                Ok(_) => return Ok(Some(next)),
                Err(StorageError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_busy(T::COLLECTION, key))
    }

    /// Deletes the record under `key`; `false` when there was none.
    async fn remove<T: Record>(&self, key: &str) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(doc) = self.storage.get(T::COLLECTION, key).await? else {
                return Ok(false);
            };
            match self.storage.delete(T::COLLECTION, key, doc.revision).await {
                Ok(deleted) => return Ok(deleted),
                Err(StorageError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_busy(T::COLLECTION, key))
    }

    /// The documents of `collection` after the key `after`, page by page in key order (only
    /// those with the index entry `name` = `value` when `index` is given).
    pub(crate) fn pages<'a>(
        &'a self,
        collection: &'a str,
        index: Option<(&'a str, &'a str)>,
        after: &str,
    ) -> Pages<'a> {
        Pages {
            storage: &*self.storage,
            collection,
            index,
            after: Some(after.to_owned()),
        }
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub(crate) async fn scan<T: Record>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        let mut pages = self.pages(T::COLLECTION, None, prefix);
        while let Some(page) = pages.next().await? {
            for doc in &page {
                if !doc.key.starts_with(prefix) {
                    return Ok(records);
                }
                records.push(parse(doc)?);
            }
        }
        Ok(records)
    }

    /// Every record with the index entry `name` = `value`, in key order.
    async fn find_all<T: Record>(&self, name: &str, value: &str) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        let mut pages = self.pages(T::COLLECTION, Some((name, value)), "");
        while let Some(page) = pages.next().await? {
            for doc in &page {
                records.push(parse(doc)?);
            }
        }
        Ok(records)
    }
}

/// A cursor over a collection's documents, a page at a time.
pub(crate) struct Pages<'a> {
    storage: &'a dyn Storage,
    collection: &'a str,
    index: Option<(&'a str, &'a str)>,
    /// The last key seen; `None` once a short page said there is no more.
    after: Option<String>,
}

impl Pages<'_> {
    /// The next page, or `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Document>>, StoreError> {
        let Some(after) = self.after.take() else {
            return Ok(None);
        };
        let page = match self.index {
            Some((name, value)) => {
                self.storage
                    .find(self.collection, name, value, &after, PAGE)
                    .await?
            }
            None => self.storage.list(self.collection, &after, PAGE).await?,
        };
        if page.len() == PAGE as usize {
            self.after = page.last().map(|last| last.key.clone());
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentRecord {
    id: String,
    tenant_id: String,
    name: AgentName,
    version: i64,
    path: String,
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    config: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active_version: Option<i64>,
    created_at: String,
    updated_at: String,
}

impl Record for AgentRecord {
    const COLLECTION: &'static str = "agents";
}

impl From<AgentRecord> for Agent {
    fn from(r: AgentRecord) -> Self {
        Agent {
            id: r.id,
            name: r.name,
            tenant_id: r.tenant_id,
            version: r.version,
            path: r.path,
            env: r.env,
            config: r.config,
            active_version: r.active_version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn agent_key(name: &AgentName) -> String {
    format!("{DEFAULT_TENANT}/{name}")
}

impl Store {
    /// Creates the agent, or replaces its path and env and bumps its version.
    pub async fn upsert_agent(
        &self,
        name: &AgentName,
        path: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Agent, StoreError> {
        let written = self
            .change(&agent_key(name), |current: Option<AgentRecord>| {
                let now = now();
                Some(match current {
                    Some(agent) => AgentRecord {
                        version: agent.version + 1,
                        path: path.to_owned(),
                        env: env.clone(),
                        updated_at: now,
                        ..agent
                    },
                    None => AgentRecord {
                        id: uuid::Uuid::new_v4().to_string(),
                        tenant_id: DEFAULT_TENANT.to_owned(),
                        name: name.clone(),
                        version: 1,
                        path: path.to_owned(),
                        env: env.clone(),
                        config: serde_json::Map::new(),
                        active_version: None,
                        created_at: now.clone(),
                        updated_at: now,
                    },
                })
            })
            .await?;
        Ok(written.expect("an upsert always writes").into())
    }

    /// Changes an agent in place: a new `env` replaces its own and bumps its version (its
    /// sandboxes start differently from now on); `config` is merged into its own, key by key,
    /// a `null` removing the key, and the result must pass [`ash_core::check_agent_config`]
    /// (checked on the record as it is written, so two patches cannot pass a cap together).
    /// `None` when there is no such agent.
    pub async fn patch_agent(
        &self,
        name: &AgentName,
        env: Option<&BTreeMap<String, String>>,
        config: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Option<Agent>, StoreError> {
        let mut refused = None;
        let changed = self
            .change(&agent_key(name), |current: Option<AgentRecord>| {
                let mut agent = current?;
                if let Some(env) = env {
                    agent.env = env.clone();
                    agent.version += 1;
                }
                if let Some(patch) = config {
                    ash_core::merge_agent_config(&mut agent.config, patch);
                    if let Err(e) = ash_core::check_agent_config(&agent.config) {
                        refused = Some(e);
                        return None;
                    }
                }
                agent.updated_at = now();
                Some(agent)
            })
            .await?;
        match refused {
            Some(e) => Err(StoreError::Refused(e)),
            None => Ok(changed.map(Agent::from)),
        }
    }

    /// Points the agent at a new folder holding its changed files, as its next version,
    /// when it is still at version `from`; `None` when it is not (or is gone).
    pub async fn replace_agent_folder(
        &self,
        name: &AgentName,
        path: &str,
        from: i64,
    ) -> Result<Option<Agent>, StoreError> {
        let changed = self
            .change(&agent_key(name), |current: Option<AgentRecord>| {
                let agent = current.filter(|a| a.version == from)?;
                Some(AgentRecord {
                    version: from + 1,
                    path: path.to_owned(),
                    updated_at: now(),
                    ..agent
                })
            })
            .await?;
        Ok(changed.map(Agent::from))
    }

    pub async fn get_agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError> {
        let agent = self.read::<AgentRecord>(&agent_key(name)).await?;
        Ok(agent.map(|(agent, _)| agent.into()))
    }

    /// Agents in name order.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let agents = self
            .scan::<AgentRecord>(&format!("{DEFAULT_TENANT}/"))
            .await?;
        Ok(agents.into_iter().map(Agent::from).collect())
    }

    /// Removes the agent and its named versions; `false` if there was none.
    pub async fn delete_agent(&self, name: &AgentName) -> Result<bool, StoreError> {
        // Versions first: a failure midway leaves an agent with fewer versions, never
        // versions without an agent that a new agent of the name would inherit.
        for version in self.scan::<AgentVersion>(&versions_prefix(name)).await? {
            self.remove::<AgentVersion>(&version_key(name, version.version_number))
                .await?;
        }
        self.remove::<AgentRecord>(&agent_key(name)).await
    }
}

impl Record for AgentVersion {
    const COLLECTION: &'static str = "agent-versions";
}

fn versions_prefix(agent: &AgentName) -> String {
    format!("{DEFAULT_TENANT}/{agent}/")
}

fn version_key(agent: &AgentName, number: i64) -> String {
    format!("{DEFAULT_TENANT}/{agent}/{number:010}")
}

fn put<T: Record>(key: &str, record: &T, expected: u64) -> Write {
    Write::Put {
        collection: T::COLLECTION.to_owned(),
        key: key.to_owned(),
        data: json(record),
        expected,
        index: record.index(),
    }
}

/// A refusal of a version change, as the client is told.
fn refused(why: String) -> StoreError {
    StoreError::Refused(CoreError::InvalidVersion(why))
}

/// Agent versions: the agent's record says which one is active, and every change that could
/// contradict it (activating, deleting) writes the agent's record too, in one commit under the
/// revisions it read, so an activation and a delete of the same version never both succeed.
impl Store {
    /// The agent's versions, newest first, each marked active or not; `None`: no such agent.
    pub async fn list_versions(
        &self,
        agent: &AgentName,
    ) -> Result<Option<Vec<AgentVersion>>, StoreError> {
        let Some((record, _)) = self.read::<AgentRecord>(&agent_key(agent)).await? else {
            return Ok(None);
        };
        let mut versions = self.scan::<AgentVersion>(&versions_prefix(agent)).await?;
        versions.reverse();
        for version in &mut versions {
            version.is_active = record.active_version == Some(version.version_number);
        }
        Ok(Some(versions))
    }

    /// The version, marked active or not; `None`: no such agent or version.
    pub async fn get_version(
        &self,
        agent: &AgentName,
        number: i64,
    ) -> Result<Option<AgentVersion>, StoreError> {
        let Some((record, _)) = self.read::<AgentRecord>(&agent_key(agent)).await? else {
            return Ok(None);
        };
        let found = self
            .read::<AgentVersion>(&version_key(agent, number))
            .await?;
        Ok(found.map(|(mut version, _)| {
            version.is_active = record.active_version == Some(number);
            version
        }))
    }

    /// Creates the agent's next version (the highest number plus one), with the fields given;
    /// with `clone_from`, the system prompt and knowledge files it does not give come from that
    /// version. `None`: no such agent.
    pub async fn create_version(
        &self,
        agent: &AgentName,
        fields: ash_core::VersionFields,
        clone_from: Option<i64>,
    ) -> Result<Option<AgentVersion>, StoreError> {
        for _ in 0..ATTEMPTS {
            if self.read::<AgentRecord>(&agent_key(agent)).await?.is_none() {
                return Ok(None);
            }
            let versions = self.scan::<AgentVersion>(&versions_prefix(agent)).await?;
            if versions.len() >= ash_core::MAX_AGENT_VERSIONS {
                return Err(refused(format!(
                    "an agent keeps at most {} versions; delete old ones first",
                    ash_core::MAX_AGENT_VERSIONS
                )));
            }
            let source = match clone_from {
                None => None,
                Some(from) => Some(
                    versions
                        .iter()
                        .find(|v| v.version_number == from)
                        .ok_or_else(|| {
                            refused(format!("cloneFrom: version {from} does not exist"))
                        })?,
                ),
            };
            let number = versions.last().map_or(1, |v| v.version_number + 1);
            let now = now();
            let mut version = AgentVersion {
                id: uuid::Uuid::new_v4().to_string(),
                tenant_id: DEFAULT_TENANT.to_owned(),
                agent_name: agent.clone(),
                version_number: number,
                name: format!("v{number}"),
                system_prompt: source.and_then(|v| v.system_prompt.clone()),
                release_notes: None,
                is_active: false,
                knowledge_files: source.and_then(|v| v.knowledge_files.clone()),
                created_by: None,
                created_at: now.clone(),
                updated_at: now,
            };
            fields.clone().apply(&mut version);
            match self.create(&version_key(agent, number), &version).await {
                Ok(()) => return Ok(Some(version)),
                // Another create took the number: count again.
                Err(StoreError::Storage(StorageError::Conflict(_))) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(too_busy(AgentVersion::COLLECTION, &versions_prefix(agent)))
    }

    /// Replaces the fields given; `None`: no such agent or version.
    pub async fn patch_version(
        &self,
        agent: &AgentName,
        number: i64,
        fields: ash_core::VersionFields,
    ) -> Result<Option<AgentVersion>, StoreError> {
        let changed = self
            .change(
                &version_key(agent, number),
                |current: Option<AgentVersion>| {
                    let mut version = current?;
                    fields.clone().apply(&mut version);
                    version.updated_at = now();
                    Some(version)
                },
            )
            .await?;
        match changed {
            None => Ok(None),
            Some(_) => self.get_version(agent, number).await,
        }
    }

    /// Makes the version the agent's active one; `None`: no such agent or version (one
    /// deleted meanwhile included).
    pub async fn activate_version(
        &self,
        agent: &AgentName,
        number: i64,
    ) -> Result<Option<AgentVersion>, StoreError> {
        self.with_version(agent, number, |record, version, version_revision| {
            record.active_version = Some(number);
            // Written back unchanged, so a delete that read the same revision fails.
            put(&version_key(agent, number), version, version_revision)
        })
        .await?;
        self.get_version(agent, number).await
    }

    /// Deletes the version; the active one's agent has no active version afterwards (its
    /// sessions start with the folder's `CLAUDE.md`). `false`: no such agent or version.
    pub async fn delete_version(&self, agent: &AgentName, number: i64) -> Result<bool, StoreError> {
        let done = self
            .with_version(agent, number, |record, _, version_revision| {
                if record.active_version == Some(number) {
                    record.active_version = None;
                }
                Write::Delete {
                    collection: AgentVersion::COLLECTION.to_owned(),
                    key: version_key(agent, number),
                    expected: version_revision,
                }
            })
            .await?;
        Ok(done.is_some())
    }

    /// Commits `write` (the version's) with the agent's record as `change` leaves it, both
    /// under the revisions read; `None` when the agent or the version is missing.
    async fn with_version(
        &self,
        agent: &AgentName,
        number: i64,
        mut change: impl FnMut(&mut AgentRecord, &AgentVersion, u64) -> Write,
    ) -> Result<Option<()>, StoreError> {
        let (agent_key, key) = (agent_key(agent), version_key(agent, number));
        for _ in 0..ATTEMPTS {
            let Some((mut record, agent_revision)) = self.read::<AgentRecord>(&agent_key).await?
            else {
                return Ok(None);
            };
            let Some((version, version_revision)) = self.read::<AgentVersion>(&key).await? else {
                return Ok(None);
            };
            let write = change(&mut record, &version, version_revision);
            record.updated_at = now();
            let writes = [write, put(&agent_key, &record, agent_revision)];
            match self.storage.commit(&writes).await {
                Ok(_) => return Ok(Some(())),
                Err(StorageError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_busy(AgentVersion::COLLECTION, &key))
    }

    /// The active version's system prompt, if the agent has an active version with one.
    pub async fn active_prompt(&self, agent: &Agent) -> Result<Option<String>, StoreError> {
        let Some(number) = agent.active_version else {
            return Ok(None);
        };
        let found = self
            .read::<AgentVersion>(&version_key(&agent.name, number))
            .await?;
        Ok(found.and_then(|(version, _)| version.system_prompt))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionRecord {
    id: SessionId,
    tenant_id: String,
    agent_name: AgentName,
    sandbox_id: String,
    status: SessionStatus,
    runner_id: Option<String>,
    parent_session_id: Option<String>,
    env: BTreeMap<String, String>,
    credential_id: Option<String>,
    #[serde(default, skip_serializing_if = "SessionConfig::is_empty")]
    config: SessionConfig,
    created_at: String,
    last_active_at: String,
    /// A turn has begun and its `done` is not in the log yet.
    #[serde(default)]
    turn_open: bool,
    /// The server that began it (none: marked before servers were named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    turn_node: Option<String>,
    /// Bytes of messages and events the session's log holds, as of its last turn mark.
    #[serde(default)]
    logged_bytes: u64,
}

impl Record for SessionRecord {
    const COLLECTION: &'static str = "sessions";

    fn index(&self) -> Vec<(String, String)> {
        let mut index = vec![
            (
                "agent".to_owned(),
                format!("{}/{}", self.tenant_id, self.agent_name),
            ),
            (
                "status".to_owned(),
                format!("{}/{}", self.tenant_id, self.status),
            ),
        ];
        if self.turn_open {
            let node = self.turn_node.as_deref().unwrap_or(ONE_NODE);
            index.push(("turn".to_owned(), node.to_owned()));
        }
        index
    }
}

impl SessionRecord {
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// The session with its turn begun by `node` (or ended: `None`), active at `now`, its log
    /// grown by `bytes`.
    fn marked(self, node: Option<&str>, now: &str, bytes: u64) -> Self {
        Self {
            turn_open: node.is_some(),
            turn_node: node.map(str::to_owned),
            last_active_at: now.to_owned(),
            logged_bytes: self.logged_bytes + bytes,
            ..self
        }
    }
}

/// The session and revision a turn's mark leaves, once its commit is written.
pub(crate) struct Mark {
    session: SessionRecord,
    revision: u64,
}

impl From<SessionRecord> for Session {
    fn from(r: SessionRecord) -> Self {
        Session {
            id: r.id,
            tenant_id: r.tenant_id,
            agent_name: r.agent_name,
            sandbox_id: r.sandbox_id,
            status: r.status,
            runner_id: r.runner_id,
            parent_session_id: r.parent_session_id,
            env: r.env,
            credential_id: r.credential_id,
            config: r.config,
            created_at: r.created_at,
            last_active_at: r.last_active_at,
            logged_bytes: r.logged_bytes,
        }
    }
}

pub(crate) fn session_key(id: SessionId) -> String {
    format!("{DEFAULT_TENANT}/{id}")
}

impl Store {
    pub async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        let record = SessionRecord {
            id: session.id,
            tenant_id: session.tenant_id.clone(),
            agent_name: session.agent_name.clone(),
            sandbox_id: session.sandbox_id.clone(),
            status: session.status,
            runner_id: session.runner_id.clone(),
            parent_session_id: session.parent_session_id.clone(),
            env: session.env.clone(),
            credential_id: session.credential_id.clone(),
            config: session.config.clone(),
            created_at: session.created_at.clone(),
            last_active_at: session.last_active_at.clone(),
            turn_open: false,
            turn_node: None,
            logged_bytes: 0,
        };
        self.create(&session_key(session.id), &record).await
    }

    pub async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let session = self.read::<SessionRecord>(&session_key(id)).await?;
        Ok(session.map(|(session, _)| session.into()))
    }

    /// Sessions newest first, optionally of one agent only.
    pub async fn list_sessions(
        &self,
        agent: Option<&AgentName>,
    ) -> Result<Vec<Session>, StoreError> {
        let mut sessions = match agent {
            Some(agent) => {
                self.find_all::<SessionRecord>("agent", &format!("{DEFAULT_TENANT}/{agent}"))
                    .await?
            }
            None => {
                self.scan::<SessionRecord>(&format!("{DEFAULT_TENANT}/"))
                    .await?
            }
        };
        sessions.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.to_string().cmp(&b.id.to_string()))
        });
        Ok(sessions.into_iter().map(Session::from).collect())
    }

    /// Patches the session's config (each value given replaces its own) and returns the
    /// session; `None` when there is no such session.
    pub async fn configure_session(
        &self,
        id: SessionId,
        patch: SessionConfig,
    ) -> Result<Option<Session>, StoreError> {
        let changed = self
            .change(&session_key(id), |session: Option<SessionRecord>| {
                let session = session?;
                Some(SessionRecord {
                    config: session.config.patched(patch.clone()),
                    ..session
                })
            })
            .await?;
        Ok(changed.map(Session::from))
    }

    /// Places the session on runner `to` if it is still on `from` (checked in the same
    /// write); `false` when it moved meanwhile (another coordinator placed it) or is gone.
    pub async fn move_session(
        &self,
        id: SessionId,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, StoreError> {
        let moved = self
            .change(&session_key(id), |session: Option<SessionRecord>| {
                let session = session.filter(|s| s.runner_id.as_deref() == from)?;
                Some(SessionRecord {
                    runner_id: Some(to.to_owned()),
                    ..session
                })
            })
            .await?;
        Ok(moved.is_some())
    }

    /// Moves the session's status by `transition`, judged against the stored status in the
    /// same write, and returns the updated session; `None` when there is no such session, and
    /// [`StoreError::Refused`] (nothing written) when the transition may not happen from there.
    pub async fn transition(
        &self,
        id: SessionId,
        transition: Transition,
    ) -> Result<Option<Session>, StoreError> {
        let mut refused = None;
        let changed = self
            .change(&session_key(id), |session: Option<SessionRecord>| {
                let session = session?;
                match session.status.apply(transition) {
                    Ok(status) => Some(SessionRecord {
                        status,
                        last_active_at: now(),
                        ..session
                    }),
                    Err(e) => {
                        refused = Some(e);
                        None
                    }
                }
            })
            .await?;
        if transition == Transition::End {
            // An ended session logs no more turns: nothing of it stays held.
            self.marked.lock().expect("lock").remove(&id);
            self.unmarked.lock().expect("lock").remove(&id);
        }
        match refused {
            Some(e) => Err(StoreError::Refused(e)),
            None => Ok(changed.map(Session::from)),
        }
    }

    /// The write that marks a session's turn as begun or ended (`open`) and the session active
    /// now, for a commit, with the mark it leaves; `None` when there is no such session.
    /// `fresh` reads the session even when this store holds it from the turn's beginning.
    /// `bytes` is what the commit adds to the log.
    pub(crate) async fn turn_mark(
        &self,
        id: SessionId,
        open: bool,
        now: &str,
        fresh: bool,
        bytes: u64,
    ) -> Result<Option<(Write, Mark)>, StoreError> {
        let key = session_key(id);
        let held = self.marked.lock().expect("lock").remove(&id);
        let (current, read) = match held.filter(|_| !fresh) {
            Some(held) => (held, false),
            None => match self.read::<SessionRecord>(&key).await? {
                Some(read) => (read, true),
                None => return Ok(None),
            },
        };
        let (session, revision) = current;
        let ours = session.turn_node.as_deref().unwrap_or(ONE_NODE) == &*self.node;
        let elsewhere = read && session.turn_open && !ours;
        if !open && (elsewhere || (fresh && !session.turn_open)) {
            // An end of a turn that is another node's, or that was closed while this commit
            // waited: another server closed it (this node was declared dead meanwhile).
            return Err(StoreError::TurnClosed(id));
        }
        let unmarked = self.unmarked.lock().expect("lock").get(&id).copied();
        let node = open.then_some(&*self.node);
        let marked = session.marked(node, now, unmarked.unwrap_or(0) + bytes);
        let write = Write::Put {
            collection: SessionRecord::COLLECTION.to_owned(),
            key,
            data: json(&marked),
            expected: revision,
            index: marked.index(),
        };
        let mark = Mark {
            session: marked,
            revision: revision + 1,
        };
        Ok(Some((write, mark)))
    }

    /// Keeps a mark that was written, while its turn is open.
    pub(crate) fn marked(&self, mark: Mark) {
        self.unmarked.lock().expect("lock").remove(&mark.session.id);
        if mark.session.turn_open {
            let id = mark.session.id;
            let held = (mark.session, mark.revision);
            self.marked.lock().expect("lock").insert(id, held);
        }
    }

    /// Counts bytes a commit without a mark added to a session's log, for its next mark.
    pub(crate) fn logged_unmarked(&self, id: SessionId, bytes: u64) {
        *self.unmarked.lock().expect("lock").entry(id).or_default() += bytes;
    }

    /// Sessions marked as in a turn this store's node began (or one marked before nodes were
    /// named).
    pub(crate) async fn sessions_in_a_turn(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sessions = self.find_all("turn", &self.node).await?;
        if &*self.node != ONE_NODE {
            sessions.extend(self.find_all("turn", ONE_NODE).await?);
        }
        Ok(sessions)
    }

    /// How many sessions there are in each status but `ended` (statuses without any are left
    /// out). Ended sessions, which only ever grow in number, are not read.
    pub async fn count_unended_sessions(&self) -> Result<Vec<(SessionStatus, i64)>, StoreError> {
        use SessionStatus::*;
        let mut counts = Vec::new();
        for status in [Starting, Active, Paused, Stopped, Error] {
            let value = format!("{DEFAULT_TENANT}/{status}");
            let n = self
                .find_all::<SessionRecord>("status", &value)
                .await?
                .len();
            if n > 0 {
                counts.push((status, n as i64));
            }
        }
        Ok(counts)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKeyRecord {
    id: String,
    tenant_id: String,
    label: String,
    /// The key's first characters (none in keys stored before it was kept).
    #[serde(default)]
    prefix: String,
    created_at: String,
}

impl Record for ApiKeyRecord {
    const COLLECTION: &'static str = "api-keys";
}

impl ApiKeyRecord {
    fn listed(&self) -> ApiKey {
        let shown = if self.prefix.is_empty() {
            "••••"
        } else {
            &self.prefix
        };
        ApiKey {
            id: self.id.clone(),
            label: self.label.clone(),
            key_prefix: format!("{shown}••••"),
            created_at: self.created_at.clone(),
        }
    }
}

impl Store {
    /// Stores a key by its hash, with its label and first characters; returns it as listed.
    pub async fn insert_api_key(
        &self,
        key_hash: &str,
        label: &str,
        prefix: &str,
    ) -> Result<ApiKey, StoreError> {
        let record = ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: DEFAULT_TENANT.to_owned(),
            label: label.to_owned(),
            prefix: prefix.to_owned(),
            created_at: now(),
        };
        self.create(key_hash, &record).await?;
        Ok(record.listed())
    }

    /// The stored keys, oldest first, each with the hash it is stored under.
    async fn api_keys(&self) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self.pages(ApiKeyRecord::COLLECTION, None, "");
        while let Some(page) = pages.next().await? {
            for doc in &page {
                keys.push((doc.key.clone(), parse::<ApiKeyRecord>(doc)?));
            }
        }
        keys.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at));
        Ok(keys)
    }

    /// The stored keys as listed, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self
            .api_keys()
            .await?
            .iter()
            .map(|(_, record)| record.listed())
            .collect())
    }

    /// Deletes the key with this id; `false` when there is none. The next request with it is
    /// refused: keys are looked up at every request.
    pub async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let found = self.api_keys().await?.into_iter().find(|(_, r)| r.id == id);
        match found {
            Some((hash, _)) => self.remove::<ApiKeyRecord>(&hash).await,
            None => Ok(false),
        }
    }

    /// The tenant owning the key with this hash, if any.
    pub async fn api_key_tenant(&self, key_hash: &str) -> Result<Option<String>, StoreError> {
        let key = self.read::<ApiKeyRecord>(key_hash).await?;
        Ok(key.map(|(key, _)| key.tenant_id))
    }

    /// Whether any API key is stored.
    pub async fn has_api_keys(&self) -> Result<bool, StoreError> {
        let first = self.storage.list(ApiKeyRecord::COLLECTION, "", 1).await?;
        Ok(!first.is_empty())
    }
}

impl Record for Attachment {
    const COLLECTION: &'static str = "attachments";

    fn index(&self) -> Vec<(String, String)> {
        vec![("session".to_owned(), self.session_id.to_string())]
    }
}

fn attachment_key(id: &str) -> String {
    format!("{DEFAULT_TENANT}/{id}")
}

impl Store {
    pub async fn insert_attachment(&self, attachment: &Attachment) -> Result<(), StoreError> {
        self.create(&attachment_key(&attachment.id), attachment)
            .await
    }

    pub async fn get_attachment(&self, id: &str) -> Result<Option<Attachment>, StoreError> {
        Ok(self
            .read::<Attachment>(&attachment_key(id))
            .await?
            .map(|(a, _)| a))
    }

    /// A session's attachments, oldest first.
    pub async fn list_attachments(
        &self,
        session: SessionId,
    ) -> Result<Vec<Attachment>, StoreError> {
        let mut found = self
            .find_all::<Attachment>("session", &session.to_string())
            .await?;
        found.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(found)
    }

    pub async fn delete_attachment(&self, id: &str) -> Result<bool, StoreError> {
        self.remove::<Attachment>(&attachment_key(id)).await
    }
}

/// A credential's key as stored: AES-256-GCM ciphertext, nonce, tag and key-derivation
/// salt, each base64. The store never sees the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedKey {
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
    pub salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CredentialRecord {
    id: String,
    tenant_id: String,
    #[serde(rename = "type")]
    kind: CredentialType,
    label: String,
    active: bool,
    created_at: String,
    last_used_at: Option<String>,
    sealed: SealedKey,
}

impl Record for CredentialRecord {
    const COLLECTION: &'static str = "credentials";
}

impl CredentialRecord {
    fn credential(&self) -> Credential {
        Credential {
            id: self.id.clone(),
            kind: self.kind,
            label: self.label.clone(),
            active: self.active,
            created_at: self.created_at.clone(),
            last_used_at: self.last_used_at.clone(),
        }
    }
}

fn credential_key(id: &str) -> String {
    format!("{DEFAULT_TENANT}/{id}")
}

impl Store {
    pub async fn insert_credential(
        &self,
        credential: &Credential,
        sealed: &SealedKey,
    ) -> Result<(), StoreError> {
        let record = CredentialRecord {
            id: credential.id.clone(),
            tenant_id: DEFAULT_TENANT.to_owned(),
            kind: credential.kind,
            label: credential.label.clone(),
            active: credential.active,
            created_at: credential.created_at.clone(),
            last_used_at: credential.last_used_at.clone(),
            sealed: sealed.clone(),
        };
        self.create(&credential_key(&credential.id), &record).await
    }

    /// Credentials, oldest first.
    pub async fn list_credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let mut records = self
            .scan::<CredentialRecord>(&format!("{DEFAULT_TENANT}/"))
            .await?;
        records.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(records.iter().map(CredentialRecord::credential).collect())
    }

    /// A credential with its sealed key.
    pub async fn get_credential(
        &self,
        id: &str,
    ) -> Result<Option<(Credential, SealedKey)>, StoreError> {
        let record = self.read::<CredentialRecord>(&credential_key(id)).await?;
        Ok(record.map(|(record, _)| (record.credential(), record.sealed)))
    }

    /// Records that a session's sandbox got the credential now.
    pub async fn touch_credential(&self, id: &str) -> Result<(), StoreError> {
        self.change(&credential_key(id), |record: Option<CredentialRecord>| {
            record.map(|record| CredentialRecord {
                last_used_at: Some(now()),
                ..record
            })
        })
        .await?;
        Ok(())
    }

    pub async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
        self.remove::<CredentialRecord>(&credential_key(id)).await
    }
}

impl Record for TurnUsage {
    const COLLECTION: &'static str = "usage";

    fn index(&self) -> Vec<(String, String)> {
        vec![
            ("session".to_owned(), self.session_id.to_string()),
            ("agent".to_owned(), self.agent_name.to_string()),
        ]
    }
}

/// A key under which records sort newest first: the time, to the microsecond its record
/// holds, counts down.
fn newest_first_key(created_at: &str, id: &str) -> String {
    const LAST: i64 = 9_999_999_999_999_999;
    let micros = chrono::DateTime::parse_from_rfc3339(created_at)
        .map_or(0, |t| t.timestamp_micros().clamp(0, LAST));
    format!("{DEFAULT_TENANT}/{:016}/{id}", LAST - micros)
}

fn usage_key(usage: &TurnUsage) -> String {
    newest_first_key(&usage.created_at, &usage.id)
}

/// The write that stores a turn's usage (with the commit that ends the turn).
pub(crate) fn usage_write(usage: &TurnUsage) -> Write {
    put(&usage_key(usage), usage, 0)
}

/// Which usage records a query covers: a session's or an agent's (not both), created in
/// `[after, before)` (RFC 3339 times as the store writes them: UTC, milliseconds).
#[derive(Debug, Default, Clone)]
pub struct UsageFilter {
    pub session: Option<SessionId>,
    pub agent: Option<AgentName>,
    pub after: Option<String>,
    pub before: Option<String>,
}

impl UsageFilter {
    fn takes(&self, usage: &TurnUsage) -> bool {
        self.session.is_none_or(|s| s == usage.session_id)
            && self.agent.as_ref().is_none_or(|a| *a == usage.agent_name)
            && self.before.as_ref().is_none_or(|b| usage.created_at < *b)
    }

    /// The record is older than the range: every later one is too.
    fn past(&self, usage: &TurnUsage) -> bool {
        self.after.as_ref().is_some_and(|a| usage.created_at < *a)
    }
}

impl Store {
    /// Calls `take` with each usage record the filter covers, newest first, until it says stop.
    async fn each_usage(
        &self,
        filter: &UsageFilter,
        mut take: impl FnMut(TurnUsage) -> bool,
    ) -> Result<(), StoreError> {
        let session = filter.session.map(|s| s.to_string());
        let index = match (&session, &filter.agent) {
            (Some(session), _) => Some(("session", session.as_str())),
            (None, Some(agent)) => Some(("agent", agent.as_str())),
            (None, None) => None,
        };
        let mut pages = self.pages(TurnUsage::COLLECTION, index, "");
        while let Some(page) = pages.next().await? {
            for doc in &page {
                let usage: TurnUsage = parse(doc)?;
                if filter.past(&usage) {
                    return Ok(());
                }
                if filter.takes(&usage) && !take(usage) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The usage events the filter covers, newest first, at most `limit`.
    pub async fn list_usage(
        &self,
        filter: &UsageFilter,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let mut events = Vec::new();
        self.each_usage(filter, |usage| {
            events.extend(usage.events().take(limit - events.len()));
            events.len() < limit
        })
        .await?;
        Ok(events)
    }

    /// The usage the filter covers, added up.
    pub async fn usage_stats(&self, filter: &UsageFilter) -> Result<UsageCounts, StoreError> {
        let mut total = UsageCounts::default();
        self.each_usage(filter, |usage| {
            total.add(&usage.counts);
            true
        })
        .await?;
        Ok(total)
    }
}

impl Record for QueueItem {
    const COLLECTION: &'static str = "queue";

    fn index(&self) -> Vec<(String, String)> {
        vec![
            ("id".to_owned(), self.id.clone()),
            ("status".to_owned(), self.status.as_str().to_owned()),
        ]
    }
}

fn queue_key(item: &QueueItem) -> String {
    newest_first_key(&item.created_at, &item.id)
}

/// How a queue item's try ended.
pub enum Tried {
    Completed,
    /// It failed with this error; it is tried again after `wait` while it has retries left.
    Failed {
        error: String,
        wait: std::time::Duration,
    },
    /// It was stopped before its end (its server is stopping): it is pending again, the try
    /// not counted.
    Interrupted,
}

impl Store {
    pub async fn insert_queue_item(&self, item: &QueueItem) -> Result<(), StoreError> {
        self.create(&queue_key(item), item).await
    }

    pub async fn get_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        let found = self.find_all::<QueueItem>("id", id).await?;
        Ok(found.into_iter().next())
    }

    /// Items newest first, of one status if given, at most `limit`.
    pub async fn list_queue(
        &self,
        status: Option<QueueStatus>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, StoreError> {
        let index = status.map(|s| ("status", s.as_str()));
        let (mut items, mut pages) = (Vec::new(), self.pages(QueueItem::COLLECTION, index, ""));
        while let Some(page) = pages.next().await? {
            for doc in &page {
                if items.len() == limit {
                    return Ok(items);
                }
                items.push(parse(doc)?);
            }
        }
        Ok(items)
    }

    /// How many items each status holds.
    pub async fn count_queue(&self) -> Result<Vec<(QueueStatus, u64)>, StoreError> {
        let mut counts = Vec::with_capacity(QueueStatus::ALL.len());
        for status in QueueStatus::ALL {
            counts.push((status, self.count_queue_status(status).await?));
        }
        Ok(counts)
    }

    /// How many items have this status.
    pub async fn count_queue_status(&self, status: QueueStatus) -> Result<u64, StoreError> {
        let index = Some(("status", status.as_str()));
        self.count_found(QueueItem::COLLECTION, index).await
    }

    /// The pending items, the one to run first first (whether due or waiting for a retry).
    pub async fn pending_queue_items(&self) -> Result<Vec<QueueItem>, StoreError> {
        let mut pending = self
            .find_all::<QueueItem>("status", QueueStatus::Pending.as_str())
            .await?;
        pending.sort_by(ash_core::runs_before);
        Ok(pending)
    }

    /// Writes what `change` makes of the item (`None`: leave it); the item as written.
    async fn change_queue_item(
        &self,
        item: &QueueItem,
        mut change: impl FnMut(QueueItem) -> Option<QueueItem>,
    ) -> Result<Option<QueueItem>, StoreError> {
        self.change(&queue_key(item), |current: Option<QueueItem>| {
            change(current?)
        })
        .await
    }

    /// Takes the item for `node` if it is still pending: only one server ever gets it.
    pub async fn claim_queue_item(
        &self,
        item: &QueueItem,
        node: &str,
    ) -> Result<Option<QueueItem>, StoreError> {
        self.change_queue_item(item, |current| {
            (current.status == QueueStatus::Pending).then(|| QueueItem {
                status: QueueStatus::Processing,
                started_at: Some(now()),
                claimed_by: Some(node.to_owned()),
                retry_after: None,
                ..current
            })
        })
        .await
    }

    /// Records the session a claimed item's prompt goes to.
    pub async fn queue_item_session(
        &self,
        item: &QueueItem,
        session: ash_core::SessionId,
    ) -> Result<(), StoreError> {
        self.change_queue_item(item, |current| {
            Some(QueueItem {
                session_id: Some(session),
                ..current
            })
        })
        .await?;
        Ok(())
    }

    /// Ends `node`'s try of the item: completed, failed (pending again after a wait while it
    /// has retries left), or pending again uncounted. `None` when `node` does not hold it.
    pub async fn finish_queue_item(
        &self,
        item: &QueueItem,
        node: &str,
        tried: Tried,
    ) -> Result<Option<QueueItem>, StoreError> {
        self.change_queue_item(item, |current| {
            let held = current.status == QueueStatus::Processing
                && current.claimed_by.as_deref() == Some(node);
            if !held {
                return None;
            }
            let now = now();
            let mut next = QueueItem {
                claimed_by: None,
                ..current
            };
            match &tried {
                Tried::Completed => {
                    next.status = QueueStatus::Completed;
                    next.completed_at = Some(now);
                    next.error = None;
                }
                Tried::Failed { error, .. } if next.retry_count >= next.max_retries => {
                    next.status = QueueStatus::Failed;
                    next.completed_at = Some(now);
                    next.error = Some(error.clone());
                }
                Tried::Failed { error, wait } => {
                    next.status = QueueStatus::Pending;
                    next.retry_count += 1;
                    next.error = Some(error.clone());
                    let at = chrono::Utc::now()
                        + chrono::Duration::from_std(*wait).unwrap_or(chrono::Duration::zero());
                    next.retry_after =
                        Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                }
                Tried::Interrupted => next.status = QueueStatus::Pending,
            }
            Some(next)
        })
        .await
    }

    /// Cancels a pending item; refused for any other status. `None`: no such item.
    pub async fn cancel_queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        let Some(item) = self.get_queue_item(id).await? else {
            return Ok(None);
        };
        let mut refused = None;
        let cancelled = self
            .change_queue_item(&item, |current| {
                if current.status != QueueStatus::Pending {
                    refused = Some(current.status);
                    return None;
                }
                Some(QueueItem {
                    status: QueueStatus::Cancelled,
                    completed_at: Some(now()),
                    retry_after: None,
                    ..current
                })
            })
            .await?;
        match refused {
            Some(status) => Err(StoreError::Refused(CoreError::InvalidQueueItem(format!(
                "only a pending item can be cancelled; this one is {}",
                status.as_str()
            )))),
            None => Ok(cancelled),
        }
    }

    /// Puts the items `node` was running back to pending (it stopped before their end: a
    /// crash), so they run again; returns how many.
    pub async fn requeue_claimed(&self, node: &str) -> Result<usize, StoreError> {
        let mut requeued = 0;
        let running = self
            .find_all::<QueueItem>("status", QueueStatus::Processing.as_str())
            .await?;
        for item in running
            .iter()
            .filter(|i| i.claimed_by.as_deref() == Some(node))
        {
            if self
                .finish_queue_item(item, node, Tried::Interrupted)
                .await?
                .is_some()
            {
                requeued += 1;
            }
        }
        Ok(requeued)
    }
}

/// A dashboard sign-in: the API key it was made with (by hash, so deleting the key ends it),
/// the CSRF token its page sends with every change, and when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardSession {
    pub key_hash: String,
    pub csrf_token: String,
    pub created_at: String,
    pub expires_at: String,
}

impl Record for DashboardSession {
    const COLLECTION: &'static str = "dashboard-sessions";
}

impl Store {
    /// Keeps a sign-in under its token's hash.
    pub async fn insert_dashboard_session(
        &self,
        token_hash: &str,
        session: &DashboardSession,
    ) -> Result<(), StoreError> {
        self.create(token_hash, session).await
    }

    /// The sign-in under this token hash, if it has not ended (one that has is deleted).
    pub async fn dashboard_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<DashboardSession>, StoreError> {
        let Some((session, _)) = self.read::<DashboardSession>(token_hash).await? else {
            return Ok(None);
        };
        if session.expires_at <= now() {
            self.remove::<DashboardSession>(token_hash).await?;
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Ends a sign-in; `false` when there was none.
    pub async fn delete_dashboard_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        self.remove::<DashboardSession>(token_hash).await
    }
}

impl Record for ash_core::Tool {
    const COLLECTION: &'static str = "tools";
}

fn tool_key(name: &str) -> String {
    format!("{DEFAULT_TENANT}/{name}")
}

impl Store {
    /// Creates the tool (version 1) or replaces it (its version one more, its creation time
    /// kept).
    pub async fn put_tool(&self, tool: &ash_core::Tool) -> Result<ash_core::Tool, StoreError> {
        let written = self
            .change(&tool_key(&tool.name), |current: Option<ash_core::Tool>| {
                let now = now();
                Some(match current {
                    Some(old) => ash_core::Tool {
                        version: old.version + 1,
                        created_at: old.created_at,
                        updated_at: now,
                        ..tool.clone()
                    },
                    None => ash_core::Tool {
                        version: 1,
                        created_at: now.clone(),
                        updated_at: now,
                        ..tool.clone()
                    },
                })
            })
            .await?;
        Ok(written.expect("a put always writes"))
    }

    pub async fn get_tool(&self, name: &str) -> Result<Option<ash_core::Tool>, StoreError> {
        Ok(self
            .read::<ash_core::Tool>(&tool_key(name))
            .await?
            .map(|(tool, _)| tool))
    }

    /// Tools in name order.
    pub async fn list_tools(&self) -> Result<Vec<ash_core::Tool>, StoreError> {
        self.scan::<ash_core::Tool>(&format!("{DEFAULT_TENANT}/"))
            .await
    }

    pub async fn delete_tool(&self, name: &str) -> Result<bool, StoreError> {
        self.remove::<ash_core::Tool>(&tool_key(name)).await
    }
}
