//! The `ash:host` imports, as the host implements them for one plugin instance.

use std::collections::BTreeMap;

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The longest log line a plugin may write; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;

/// One instance's store data: an empty WASI context (no env, args, files or sockets), its
/// memory limits, and what the operator granted it.
pub(crate) struct State {
    pub(crate) plugin: String,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl State {
    pub(crate) fn new(
        plugin: String,
        config: BTreeMap<String, String>,
        limits: StoreLimits,
    ) -> Self {
        Self {
            plugin,
            config,
            limits,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

wasmtime::component::bindgen!({
    path: ["../../wit/host", "../../wit/observe"],
    world: "ash:observe/transformer@0.1.0",
});

use ash::host::log::Level;

impl ash::host::log::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl ash::host::config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// `ash:observe/types` holds only types; nothing to implement.
impl ash::observe::types::Host for State {}
