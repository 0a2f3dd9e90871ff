//! Ash's WebAssembly plugin host: loads component plugins (WIT worlds in `wit/`) and runs
//! them under limits, so a plugin can extend the server without being able to take it down.
//!
//! - A plugin gets nothing it did not request and the operator did not grant: its WASI
//!   context never has env or args; it has a data dir (`/data`, a cap-std preopen) and TCP
//!   to given addresses only when both sides agree; `ash:host/config` answers only the keys
//!   its manifest requested.
//! - Every call runs under a wall-clock deadline (epoch interruption, one ticker thread per
//!   engine) and a memory cap (a `ResourceLimiter`); answers have size caps.
//! - A call that traps, times out or breaks the contract discards its instance and counts as
//!   a failure; five in a row quarantine the plugin until the server restarts, and `/health`,
//!   the log and the metrics say so. Then each kind's policy applies: a transformer's event
//!   is dropped or passed as the operator chose, an authenticator refuses the request (fail
//!   closed), an observer's events are counted as dropped (fail open).
//! - Observers never hold up the server: events wait in a bounded queue per observer, a
//!   thread hands them over in batches, and a full queue drops (and counts) the event.
//! - Instances come from an `InstancePre` made once at load; a few healthy ones are kept for
//!   reuse (each for at most 10,000 calls), so a call costs no instantiation.

mod cache;
mod host;
mod manifest;
mod plugin;
mod storage;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

pub use manifest::{hex, Capabilities, Kind, Limits, Manifest, OnFailure, PluginConfig};
pub use storage::StoragePlugin;

use host::{AuthenticatorWorld, ObserverWorld, StorageWorld, TransformerWorld};
use plugin::Plugin;

/// The largest payload a transformer may return.
const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The largest principal or denial an authenticator may return, all strings together.
const MAX_AUTH_BYTES: usize = 16 * 1024;
/// How often the engine's epoch advances: the granularity of call deadlines.
const TICK: Duration = Duration::from_millis(1);
/// Events waiting for one observer, at most; more are dropped and counted.
const OBSERVER_QUEUE: usize = 4096;
/// Events handed to an observer in one call, at most.
const OBSERVER_BATCH: usize = 64;

/// Why a plugin could not load or answer.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid plugin: {0}")]
    Manifest(String),
    #[error("plugin {plugin}: the component's SHA-256 is {actual}, but {expected} was expected; rebuild it or fix the digest")]
    Digest {
        plugin: String,
        expected: String,
        actual: String,
    },
    #[error("plugin {plugin}: {message}")]
    Component { plugin: String, message: String },
}

/// A request, a principal and an authenticator's decision: `ash:auth/types`.
pub use host::bindings::authenticator::ash::auth::types::{
    Decision, Principal, Request as AuthRequest,
};
/// One event as plugins see it: `ash:observe/types.event`, as the bindings generate it.
pub use host::bindings::transformer::ash::observe::types::Event;

/// What the transformers made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformed {
    /// Unchanged.
    Keep,
    /// The new payload (already parsed: every plugin's JSON is checked).
    Replace(serde_json::Value),
    /// Withheld: a transformer failed and its policy is `drop`.
    Drop,
}

/// A plugin's state for `/health` and metrics.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub id: String,
    pub version: String,
    pub kind: Kind,
    pub calls: u64,
    pub failures: u64,
    /// Events an observer never saw (queue full, failure, quarantine); 0 for other kinds.
    pub dropped: u64,
    pub quarantined: bool,
    pub last_error: Option<String>,
}

/// The loaded plugins of one server.
#[derive(Default)]
pub struct Plugins {
    transformers: Vec<Plugin<TransformerWorld>>,
    authenticators: Vec<Plugin<AuthenticatorWorld>>,
    observers: Vec<Observer>,
}

/// An observer and the queue its thread drains.
struct Observer {
    plugin: Arc<Plugin<ObserverWorld>>,
    queue: mpsc::SyncSender<Queued>,
}

