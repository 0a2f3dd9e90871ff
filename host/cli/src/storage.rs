//! `ash storage copy`: moves every record from one backend to another, so an operator can swap
//! backends. A backend is named by a database URL or by a settings file (whose storage the
//! server would use). The source is only read; the destination must be empty, and is counted
//! afterwards against the source.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use ash_server::StorageConfig;
use ash_store::{Database, Store};

#[derive(clap::Subcommand)]
pub enum StorageCommand {
    /// Copy every record (agents, sessions, messages, event logs, API keys, credentials) into
    /// an empty backend, then check the counts. Stop the server using the source first. Agent
    /// folders and workspaces stay in the data dir: start the server on the new backend with
    /// the same data dir.
    Copy {
        /// sqlite:<path>, postgres://user:password@host:port/database, or a settings file
        /// (ash.toml) whose storage to read
        #[arg(long)]
        from: String,
        /// The same forms as --from; must hold no records
        #[arg(long)]
        to: String,
    },
}

pub async fn run(command: StorageCommand) -> anyhow::Result<ExitCode> {
    let StorageCommand::Copy { from, to } = command;
    let source = backend(&from)?;
    if let StorageConfig::Database(Database::Sqlite(path)) = &source {
        if !path.is_file() {
            bail!(
                "--from {from}: there is no SQLite file at {}",
                path.display()
            );
        }
    }
    let from = open(source, "--from").await?;
    let to = open(backend(&to)?, "--to").await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records ({per_sec}, {eta} left)",
        )
        .expect("a valid template"),
    );
    let copied = from
        .copy_to(&to, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let copied = copied?;
    println!("copied {copied}; the destination holds exactly what the source holds");
    Ok(ExitCode::SUCCESS)
}

/// A backend named on the command line: a database URL, or a settings file.
fn backend(named: &str) -> anyhow::Result<StorageConfig> {
    if let Ok(database) = Database::parse(named) {
        return Ok(StorageConfig::Database(database));
    }
    let path = PathBuf::from(named);
    if !path.is_file() {
        bail!(
            "{named:?} is neither a database URL (sqlite:<path>, postgres://…) nor a settings file"
        );
    }
    let settings = crate::start::read_settings(Some(path))?;
    let data_dir = settings.data_dir()?;
    settings.storage(None, &data_dir)
}

async fn open(config: StorageConfig, flag: &str) -> anyhow::Result<Store> {
    let (store, _) = ash_server::open_storage(&config, None)
        .await
        .with_context(|| format!("{flag}: cannot open the store"))?;
    Ok(store)
}
