//! Compiled plugins, kept between starts: compiling a component with cranelift costs
//! hundreds of milliseconds, loading the compiled code a few. The cache is a folder of the
//! server's own (created 0700 in its data dir), named by the component's SHA-256 and the
//! engine's settings; what cannot be read back is compiled again, and files no configured
//! plugin uses are removed at load.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiles `bytes`, or loads what an earlier start compiled from the same bytes with the
/// same engine settings; returns the cache file it used, if any.
pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
    cache: Option<&Path>,
) -> wasmtime::Result<(Component, Option<PathBuf>)> {
    let Some(dir) = cache else {
        return Ok((Component::new(engine, bytes)?, None));
    };
    // `DefaultHasher::new()` has fixed keys: the same settings give the same name every run.
    let mut settings = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let path = dir.join(format!("{digest}-{:016x}.cwasm", settings.finish()));
    if path.is_file() {
        // SAFETY: the file is in the server's private cache folder, written only by the
        // `precompile_component` below (the name carries the source's digest); wasmtime
        // checks its header and engine settings and refuses anything else.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, Some(path))),
            Err(e) => tracing::warn!("compiling {} again: {e:#}", path.display()),
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    if let Err(e) = store(dir, &path, &compiled) {
        tracing::warn!("cannot keep the compiled plugin in {}: {e}", dir.display());
    }
    // SAFETY: these bytes were produced by this engine's `precompile_component` just now.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, Some(path)))
}

/// Writes a compiled component whole (temp file, then rename), so a crash never leaves a
/// half-written one under the real name.
fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, compiled)?;
    std::fs::rename(&temp, path)
}

/// Removes cached files that none of `used` names.
pub(crate) fn prune(dir: &Path, used: &HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|entry| entry.path()) {
        if !used.contains(&path) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove the stale {}: {e}", path.display());
            }
        }
    }
}
