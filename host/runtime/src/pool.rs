//! The warm pool: sandboxes started ahead of time for agents whose `ash.toml` asks for them
//! (`[pool] prewarm = N`), so a new session starts without waiting for bwrap.
//!
//! A warm sandbox is started with only the agent's own settings and its active version's
//! prompt, so it serves only a session that asks for nothing of its own (no `extraEnv`, no
//! credential, no other `systemPrompt`); any other session gets a fresh sandbox — a warm one
//! never silently drops a session's settings. Warm sandboxes of an older version of the agent,
//! or of another active prompt, are stopped, never handed out. They hold capacity like any
//! sandbox and are the first to go when the node is full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ash_core::{Agent, AgentName};

use crate::sessions::{Live, Room};
use crate::{Runtime, RuntimeError};

/// Warm sandboxes start with this prefix; anything left with it at start is stale.
pub(crate) const WARM_PREFIX: &str = "warm-";

struct Warm {
    id: String,
    version: i64,
    /// The `CLAUDE.md` it started with, when not the folder's.
    prompt: Option<String>,
    live: Arc<Live>,
}

#[derive(Default)]
pub(crate) struct Pool {
    warm: Mutex<HashMap<AgentName, Vec<Warm>>>,
    /// Agents whose pool is being filled, each with whether it was asked again meanwhile.
    filling: Mutex<HashMap<AgentName, bool>>,
    /// Warm sandboxes being started.
    warming: AtomicUsize,
}

impl Pool {
    /// Takes a warm sandbox of this agent version started with this prompt: (its id, the
    /// sandbox).
    pub(crate) fn claim(&self, agent: &Agent, prompt: Option<&str>) -> Option<(String, Arc<Live>)> {
        let mut warm = self.warm.lock().expect("lock");
        let list = warm.get_mut(&agent.name)?;
        let at = list
            .iter()
            .position(|w| w.version == agent.version && w.prompt.as_deref() == prompt)?;
        let taken = list.swap_remove(at);
        Some((taken.id, taken.live))
    }

    /// Removes and returns every warm sandbox of the agent (all of them with `None`).
    pub(crate) fn drain(&self, agent: Option<&AgentName>) -> Vec<(String, Arc<Live>)> {
        let mut warm = self.warm.lock().expect("lock");
        let lists: Vec<Vec<Warm>> = match agent {
            Some(name) => warm.remove(name).into_iter().collect(),
            None => warm.drain().map(|(_, list)| list).collect(),
        };
        lists
            .into_iter()
            .flatten()
            .map(|w| (w.id, w.live))
            .collect()
    }

    /// Removes one warm sandbox, any agent's, to make room.
    pub(crate) fn take_any(&self) -> Option<(String, Arc<Live>)> {
        let mut warm = self.warm.lock().expect("lock");
        warm.values_mut()
            .find_map(|list| list.pop())
            .map(|w| (w.id, w.live))
    }

    /// How many sandboxes wait warm.
    pub(crate) fn len(&self) -> usize {
        self.warm.lock().expect("lock").values().map(Vec::len).sum()
    }

    /// How many warm sandboxes are being started.
    pub(crate) fn warming(&self) -> usize {
        self.warming.load(Ordering::Relaxed)
    }
}

/// Brings the agent's warm pool to its `prewarm` count, stopping sandboxes of older versions.
/// One fill per agent at a time: a fill asked for while one runs makes that one go round
/// again, so a change that lands mid-fill is never lost. Failures are logged, never fatal.
pub(crate) async fn fill(runtime: Arc<Runtime>, name: AgentName) {
    // A node that holds no sandboxes (a coordinator) keeps no pool.
    if runtime.config.max_sandboxes == 0 {
        return;
    }
    let filling = &runtime.sessions.pool().filling;
    {
        let mut filling = filling.lock().expect("lock");
        if let Some(again) = filling.get_mut(&name) {
            *again = true;
            return;
        }
        filling.insert(name.clone(), false);
    }
    loop {
        if let Err(e) = top_up(&runtime, &name).await {
            tracing::warn!(agent = %name, "cannot pre-warm sandboxes: {e}");
        }
        let mut filling = filling.lock().expect("lock");
        let again = filling.get_mut(&name).expect("held by this fill");
        if !std::mem::take(again) {
            filling.remove(&name);
            return;
        }
    }
}

async fn top_up(runtime: &Runtime, name: &AgentName) -> Result<(), RuntimeError> {
    let pool = runtime.sessions.pool();
    let Some(agent) = runtime.store.get_agent(name).await? else {
        for (id, live) in pool.drain(Some(name)) {
            runtime.sessions.retire(&id, &live).await;
        }
        return Ok(());
    };
    let want = match agent.prewarm_override() {
        Some(count) => count,
        None => runtime.agent_files(&agent).await?.1.pool.prewarm,
    } as usize;
    let prompt = runtime.store.active_prompt(&agent).await?;
    let stale: Vec<Warm> = {
        let mut warm = pool.warm.lock().expect("lock");
        let list = warm.entry(name.clone()).or_default();
        let (mut keep, mut stale): (Vec<Warm>, Vec<Warm>) = std::mem::take(list)
            .into_iter()
            .partition(|w| w.version == agent.version && w.prompt == prompt);
        if keep.len() > want {
            stale.extend(keep.split_off(want));
        }
        *list = keep;
        stale
    };
    for w in stale {
        runtime.sessions.retire(&w.id, &w.live).await;
    }
    loop {
        let have = pool
            .warm
            .lock()
            .expect("lock")
            .get(name)
            .map_or(0, Vec::len);
        if have >= want {
            return Ok(());
        }
        let id = format!("{WARM_PREFIX}{}", uuid::Uuid::new_v4());
        pool.warming.fetch_add(1, Ordering::Relaxed);
        let started = runtime
            .start_sandbox(&id, &agent, &agent.env, prompt.as_deref(), Room::OnlyIfFree)
            .await;
        pool.warming.fetch_sub(1, Ordering::Relaxed);
        let live = started?;
        pool.warm
            .lock()
            .expect("lock")
            .entry(name.clone())
            .or_default()
            .push(Warm {
                id,
                version: agent.version,
                prompt: prompt.clone(),
                live,
            });
    }
}