enum Queued {
    Event(Event),
    /// Answered once every event queued before it was handed over.
    Flush(mpsc::Sender<()>),
}

impl Plugins {
    /// Loads every configured plugin: manifest, digest, compilation (kept in `cache`, a
    /// folder of the server's own, for the next start), a check that the component
    /// implements its kind's world, and one instance made ahead of the first call. Any
    /// failure stops the load, naming the plugin.
    pub fn load(configs: &[PluginConfig], cache: Option<&Path>) -> Result<Self, PluginError> {
        let mut plugins = Self::default();
        if configs.is_empty() {
            return Ok(plugins);
        }
        let engine = engine().map_err(|e| PluginError::Manifest(e.to_string()))?;
        let mut cached = HashSet::new();
        for config in configs {
            let (manifest, bytes, digest) = Manifest::load(&config.path, config.sha256.as_deref())?;
            if config.on_failure.is_some() && manifest.kind != Kind::Transform {
                return Err(PluginError::Manifest(format!(
                    "{}: on_failure applies to transform plugins only; a {} plugin fails {}",
                    manifest.id,
                    manifest.kind.name(),
                    if manifest.kind == Kind::Auth {
                        "closed"
                    } else {
                        "open"
                    }
                )));
            }
            let component = compile(&engine, &manifest, &bytes, &digest, cache, &mut cached)?;
            match manifest.kind {
                Kind::Transform => plugins
                    .transformers
                    .push(Plugin::load(&engine, manifest, &component, config)?),
                Kind::Auth => plugins
                    .authenticators
                    .push(Plugin::load(&engine, manifest, &component, config)?),
                Kind::Observe => plugins.observers.push(Observer::start(Plugin::load(
                    &engine, manifest, &component, config,
                )?)?),
                Kind::Storage => {
                    return Err(PluginError::Manifest(format!(
                    "{}: a storage plugin is chosen with [storage] plugin = \"…\", not [[plugins]]",
                    manifest.id
                )))
                }
            }
        }
        if let Some(dir) = cache {
            cache::prune(dir, &cached);
        }
        Ok(plugins)
    }

    /// Checks one plugin folder as `load` would, without a server and without grants: for
    /// `ash plugin check`.
    pub fn check(dir: &Path) -> Result<Manifest, PluginError> {
        let engine = engine().map_err(|e| PluginError::Manifest(e.to_string()))?;
        let (manifest, bytes, digest) = Manifest::load(dir, None)?;
        let component = compile(
            &engine,
            &manifest,
            &bytes,
            &digest,
            None,
            &mut HashSet::new(),
        )?;
        let config = PluginConfig {
            path: dir.to_owned(),
            ..PluginConfig::default()
        };
        Ok(match manifest.kind {
            Kind::Transform => {
                Plugin::<TransformerWorld>::load(&engine, manifest, &component, &config)?.manifest
            }
            Kind::Auth => {
                Plugin::<AuthenticatorWorld>::load(&engine, manifest, &component, &config)?.manifest
            }
            Kind::Observe => {
                Plugin::<ObserverWorld>::load(&engine, manifest, &component, &config)?.manifest
            }
            Kind::Storage => {
                Plugin::<StorageWorld>::load(&engine, manifest, &component, &config)?.manifest
            }
        })
    }

    pub fn has_transformers(&self) -> bool {
        !self.transformers.is_empty()
    }

    pub fn has_authenticators(&self) -> bool {
        !self.authenticators.is_empty()
    }

    pub fn has_observers(&self) -> bool {
        !self.observers.is_empty()
    }

