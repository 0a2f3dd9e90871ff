//! Ash's WebAssembly plugin host: loads component plugins (WIT worlds in `wit/`) and runs
//! them under limits, so a plugin can extend the server without being able to take it down.
//!
//! - A plugin gets nothing it did not request and the operator did not grant: its WASI
//!   context has no env, args, files or sockets; `ash:host/config` answers only the keys its
//!   manifest requested.
//! - Every call runs under a wall-clock deadline (epoch interruption, one ticker thread per
//!   engine) and a memory cap (a `ResourceLimiter`); a returned payload over 1 MiB is a
//!   failure.
//! - A call that traps, times out or breaks the contract discards its instance — a broken
//!   instance is never reused — and counts as a failure; five failures in a row quarantine
//!   the plugin: it is not called again until the server restarts, and `/health`, the log
//!   and the metrics say so. What happens to the event then is the operator's `on_failure`.
//! - Instances come from an `InstancePre` made once at load; a few healthy ones are kept for
//!   reuse (each for at most 10,000 calls), so a call costs no instantiation.

mod host;
mod manifest;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};

pub use manifest::{hex, Capabilities, Kind, Limits, Manifest, OnFailure, PluginConfig};

use host::{State, TransformerPre};

/// Failures in a row that quarantine a plugin.
const QUARANTINE_AFTER: u32 = 5;
/// The largest payload a plugin may return.
const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// How often the engine's epoch advances: the granularity of call deadlines.
const TICK: Duration = Duration::from_millis(1);
/// Healthy instances kept per plugin, and how many calls one serves before it is replaced.
const IDLE_INSTANCES: usize = 4;
const CALLS_PER_INSTANCE: u32 = 10_000;

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

/// One event as plugins see it: `ash:observe/types.event`, as the bindings generate it.
pub use host::ash::observe::types::Event;

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
    pub quarantined: bool,
    pub last_error: Option<String>,
}

/// The loaded plugins of one server.
pub struct Plugins {
    transformers: Vec<Plugin>,
}

struct Plugin {
    manifest: Manifest,
    config: PluginConfig,
    engine: Engine,
    pre: TransformerPre<State>,
    idle: Mutex<Vec<Loaded>>,
    calls: AtomicU64,
    failures: AtomicU64,
    in_a_row: AtomicU32,
    quarantined: AtomicBool,
    last_error: Mutex<Option<String>>,
}

struct Loaded {
    store: Store<State>,
    bindings: host::Transformer,
    calls: u32,
}

impl Plugins {
    /// Loads every configured plugin: manifest, digest, compilation, and a check that the
    /// component implements its kind's world. Any failure stops the load, naming the plugin.
    pub fn load(configs: &[PluginConfig]) -> Result<Self, PluginError> {
        if configs.is_empty() {
            return Ok(Self {
                transformers: Vec::new(),
            });
        }
        let engine = engine().map_err(|e| PluginError::Manifest(e.to_string()))?;
        let transformers = configs
            .iter()
            .map(|config| Plugin::load(&engine, config))
            .collect::<Result<_, _>>()?;
        Ok(Self { transformers })
    }

    /// Checks one plugin folder as `load` would, without a server: for `ash plugin check`.
    pub fn check(dir: &std::path::Path) -> Result<Manifest, PluginError> {
        let config = PluginConfig {
            path: dir.to_owned(),
            sha256: None,
            config: Default::default(),
            on_failure: OnFailure::default(),
        };
        let engine = engine().map_err(|e| PluginError::Manifest(e.to_string()))?;
        Ok(Plugin::load(&engine, &config)?.manifest)
    }

    pub fn is_empty(&self) -> bool {
        self.transformers.is_empty()
    }

