//! One loaded plugin of any kind: its compiled component, what it was granted, the instances
//! kept for reuse, and its failure count.
//!
//! A call that traps, runs past its deadline or breaks the contract drops its instance — a
//! broken instance is never reused — and counts as a failure; [`QUARANTINE_AFTER`] failures
//! in a row quarantine the plugin until the server restarts.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::host::{Grants, State, World};
use crate::{Limits, Manifest, OnFailure, PluginConfig, PluginError, PluginStatus, TICK};

/// Failures in a row that quarantine a plugin.
const QUARANTINE_AFTER: u32 = 5;
/// Healthy instances kept per plugin, and how many calls one serves before it is replaced.
const IDLE_INSTANCES: usize = 4;
const CALLS_PER_INSTANCE: u32 = 10_000;

pub(crate) struct Plugin<W: World> {
    pub(crate) manifest: Manifest,
    /// What becomes of an event when a transformer fails.
    pub(crate) on_failure: OnFailure,
    grants: Grants,
    engine: Engine,
    pre: W::Pre,
    idle: Mutex<Vec<Instance<W>>>,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Events an observer never saw: its queue was full, it failed, or it is quarantined.
    pub(crate) dropped: AtomicU64,
    in_a_row: AtomicU32,
    quarantined: AtomicBool,
    last_error: Mutex<Option<String>>,
}

struct Instance<W: World> {
    store: Store<State>,
    exports: W::Exports,
    calls: u32,
}

impl<W: World> Plugin<W> {
    /// Compiles the component, checks it implements `W` as this host provides it, and makes
    /// its first instance.
    pub(crate) fn load(
        engine: &Engine,
        manifest: Manifest,
        component: &Component,
        config: &PluginConfig,
    ) -> Result<Self, PluginError> {
        let fail = |message: String| PluginError::Component {
            plugin: manifest.id.clone(),
            message,
        };
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| fail(e.to_string()))?;
        W::link(&mut linker).map_err(|e| fail(e.to_string()))?;
        let pre = linker
            .instantiate_pre(component)
            .and_then(W::pre)
            .map_err(|e| {
                fail(format!(
                    "does not implement {} as this host provides it: {e:#}",
                    manifest.kind.world()
                ))
            })?;
        let grants = grant(&manifest, config).map_err(fail)?;
        let plugin = Self {
            manifest,
            on_failure: config.on_failure.unwrap_or_default(),
            grants,
            engine: engine.clone(),
            pre,
            idle: Mutex::default(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            last_error: Mutex::default(),
        };
        plugin.prewarm()?;
        Ok(plugin)
    }

    /// Instantiates one instance and keeps it for the first call (while fewer than the idle
    /// cap are kept); an instance that cannot be made is the load's error.
    pub(crate) fn prewarm(&self) -> Result<(), PluginError> {
        let instance = self.instantiate().map_err(|e| PluginError::Component {
            plugin: self.manifest.id.clone(),
            message: format!("cannot be instantiated: {e:#}"),
        })?;
        self.keep(instance);
        Ok(())
    }

