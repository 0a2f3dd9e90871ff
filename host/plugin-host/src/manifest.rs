//! `plugin.toml`, the plugin's own manifest, and the operator's entry that loads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::PluginError;

/// The largest `plugin.toml` read.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// The largest component loaded.
const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// What a plugin extends; each kind has one WIT world and one failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Rewrites each agent message before it is stored and streamed; fails as configured.
    Transform,
    /// Sees batches of events off the request path; fails open.
    Observe,
    /// Joins the auth chain after the API keys; fails closed.
    Auth,
    /// Stores everything the server keeps, chosen with `[storage] plugin`; fails closed (503).
    Storage,
}

impl Kind {
    /// The WIT world (package, world, version) a plugin of this kind implements.
    pub fn world(self) -> &'static str {
        match self {
            Self::Transform => "ash:observe/transformer@0.1.0",
            Self::Observe => "ash:observe/observer@0.1.0",
            Self::Auth => "ash:auth/authenticator@0.1.0",
            Self::Storage => "ash:storage/storage-backend@0.2.0",
        }
    }

    /// The name `plugin.toml` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transform => "transform",
            Self::Observe => "observe",
            Self::Auth => "auth",
            Self::Storage => "storage",
        }
    }
}

/// A plugin's `plugin.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: String,
    pub kind: Kind,
    /// `package/world@version`; must be the world of `kind`.
    pub world: String,
    /// The component file, relative to the manifest's folder.
    pub component: PathBuf,
    /// SHA-256 of the component, hex; checked when present.
    pub sha256: Option<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: Limits,
}

/// What a plugin asks for; it gets what it asks for and the operator grants, nothing else
/// (never env or args).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Config keys it may read through `ash:host/config`.
    #[serde(default)]
    pub config: Vec<String>,
    /// A private data directory, seen by the plugin as `/data`.
    #[serde(default)]
    pub data_dir: bool,
    /// `host:port` pairs it may open TCP connections to.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// Request headers an authenticator is shown (lower case).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What one plugin instance may use.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory, MiB.
    pub memory_mb: u64,
    /// Wall-clock time per call, ms.
    pub deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 32,
            deadline_ms: 50,
        }
    }
}

/// What to do with an event when its transformer fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Drop the event: nothing unchecked reaches storage or clients (fail closed).
    #[default]
    Drop,
    /// Let the event through unchanged (fail open).
    Pass,
}

/// The operator's entry for one plugin in the server's settings (`[[plugins]]`): which
/// plugin loads, and what it is granted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The folder holding `plugin.toml`.
    pub path: PathBuf,
    /// Pins the component's SHA-256 (hex); loading fails when it differs.
    pub sha256: Option<String>,
    /// Values for the config keys the plugin requested; others are not passed on.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The host directory granted as the plugin's `/data` (created if missing), when its
    /// manifest asks for one.
    pub data_dir: Option<PathBuf>,
    /// `host:port` pairs granted, of those the manifest asks for.
    #[serde(default)]
    pub outbound: Vec<String>,
    /// For transformers only: what becomes of an event when the plugin fails.
    pub on_failure: Option<OnFailure>,
}

impl Manifest {
    /// Reads and checks `<dir>/plugin.toml`: shape, kind and world agree, and the component's
    /// digest matches every digest given (the manifest's and `pinned`). Returns the manifest,
    /// the component's bytes and their SHA-256 (hex).
    pub fn load(dir: &Path, pinned: Option<&str>) -> Result<(Self, Vec<u8>, String), PluginError> {
        let file = dir.join("plugin.toml");
        let text = read_capped(&file, MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(text)
            .map_err(|_| PluginError::Manifest(format!("{} is not UTF-8", file.display())))?;
        let manifest: Self = toml::from_str(&text)
            .map_err(|e| PluginError::Manifest(format!("{}: {e}", file.display())))?;
        if manifest.world != manifest.kind.world() {
            return Err(PluginError::Manifest(format!(
                "{}: a {:?} plugin implements {}, not {}",
                file.display(),
                manifest.kind,
                manifest.kind.world(),
                manifest.world
            )));
        }
        if manifest.capabilities.headers.len() > 16
            || manifest.capabilities.outbound.len() > 16
            || manifest.capabilities.config.len() > 64
        {
            return Err(PluginError::Manifest(format!(
                "{}: at most 16 headers, 16 outbound hosts and 64 config keys may be requested",
                file.display()
            )));
        }
        let component = read_capped(&dir.join(&manifest.component), MAX_COMPONENT_BYTES)?;
        let digest = hex(&Sha256::digest(&component));
        for expected in [manifest.sha256.as_deref(), pinned].into_iter().flatten() {
            if !expected.eq_ignore_ascii_case(&digest) {
                return Err(PluginError::Digest {
                    plugin: manifest.id.clone(),
                    expected: expected.to_owned(),
                    actual: digest,
                });
            }
        }
        Ok((manifest, component, digest))
    }
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| PluginError::Manifest(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::Manifest(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > cap {
        return Err(PluginError::Manifest(format!(
            "{} is larger than {cap} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