    /// Runs the event through every transformer in order, each seeing the one before's
    /// output. Blocks for up to each plugin's deadline, and WASI calls inside a plugin
    /// re-enter tokio: call it where blocking is allowed (`block_in_place`,
    /// `spawn_blocking`), never straight on an async worker.
    pub fn transform(&self, mut event: Event) -> Transformed {
        let mut replaced = None;
        for plugin in &self.transformers {
            match plugin.transform(&event) {
                Ok(Some((data, parsed))) => {
                    event.data = data;
                    replaced = Some(parsed);
                }
                Ok(None) => {}
                Err(()) if plugin.config.on_failure == OnFailure::Drop => return Transformed::Drop,
                Err(()) => {}
            }
        }
        replaced.map_or(Transformed::Keep, Transformed::Replace)
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.transformers.iter().map(Plugin::status).collect()
    }
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

impl Plugin {
    fn load(engine: &Engine, config: &PluginConfig) -> Result<Self, PluginError> {
        let (manifest, bytes) = Manifest::load(&config.path, config.sha256.as_deref())?;
        let fail = |message: String| PluginError::Component {
            plugin: manifest.id.clone(),
            message,
        };
        let component = Component::new(engine, &bytes)
            .map_err(|e| fail(format!("not a valid component: {e}")))?;
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| fail(e.to_string()))?;
        host::Transformer::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| fail(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(TransformerPre::new)
            .map_err(|e| {
                fail(format!(
                    "does not implement {} as this host provides it: {e:#}",
                    manifest.kind.world()
                ))
            })?;
        let granted = config
            .config
            .iter()
            .filter(|(key, _)| manifest.capabilities.config.contains(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            manifest,
            config: PluginConfig {
                config: granted,
                ..config.clone()
            },
            engine: engine.clone(),
            pre,
            idle: Mutex::default(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            last_error: Mutex::default(),
        })
    }

    fn instantiate(&self) -> wasmtime::Result<Loaded> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.manifest.limits.memory_mb << 20) as usize)
            .trap_on_grow_failure(true)
            .build();
        let state = State::new(self.manifest.id.clone(), self.config.config.clone(), limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self.pre.instantiate(&mut store)?;
        Ok(Loaded {
            store,
            bindings,
            calls: 0,
        })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.manifest.limits.deadline_ms / TICK.as_millis() as u64).max(1)
    }

    /// `Ok(Some(data))` for a replacement, `Ok(None)` to keep, `Err` when the plugin failed
    /// or is quarantined.
    fn transform(&self, event: &Event) -> Result<Option<(String, serde_json::Value)>, ()> {
        if self.quarantined.load(Ordering::Relaxed) {
            return Err(());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.call(event) {
            Ok(verdict) => {
                self.in_a_row.store(0, Ordering::Relaxed);
                Ok(verdict)
            }
            Err(error) => {
                self.fail(error);
                Err(())
            }
        }
    }

    /// The plugin's verdict: `Some` with the new payload, as text and parsed.
    fn call(&self, event: &Event) -> Result<Option<(String, serde_json::Value)>, String> {
        use host::ash::observe::types::Verdict;
        let idle = self.idle.lock().expect("lock").pop();
        let mut loaded = match idle {
            Some(loaded) => loaded,
            None => self
                .instantiate()
                .map_err(|e| format!("instantiation failed: {e:#}"))?,
        };
        loaded.store.set_epoch_deadline(self.deadline_ticks());
        // A trap drops `loaded` here: a broken instance is never reused.
        let verdict = loaded
            .bindings
            .ash_observe_transform()
            .call_transform(&mut loaded.store, event)
            .map_err(|e| trap_message(&e, self.manifest.limits))?;
        loaded.calls += 1;
        if loaded.calls < CALLS_PER_INSTANCE {
            let mut idle = self.idle.lock().expect("lock");
            if idle.len() < IDLE_INSTANCES {
                idle.push(loaded);
            }
        }
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

    fn fail(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let id = &self.manifest.id;
        tracing::warn!(plugin = %id, "plugin call failed: {error}");
        if in_a_row >= QUARANTINE_AFTER && !self.quarantined.swap(true, Ordering::Relaxed) {
            tracing::error!(plugin = %id, "plugin quarantined after {in_a_row} failures in a row; it is not called again until the server restarts");
        }
        *self.last_error.lock().expect("lock") = Some(error);
    }

    fn status(&self) -> PluginStatus {
        PluginStatus {
            id: self.manifest.id.clone(),
            version: self.manifest.version.clone(),
            kind: self.manifest.kind,
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("lock").clone(),
        }
    }
}

/// Says in plain words why a call failed: its deadline, or the trap (a refused memory grow
/// names the size it asked for).
fn trap_message(error: &wasmtime::Error, limits: Limits) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("ran past its deadline of {} ms", limits.deadline_ms)
        }
        _ => format!("trapped (memory limit {} MiB): {error:#}", limits.memory_mb),
    }
}