    fn instantiate(&self) -> wasmtime::Result<Instance<W>> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.manifest.limits.memory_mb << 20) as usize)
            .trap_on_grow_failure(true)
            .build();
        let state = State::new(self.manifest.id.clone(), &self.grants, limits)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let exports = W::instantiate(&self.pre, &mut store)?;
        Ok(Instance {
            store,
            exports,
            calls: 0,
        })
    }

    fn keep(&self, instance: Instance<W>) {
        if instance.calls < CALLS_PER_INSTANCE {
            let mut idle = self.idle.lock().expect("lock");
            if idle.len() < IDLE_INSTANCES {
                idle.push(instance);
            }
        }
    }

    fn deadline_ticks(&self) -> u64 {
        (self.manifest.limits.deadline_ms / TICK.as_millis() as u64).max(1)
    }

    pub(crate) fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Calls the plugin once and checks its answer. `Err` (already counted and logged) when
    /// the plugin is quarantined, traps, runs past its deadline or `check` refuses the answer.
    pub(crate) fn run<R, T>(
        &self,
        call: impl FnOnce(&W::Exports, &mut Store<State>) -> wasmtime::Result<R>,
        check: impl FnOnce(R) -> Result<T, String>,
    ) -> Result<T, ()> {
        if self.is_quarantined() {
            return Err(());
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.call(call).and_then(check) {
            Ok(answer) => {
                self.in_a_row.store(0, Ordering::Relaxed);
                Ok(answer)
            }
            Err(error) => {
                self.fail(error);
                Err(())
            }
        }
    }

    fn call<R>(
        &self,
        call: impl FnOnce(&W::Exports, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        let idle = self.idle.lock().expect("lock").pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self
                .instantiate()
                .map_err(|e| format!("instantiation failed: {e:#}"))?,
        };
        instance.store.set_epoch_deadline(self.deadline_ticks());
        // A trap drops `instance` here: a broken instance is never reused.
        let answer = call(&instance.exports, &mut instance.store)
            .map_err(|e| trap_message(&e, self.manifest.limits))?;
        instance.calls += 1;
        self.keep(instance);
        Ok(answer)
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

    pub(crate) fn status(&self) -> PluginStatus {
        PluginStatus {
            id: self.manifest.id.clone(),
            version: self.manifest.version.clone(),
            kind: self.manifest.kind,
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            quarantined: self.is_quarantined(),
            last_error: self.last_error.lock().expect("lock").clone(),
        }
    }
}

/// What the plugin gets: each capability it requested that the operator granted. Outbound
/// hosts are resolved now, so a connection is checked against addresses, not names.
fn grant(manifest: &Manifest, config: &PluginConfig) -> Result<Grants, String> {
    let wanted = &manifest.capabilities;
    let data_dir = match (&config.data_dir, wanted.data_dir) {
        (Some(dir), true) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create its data dir {}: {e}", dir.display()))?;
            Some(dir.clone())
        }
        (None, true) => {
            tracing::warn!(plugin = %manifest.id, "the plugin asks for a data dir and none is granted (data_dir in its [[plugins]] entry)");
            None
        }
        (_, false) => None,
    };
    let mut outbound = Vec::new();
    let mut name_lookup = false;
    for host in config
        .outbound
        .iter()
        .filter(|h| wanted.outbound.contains(h))
    {
        let addrs = host
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve the granted host {host}: {e}"))?;
        outbound.extend(addrs);
        name_lookup |= host.rsplit_once(':').is_some_and(|(name, _)| {
            name.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_err()
        });
    }
    Ok(Grants {
        config: config
            .config
            .iter()
            .filter(|(key, _)| wanted.config.contains(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        data_dir,
        outbound: outbound.into(),
        name_lookup,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(capabilities: &str) -> Manifest {
        toml::from_str(&format!(
            "id = \"t\"\nversion = \"1\"\nkind = \"observe\"\nworld = \"ash:observe/observer@0.1.0\"\ncomponent = \"t.wasm\"\n[capabilities]\n{capabilities}"
        ))
        .unwrap()
    }

    #[test]
    fn a_plugin_gets_only_what_it_asked_for_and_was_granted() {
        let data = tempfile::tempdir().unwrap();
        let asked = manifest(
            "config = [\"a\", \"b\"]\ndata_dir = true\noutbound = [\"127.0.0.1:6379\", \"localhost:80\"]",
        );
        let config = PluginConfig {
            config: [("a", "1"), ("c", "3")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            data_dir: Some(data.path().join("plugin")),
            outbound: vec!["127.0.0.1:6379".into(), "127.0.0.1:5432".into()],
            ..PluginConfig::default()
        };
        let grants = grant(&asked, &config).unwrap();
        assert_eq!(grants.config.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(grants.data_dir, Some(data.path().join("plugin")));
        assert!(
            data.path().join("plugin").is_dir(),
            "the data dir is created"
        );
        assert_eq!(&*grants.outbound, &["127.0.0.1:6379".parse().unwrap()]);
        assert!(!grants.name_lookup, "only an address was granted");

        let nothing = grant(&manifest(""), &config).unwrap();
        assert!(nothing.config.is_empty() && nothing.data_dir.is_none());
        assert!(nothing.outbound.is_empty());

        let named = PluginConfig {
            outbound: vec!["localhost:80".into()],
            ..PluginConfig::default()
        };
        let grants = grant(&asked, &named).unwrap();
        assert!(grants.name_lookup && !grants.outbound.is_empty());
        assert!(grants.data_dir.is_none(), "asked for, not granted");
    }
}