    /// Runs the event through every transformer in order, each seeing the one before's
    /// output. Blocks for up to each plugin's deadline, and WASI calls inside a plugin
    /// re-enter tokio: call it where blocking is allowed (`block_in_place`,
    /// `spawn_blocking`), never straight on an async worker.
    pub fn transform(&self, mut event: Event) -> Transformed {
        let mut replaced = None;
        for plugin in &self.transformers {
            let answer = plugin.run(
                |exports, store| {
                    exports
                        .ash_observe_transform()
                        .call_transform(store, &event)
                },
                checked_verdict,
            );
            match answer {
                Ok(Some((data, parsed))) => {
                    event.data = data;
                    replaced = Some(parsed);
                }
                Ok(None) => {}
                Err(()) if plugin.on_failure == OnFailure::Drop => return Transformed::Drop,
                Err(()) => {}
            }
        }
        replaced.map_or(Transformed::Keep, Transformed::Replace)
    }

    /// Asks the authenticators in order until one allows or denies. `Ok(Abstain)` when none
    /// claims the request; `Err` names the authenticator that failed (the request must be
    /// refused: authentication fails closed). Blocks like [`Plugins::transform`].
    pub fn authenticate(&self, request: &AuthRequest) -> Result<Decision, String> {
        for plugin in &self.authenticators {
            let wanted = &plugin.manifest.capabilities.headers;
            let shown = AuthRequest {
                method: request.method.clone(),
                path: request.path.clone(),
                headers: request
                    .headers
                    .iter()
                    .filter(|(name, _)| wanted.contains(name))
                    .cloned()
                    .collect(),
            };
            let answer = plugin.run(
                |exports, store| {
                    exports
                        .ash_auth_authenticate()
                        .call_authenticate(store, &shown)
                },
                checked_decision,
            );
            match answer {
                Ok(Decision::Abstain) => {}
                Ok(decision) => return Ok(decision),
                Err(()) => {
                    return Err(format!(
                        "authenticator {} is unavailable",
                        plugin.manifest.id
                    ))
                }
            }
        }
        Ok(Decision::Abstain)
    }

