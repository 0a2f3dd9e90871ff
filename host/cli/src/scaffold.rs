//! `ash plugin new <name> --kind <kind>`: a buildable Rust plugin, made from the numbered
//! example for its kind (`examples/plugins/`) with the WIT it needs beside it, so the
//! scaffold builds anywhere and the examples the docs teach are what users start from.

use std::path::Path;
use std::process::ExitCode;

use ash_plugin_host::Kind;

/// One example: its crate name and files.
struct Example {
    name: &'static str,
    cargo: &'static str,
    manifest: &'static str,
    lib: &'static str,
    /// The WIT package beside `ash:host`: folder and text.
    wit: (&'static str, &'static str),
}

const HOST_WIT: &str = include_str!("../../../wit/host/host.wit");
const OBSERVE_WIT: (&str, &str) = ("observe", include_str!("../../../wit/observe/observe.wit"));
const AUTH_WIT: (&str, &str) = ("auth", include_str!("../../../wit/auth/auth.wit"));

/// The example in `examples/plugins/<folder>`, whose crate is `name`.
macro_rules! example {
    ($folder:literal, $name:literal, $wit:expr) => {
        Example {
            name: $name,
            cargo: include_str!(concat!(
                "../../../examples/plugins/",
                $folder,
                "/Cargo.toml"
            )),
            manifest: include_str!(concat!(
                "../../../examples/plugins/",
                $folder,
                "/plugin.toml"
            )),
            lib: include_str!(concat!(
                "../../../examples/plugins/",
                $folder,
                "/src/lib.rs"
            )),
            wit: $wit,
        }
    };
}

fn example(kind: Kind) -> anyhow::Result<Example> {
    Ok(match kind {
        Kind::Observe => example!("01-observe-log", "observe-log", OBSERVE_WIT),
        Kind::Transform => example!("02-transform-replace", "transform-replace", OBSERVE_WIT),
        Kind::Auth => example!("03-auth-token", "auth-token", AUTH_WIT),
        Kind::Storage => anyhow::bail!(
            "there is no storage scaffold yet: start from plugins/storage-redis (docs/storage.md)"
        ),
    })
}

/// Writes the scaffold into `./<name>`, which must not exist.
pub fn new_plugin(name: &str, kind: Kind) -> anyhow::Result<ExitCode> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        anyhow::bail!(
            "{name:?} is not a plugin name: use 1-64 lower-case letters, digits and '-', starting with a letter"
        );
    }
    let dir = Path::new(name);
    if dir.exists() {
        anyhow::bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let example = example(kind)?;
    let (from, to) = (example.name, name);
    let (from_file, to_file) = (from.replace('-', "_"), to.replace('-', "_"));
    let files = [
        ("Cargo.toml", example.cargo.replace(from, to)),
        (
            "plugin.toml",
            example
                .manifest
                .replace(&format!("\"{from}\""), &format!("\"{to}\""))
                .replace(&format!("{from_file}.wasm"), &format!("{to_file}.wasm")),
        ),
        ("src/lib.rs", example.lib.replace("../../../wit/", "wit/")),
        ("wit/host/host.wit", HOST_WIT.to_owned()),
        (
            &format!("wit/{0}/{0}.wit", example.wit.0),
            example.wit.1.to_owned(),
        ),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "created {name}/, a {} plugin ({}). Next:\n  cd {name}\n  cargo build --release --target wasm32-wasip2   # rustup target add wasm32-wasip2, once\n  ash plugin check .\nthen add it to the server's settings: [[plugins]] path = \"{}\"",
        kind.name(),
        kind.world(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
