//! What a plugin instance runs with: the `ash:host` imports, and a WASI context holding only
//! what the operator granted (a data dir preopened with cap-std, TCP to granted addresses),
//! never env or args.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The longest log line a plugin may write; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// Where a granted data dir appears inside the plugin.
pub(crate) const DATA_DIR: &str = "/data";

/// What the operator granted one plugin, of what its manifest requested.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) data_dir: Option<PathBuf>,
    /// The granted `host:port` pairs, resolved when the plugin loaded.
    pub(crate) outbound: Arc<[SocketAddr]>,
    /// Whether a granted host is a name the plugin must resolve itself.
    pub(crate) name_lookup: bool,
}

/// One instance's store data.
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
        grants: &Grants,
        limits: StoreLimits,
    ) -> wasmtime::Result<Self> {
        let mut wasi = WasiCtxBuilder::new();
        if let Some(dir) = &grants.data_dir {
            wasi.preopened_dir(dir, DATA_DIR, FsPerms::ReadWrite)?;
        }
        if !grants.outbound.is_empty() {
            let allowed = grants.outbound.clone();
            wasi.allow_tcp(true)
                .allow_ip_name_lookup(grants.name_lookup)
                .socket_addr_check(move |addr, used| {
                    let ok = match used {
                        // A connect first asks to bind the wildcard address implicitly.
                        SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                        SocketAddrUse::TcpConnect => allowed.contains(&addr),
                        _ => false,
                    };
                    Box::pin(std::future::ready(ok))
                });
        }
        Ok(Self {
            plugin,
            config: grants.config.clone(),
            limits,
            wasi: wasi.build(),
            table: ResourceTable::new(),
        })
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

/// The bindings of each world the host runs; the `ash:host` and shared type interfaces are
/// generated once, with the transformer's.
pub(crate) mod bindings {
    pub(crate) mod transformer {
        wasmtime::component::bindgen!({
            path: ["../../wit/host", "../../wit/observe"],
            world: "ash:observe/transformer@0.1.0",
        });
    }
    pub(crate) mod observer {
        wasmtime::component::bindgen!({
            path: ["../../wit/host", "../../wit/observe"],
            world: "ash:observe/observer@0.1.0",
            with: {
                "ash:host": super::transformer::ash::host,
                "ash:observe/types": super::transformer::ash::observe::types,
            },
        });
    }
    pub(crate) mod storage {
        wasmtime::component::bindgen!({
            path: ["../../wit/host", "../../wit/storage"],
            world: "ash:storage/storage-backend@0.2.0",
            with: { "ash:host": super::transformer::ash::host },
        });
    }
    pub(crate) mod authenticator {
        wasmtime::component::bindgen!({
            path: ["../../wit/host", "../../wit/auth"],
            world: "ash:auth/authenticator@0.1.0",
            with: { "ash:host": super::transformer::ash::host },
        });
    }
}

use bindings::transformer::ash::host::log::Level;

/// A WIT world the host can link and instantiate plugins of.
pub(crate) trait World {
    type Pre;
    type Exports;
    fn link(linker: &mut Linker<State>) -> wasmtime::Result<()>;
    fn pre(pre: InstancePre<State>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Exports>;
}

macro_rules! world {
    ($world:ident, $module:ident, $bindings:ident, $pre:ident) => {
        pub(crate) struct $world;

        impl World for $world {
            type Pre = bindings::$module::$pre<State>;
            type Exports = bindings::$module::$bindings;
            fn link(linker: &mut Linker<State>) -> wasmtime::Result<()> {
                bindings::$module::$bindings::add_to_linker::<_, HasSelf<State>>(linker, |s| s)
            }
            fn pre(pre: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
                bindings::$module::$pre::new(pre)
            }
            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<State>,
            ) -> wasmtime::Result<Self::Exports> {
                pre.instantiate(store)
            }
        }
    };
}

world!(TransformerWorld, transformer, Transformer, TransformerPre);
world!(ObserverWorld, observer, Observer, ObserverPre);
world!(
    AuthenticatorWorld,
    authenticator,
    Authenticator,
    AuthenticatorPre
);
world!(StorageWorld, storage, StorageBackend, StorageBackendPre);

/// The storage world's shared types are records only: nothing for the host to provide.
impl bindings::storage::ash::storage::types::Host for State {}

impl bindings::transformer::ash::host::log::Host for State {
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

impl bindings::transformer::ash::host::config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

/// The type-only interfaces: nothing to implement.
impl bindings::transformer::ash::observe::types::Host for State {}
impl bindings::authenticator::ash::auth::types::Host for State {}