    /// Queues the event for every observer; never blocks. An observer whose queue is full
    /// or who is quarantined misses it, counted in its `dropped`.
    pub fn observe(&self, event: &Event) {
        for observer in &self.observers {
            let sent = !observer.plugin.is_quarantined()
                && observer
                    .queue
                    .try_send(Queued::Event(event.clone()))
                    .is_ok();
            if !sent {
                observer.plugin.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every event queued so far was handed to its observer (at shutdown).
    /// Blocks: call it off the async workers.
    pub fn flush(&self) {
        let waits: Vec<_> = self
            .observers
            .iter()
            .filter_map(|observer| {
                let (done, wait) = mpsc::channel();
                observer.queue.send(Queued::Flush(done)).ok().map(|()| wait)
            })
            .collect();
        for wait in waits {
            let _ = wait.recv();
        }
    }

    /// Makes one more instance of every plugin, kept for reuse while there is room: what
    /// load does ahead of the first call, and what the instantiation benchmark measures.
    pub fn prewarm(&self) -> Result<(), PluginError> {
        self.transformers.iter().try_for_each(Plugin::prewarm)?;
        self.authenticators.iter().try_for_each(Plugin::prewarm)?;
        self.observers.iter().try_for_each(|o| o.plugin.prewarm())
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        let transformers = self.transformers.iter().map(Plugin::status);
        let authenticators = self.authenticators.iter().map(Plugin::status);
        let observers = self.observers.iter().map(|o| o.plugin.status());
        transformers
            .chain(authenticators)
            .chain(observers)
            .collect()
    }
}

impl Observer {
    fn start(plugin: Plugin<ObserverWorld>) -> Result<Self, PluginError> {
        let plugin = Arc::new(plugin);
        let (queue, events) = mpsc::sync_channel(OBSERVER_QUEUE);
        let drained = plugin.clone();
        std::thread::Builder::new()
            .name(format!("ash-observe-{}", plugin.manifest.id))
            .spawn(move || drain(&drained, &events))
            .map_err(|e| PluginError::Component {
                plugin: plugin.manifest.id.clone(),
                message: format!("cannot start its thread: {e}"),
            })?;
        Ok(Self { plugin, queue })
    }
}

/// An observer's thread: hands queued events over in batches, in order, until the queue's
/// sender is gone.
fn drain(plugin: &Plugin<ObserverWorld>, events: &mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(OBSERVER_BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = events.recv() {
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            match queued {
                Queued::Event(event) => batch.push(event),
                Queued::Flush(done) => flushes.push(done),
            }
            if batch.len() < OBSERVER_BATCH {
                next = events.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let handed = plugin.run(
                |exports, store| exports.ash_observe_observe().call_observe(store, &batch),
                Ok,
            );
            if handed.is_err() {
                plugin
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// A transformer's verdict, checked: `Some` with the new payload, as text and parsed.
fn checked_verdict(
    verdict: host::bindings::transformer::exports::ash::observe::transform::Verdict,
) -> Result<Option<(String, serde_json::Value)>, String> {
    use host::bindings::transformer::exports::ash::observe::transform::Verdict;
    match verdict {
        Verdict::Keep => Ok(None),
        Verdict::Replace(data) if data.len() > MAX_RESULT_BYTES => Err(format!(
            "returned {} bytes; the limit is {MAX_RESULT_BYTES}",
            data.len()
        )),
        // Parsed whole: serde_json's nesting limit turns a too-deep result into an error.
        Verdict::Replace(data) => serde_json::from_str(&data)
            .map(|parsed| Some((data, parsed)))
            .map_err(|e| format!("returned a payload that is not JSON: {e}")),
    }
}

/// An authenticator's decision, checked against the size caps and for an empty subject.
fn checked_decision(decision: Decision) -> Result<Decision, String> {
    let size = match &decision {
        Decision::Allow(principal) if principal.subject.is_empty() => {
            return Err("allowed a request with an empty subject".into())
        }
        Decision::Allow(principal) => {
            principal.subject.len()
                + principal
                    .claims
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        }
        Decision::Deny(reason) => reason.len(),
        Decision::Abstain => 0,
    };
    if size > MAX_AUTH_BYTES {
        return Err(format!(
            "returned a {size}-byte decision; the limit is {MAX_AUTH_BYTES}"
        ));
    }
    Ok(decision)
}

/// The plugin's compiled component; the cache file it used joins `cached`.
fn compile(
    engine: &Engine,
    manifest: &Manifest,
    bytes: &[u8],
    digest: &str,
    cache: Option<&Path>,
    cached: &mut HashSet<PathBuf>,
) -> Result<Component, PluginError> {
    let (component, file) =
        cache::compile(engine, bytes, digest, cache).map_err(|e| PluginError::Component {
            plugin: manifest.id.clone(),
            message: format!("not a valid component: {e:#}"),
        })?;
    cached.extend(file);
    Ok(component)
}

fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("ash-plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })?;
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use host::bindings::transformer::exports::ash::observe::transform::Verdict;

    #[test]
    fn a_transformer_answer_must_be_json_within_the_caps() {
        assert_eq!(checked_verdict(Verdict::Keep), Ok(None));
        let (text, value) = checked_verdict(Verdict::Replace("{\"a\":1}".into()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (text.as_str(), value),
            ("{\"a\":1}", serde_json::json!({"a": 1}))
        );
        for bad in [
            "not json".to_owned(),
            "[".repeat(1_000) + &"]".repeat(1_000),
            format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES)),
        ] {
            assert!(checked_verdict(Verdict::Replace(bad)).is_err());
        }
    }

    #[test]
    fn an_authenticator_answer_names_someone_and_stays_small() {
        let principal = |subject: &str, claim: usize| Principal {
            subject: subject.into(),
            claims: vec![("scope".into(), "x".repeat(claim))],
        };
        assert!(checked_decision(Decision::Allow(principal("alice", 10))).is_ok());
        assert!(checked_decision(Decision::Allow(principal("", 10))).is_err());
        assert!(checked_decision(Decision::Allow(principal("alice", MAX_AUTH_BYTES))).is_err());
        assert!(checked_decision(Decision::Deny("x".repeat(MAX_AUTH_BYTES + 1))).is_err());
        assert!(checked_decision(Decision::Abstain).is_ok());
    }
}
