//! `ash start`: settings come from flags, then `ASH_*` variables, then the `--config` file
//! (`ash.toml`), then defaults.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use ash_cli::client::default_data_dir;
use ash_server::{
    Limits, PluginConfig, RuntimeConfig, SeedAgent, Server, ServerConfig, StorageConfig,
};
use ash_store::Database;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct StartArgs {
    /// Port to listen on; 0 picks a free one [env: ASH_PORT] [default: 4100]
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [env: ASH_HOST] [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// Where the database, agents and workspaces live [env: ASH_DATA_DIR] [default: ~/.local/share/ash]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database: sqlite:<path> or postgres://user:password@host:port/database; overrides the settings file's [storage] [env: ASH_DATABASE_URL] [default: sqlite:<data dir>/ash.db]
    #[arg(long)]
    database_url: Option<String>,
    /// Most live sandboxes at once [env: ASH_MAX_SANDBOXES] [default: 1000]
    #[arg(long)]
    max_sandboxes: Option<usize>,
    /// Settings file (TOML; keys as the flags, with underscores) [env: ASH_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not deploy the bundled `hello-agent` on a store without it [env:
    /// ASH_EXAMPLE_AGENT=false] [settings: example_agent = false]
    #[arg(long)]
    no_example_agent: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSettings {
    port: Option<u16>,
    host: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    max_sandboxes: Option<usize>,
    bwrap: Option<PathBuf>,
    bridge_bin: Option<PathBuf>,
    sandbox_memory_mb: Option<u64>,
    sandbox_max_processes: Option<u64>,
    sandbox_cpu_percent: Option<u64>,
    sandbox_file_size_mb: Option<u64>,
    sandbox_open_files: Option<u64>,
    /// `FIRST:COUNT`: the host uids a root server gives its sandboxes.
    sandbox_uids: Option<String>,
    /// Folders path-mode deploys may come from.
    deploy_roots: Option<Vec<PathBuf>>,
    sandbox_memory_budget_mb: Option<u64>,
    sandbox_disk_mb: Option<u64>,
    sandbox_disk_files: Option<u64>,
    turn_max_event_mb: Option<usize>,
    turn_max_events: Option<usize>,
    session_max_events: Option<i64>,
    session_max_event_mb: Option<u64>,
    /// Deploy the bundled `hello-agent` on a store without it (true).
    example_agent: Option<bool>,
    /// Syscalls agents may ask back from the sandbox filter.
    #[serde(default)]
    sandbox_grant_syscalls: Vec<String>,
    idle_timeout_ms: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    /// The wait before a failed queue item's first retry, doubled for each one after (5000).
    queue_retry_base_ms: Option<u64>,
    /// Log each tool call's arguments and result too (false).
    tool_log_payloads: Option<bool>,
    credential_key: Option<String>,
    /// Where workspace snapshots go: `s3://<bucket>[/<prefix>]` or an absolute folder.
    snapshot_store: Option<String>,
    /// The secret of a cluster's coordinators and runners; set on `ash start`, the server is a
    /// coordinator.
    cluster_token: Option<String>,
    /// A runner not heard from for this long is declared dead.
    runner_ttl_ms: Option<u64>,
    /// `ash runner`: the coordinators to join through, and the URL they reach it at.
    coordinators: Option<Vec<String>>,
    runner_address: Option<String>,
    #[serde(default)]
    plugins: Vec<PluginConfig>,
    storage: Option<StorageSettings>,
}

/// `[storage]`: a storage plugin holds the records, with its grants.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSettings {
    /// The plugin's folder (holding `plugin.toml`).
    plugin: PathBuf,
    sha256: Option<String>,
    #[serde(default)]
    config: std::collections::BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    outbound: Vec<String>,
}

impl FileSettings {
    /// The data dir: `ASH_DATA_DIR`, else the file's, else the default.
    pub(crate) fn data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(env("ASH_DATA_DIR")?
            .or(self.data_dir.clone())
            .unwrap_or_else(default_data_dir))
    }

    /// Where records go: a database URL given outside the file (`url`), else the file's
    /// `database_url` or `[storage]` plugin (not both), else `<data dir>/ash.db`.
    pub(crate) fn storage(
        &self,
        url: Option<String>,
        data_dir: &Path,
    ) -> anyhow::Result<StorageConfig> {
        let database = |url: String| {
            Database::parse(&url)
                .map(StorageConfig::Database)
                .map_err(|e| anyhow::anyhow!("database URL: {e}"))
        };
        if self.database_url.is_some() && self.storage.is_some() {
            bail!("the settings file has both database_url and [storage]: records go to one store, so keep one of them");
        }
        match (url.or(self.database_url.clone()), &self.storage) {
            (Some(url), _) => database(url),
            (None, Some(storage)) => Ok(StorageConfig::Plugin(PluginConfig {
                path: storage.plugin.clone(),
                sha256: storage.sha256.clone(),
                config: storage.config.clone(),
                data_dir: storage.data_dir.clone(),
                outbound: storage.outbound.clone(),
                on_failure: None,
            })),
            (None, None) => Ok(StorageConfig::Database(Database::Sqlite(
                data_dir.join("ash.db"),
            ))),
        }
    }
}

/// Largest settings file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

fn env<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(None),
    }
}

pub(crate) fn read_settings(path: Option<PathBuf>) -> anyhow::Result<FileSettings> {
    let Some(path) = path.or_else(|| std::env::var_os("ASH_CONFIG").map(PathBuf::from)) else {
        return Ok(FileSettings::default());
    };
    let size = std::fs::metadata(&path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        bail!(
            "settings file {} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)?;
    toml::from_str(&text).with_context(|| format!("invalid settings file {}", path.display()))
}

fn find_bwrap(configured: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured {
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| candidate.is_file())
        .context(
            "bwrap not found: install it with apt-get install bubblewrap (or run scripts/setup.sh)",
        )
}

/// The bundled example agent, deployed on first start.
fn hello_agent() -> SeedAgent {
    SeedAgent {
        name: "hello-agent".into(),
        files: vec![
            (
                "CLAUDE.md".into(),
                include_bytes!("../../../examples/hello-agent/CLAUDE.md").to_vec(),
            ),
            (
                "ash.toml".into(),
                include_bytes!("../../../examples/hello-agent/ash.toml").to_vec(),
            ),
        ],
    }
}

/// `ash runner`: a node of a cluster that holds sandboxes and serves coordinators only.
#[derive(clap::Args)]
pub struct RunnerArgs {
    #[command(flatten)]
    start: StartArgs,
    /// Coordinator URLs to join through, tried in order (comma-separated) [env: ASH_COORDINATORS]
    #[arg(long, value_delimiter = ',')]
    coordinator: Vec<String>,
    /// The URL coordinators reach this runner at [env: ASH_RUNNER_ADDRESS] [default: http://<host>:<port> as bound]
    #[arg(long)]
    advertise: Option<String>,
}

pub async fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    let telemetry = crate::telemetry::init("server")?;
    let served = match config(args) {
        Ok((config, _)) => serve(config).await,
        Err(e) => Err(e),
    };
    telemetry.shutdown().await;
    served
}

pub async fn run_runner(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    let telemetry = crate::telemetry::init("runner")?;
    let served = runner(args).await;
    telemetry.shutdown().await;
    served
}

async fn runner(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    let (mut config, file) = config(args.start)?;
    let Some(cluster) = config.cluster.as_mut() else {
        bail!("a runner needs the cluster's token: set ASH_CLUSTER_TOKEN (or cluster_token in the settings file) to the coordinators' token");
    };
    let mut coordinators = args.coordinator;
    if coordinators.is_empty() {
        coordinators = match env::<String>("ASH_COORDINATORS")? {
            Some(list) => list
                .split(',')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            None => file.coordinators.unwrap_or_default(),
        };
    }
    if coordinators.is_empty() {
        bail!("a runner joins through a coordinator: give --coordinator http://<coordinator>:<port> (or ASH_COORDINATORS)");
    }
    let coordinators = coordinators
        .into_iter()
        .map(|c| c.trim_end_matches('/').to_owned())
        .collect();
    let address = args
        .advertise
        .or(env("ASH_RUNNER_ADDRESS")?)
        .or(file.runner_address)
        .unwrap_or_default();
    cluster.role = ash_server::ClusterRole::Runner {
        coordinators,
        address: address.trim_end_matches('/').to_owned(),
    };
    serve(config).await
}

/// The server's settings from flags, env and the settings file (returned for what only a
/// runner reads); with a cluster token, a coordinator's.
fn config(args: StartArgs) -> anyhow::Result<(ServerConfig, FileSettings)> {
    let file = read_settings(args.config)?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => file.data_dir()?,
    };
    let storage = file.storage(args.database_url.or(env("ASH_DATABASE_URL")?), &data_dir)?;
    let bridge = bridge_path(file.bridge_bin.clone())?;
    let defaults = Limits::default();
    const MIB: u64 = 1024 * 1024;
    let limits = Limits {
        memory_bytes: env::<u64>("ASH_SANDBOX_MEMORY_MB")?
            .or(file.sandbox_memory_mb)
            .map_or(defaults.memory_bytes, |mb| mb * MIB),
        max_processes: env("ASH_SANDBOX_MAX_PROCESSES")?
            .or(file.sandbox_max_processes)
            .unwrap_or(defaults.max_processes),
        cpu_percent: env("ASH_SANDBOX_CPU_PERCENT")?
            .or(file.sandbox_cpu_percent)
            .unwrap_or(defaults.cpu_percent),
        file_size_bytes: env::<u64>("ASH_SANDBOX_FILE_SIZE_MB")?
            .or(file.sandbox_file_size_mb)
            .map_or(defaults.file_size_bytes, |mb| mb * MIB),
        open_files: env("ASH_SANDBOX_OPEN_FILES")?
            .or(file.sandbox_open_files)
            .unwrap_or(defaults.open_files),
    };
    let idle_ms: u64 = env("ASH_IDLE_TIMEOUT_MS")?
        .or(file.idle_timeout_ms)
        .unwrap_or(30 * 60 * 1000);
    let runtime = RuntimeConfig {
        limits,
        idle_timeout: std::time::Duration::from_millis(idle_ms.max(1)),
        shutdown_grace: std::time::Duration::from_secs(
            env("ASH_SHUTDOWN_GRACE_SECS")?
                .or(file.shutdown_grace_secs)
                .unwrap_or(10),
        ),
        queue_retry_base: std::time::Duration::from_millis(
            env("ASH_QUEUE_RETRY_BASE_MS")?
                .or(file.queue_retry_base_ms)
                .unwrap_or(5000),
        ),
        tool_log_payloads: env("ASH_TOOL_LOG_PAYLOADS")?
            .or(file.tool_log_payloads)
            .unwrap_or(false),
        max_sandboxes: args
            .max_sandboxes
            .or(env("ASH_MAX_SANDBOXES")?)
            .or(file.max_sandboxes)
            .unwrap_or(1000),
        bwrap: find_bwrap(env("ASH_BWRAP")?.or(file.bwrap.clone()))?,
        bridge,
        sandbox_uids: sandbox_uids(file.sandbox_uids.clone())?,
        memory_budget: env::<u64>("ASH_SANDBOX_MEMORY_BUDGET_MB")?
            .or(file.sandbox_memory_budget_mb)
            .map_or_else(ash_server::default_memory_budget, |mb| mb * MIB),
        disk_quota: disk_quota(file.sandbox_disk_mb, file.sandbox_disk_files)?,
        event_caps: {
            let defaults = ash_server::EventCaps::default();
            ash_server::EventCaps {
                turn_bytes: env::<usize>("ASH_TURN_MAX_EVENT_MB")?
                    .or(file.turn_max_event_mb)
                    .map_or(defaults.turn_bytes, |mb| mb << 20),
                turn_events: env("ASH_TURN_MAX_EVENTS")?
                    .or(file.turn_max_events)
                    .unwrap_or(defaults.turn_events),
                session_events: env("ASH_SESSION_MAX_EVENTS")?
                    .or(file.session_max_events)
                    .unwrap_or(defaults.session_events),
                session_bytes: env::<u64>("ASH_SESSION_MAX_EVENT_MB")?
                    .or(file.session_max_event_mb)
                    .map_or(defaults.session_bytes, |mb| mb * MIB),
            }
        },
        sandbox_grant_syscalls: grant_syscalls(file.sandbox_grant_syscalls.clone()),
        data_dir,
        runner: None,
        cluster: false,
    };
    let config = ServerConfig {
        host: args
            .host
            .or(env("ASH_HOST")?)
            .or(file.host.clone())
            .unwrap_or_else(|| "127.0.0.1".into()),
        port: args.port.or(env("ASH_PORT")?).or(file.port).unwrap_or(4100),
        api_key: env("ASH_API_KEY")?,
        deploy_roots: deploy_roots(file.deploy_roots.clone()),
        seed_agents: if args.no_example_agent
            || env::<bool>("ASH_EXAMPLE_AGENT")?.or(file.example_agent) == Some(false)
        {
            Vec::new()
        } else {
            vec![hello_agent()]
        },
        plugins: file.plugins.clone(),
        credential_key: env("ASH_CREDENTIAL_KEY")?.or(file.credential_key.clone()),
        snapshot_store: env("ASH_SNAPSHOT_STORE")?.or(file.snapshot_store.clone()),
        cluster: match env::<String>("ASH_CLUSTER_TOKEN")?.or(file.cluster_token.clone()) {
            Some(token) => Some(ash_server::ClusterConfig {
                token,
                role: ash_server::ClusterRole::Coordinator {
                    ttl: std::time::Duration::from_millis(
                        env("ASH_RUNNER_TTL_MS")?
                            .or(file.runner_ttl_ms)
                            .unwrap_or(10_000)
                            .max(100),
                    ),
                },
            }),
            None => None,
        },
        storage,
        runtime,
    };
    Ok((config, file))
}

async fn serve(config: ServerConfig) -> anyhow::Result<ExitCode> {
    let data_dir = config.runtime.data_dir.clone();
    let server = Server::prepare(config).await?;
    // Registered before "listening" is printed: a SIGTERM from then on is a graceful stop.
    let shutdown = shutdown_signal()?;
    let mut notes = String::new();
    if let Some(key) = &server.new_api_key {
        let file = data_dir.join("initial-api-key");
        notes += &format!(
            "ash: generated an API key; it is shown once and kept in {} (mode 0600):\n  {key}\n",
            file.display()
        );
    }
    notes += &format!(
        "ash: listening on http://{}\nash: data in {}\n",
        server.local_addr(),
        data_dir.display()
    );
    // A closed stdout (the operator's pipe went away) must not take the server down.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), notes.as_bytes());
    server.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `ASH_DEPLOY_ROOTS` (`:`-separated), else the settings file's `deploy_roots`, else the
/// examples folder of the source tree this binary was built from, when it is still there.
fn deploy_roots(configured: Option<Vec<PathBuf>>) -> Vec<PathBuf> {
    if let Some(roots) = std::env::var_os("ASH_DEPLOY_ROOTS") {
        return std::env::split_paths(&roots)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    configured.unwrap_or_else(|| {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        examples.is_dir().then_some(examples).into_iter().collect()
    })
}

/// The size of each workspace's filesystem: `ASH_SANDBOX_DISK_MB` / `sandbox_disk_mb` (512,
/// at most what a fork or snapshot copies; 0 turns quotas off) and `ASH_SANDBOX_DISK_FILES` /
/// `sandbox_disk_files` (100,000).
fn disk_quota(
    mb: Option<u64>,
    files: Option<u64>,
) -> anyhow::Result<Option<ash_server::disk::Quota>> {
    let mb = env::<u64>("ASH_SANDBOX_DISK_MB")?.or(mb).unwrap_or(512);
    let files = env::<u64>("ASH_SANDBOX_DISK_FILES")?
        .or(files)
        .unwrap_or(100_000);
    if mb == 0 {
        return Ok(None);
    }
    // A workspace larger than a fork or snapshot copies (512 MiB) could not be paused.
    if !(16..=512).contains(&mb) || !(1_000..=1_000_000).contains(&files) {
        bail!("sandbox_disk_mb must be 0 (off) or 16-512 (a fork or snapshot copies at most 512 MiB), and sandbox_disk_files 1000-1000000");
    }
    Ok(Some(ash_server::disk::Quota {
        bytes: mb << 20,
        inodes: files,
    }))
}

/// `ASH_SANDBOX_GRANT_SYSCALLS` (`,`-separated), else the settings file's
/// `sandbox_grant_syscalls`.
fn grant_syscalls(configured: Vec<String>) -> Vec<String> {
    match std::env::var("ASH_SANDBOX_GRANT_SYSCALLS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(_) => configured,
    }
}

/// `ASH_SANDBOX_UIDS`, else the settings file's `sandbox_uids`.
fn sandbox_uids(configured: Option<String>) -> anyhow::Result<Option<ash_server::UidRange>> {
    env::<String>("ASH_SANDBOX_UIDS")?
        .or(configured)
        .map(|text| {
            text.parse()
                .map_err(|e: String| anyhow::anyhow!("sandbox_uids: {e}"))
        })
        .transpose()
}

/// `ASH_BRIDGE_BIN`, else the settings file's `bridge_bin`, else `ash-bridge` beside `ash`.
fn bridge_path(configured: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match env::<PathBuf>("ASH_BRIDGE_BIN")?.or(configured) {
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()?.with_file_name("ash-bridge")),
    }
}

/// `ash doctor`: the host checks, with the settings `ash start` would use; exit 1 when
/// sandboxes cannot run at all.
pub fn doctor(args: StartArgs) -> anyhow::Result<ExitCode> {
    use ash_server::doctor::{check, Verdict};
    let file = read_settings(args.config)?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => file.data_dir()?,
    };
    let bridge = bridge_path(file.bridge_bin)?;
    let bwrap =
        find_bwrap(env("ASH_BWRAP")?.or(file.bwrap)).unwrap_or_else(|_| PathBuf::from("bwrap"));
    let users = ash_server::SandboxUsers::for_this_process(sandbox_uids(file.sandbox_uids)?);
    let quotas = match disk_quota(file.sandbox_disk_mb, file.sandbox_disk_files)? {
        Some(quota) => ash_server::disk::support().map(|()| quota),
        None => Err("turned off (sandbox_disk_mb = 0)".into()),
    };
    let findings = check(
        &bwrap,
        &bridge,
        users.as_ref().map_err(String::as_str),
        quotas,
        &data_dir,
    );
    for finding in &findings {
        let label = match finding.verdict {
            Verdict::Ok => "ok",
            Verdict::Degraded => "degraded",
            Verdict::Broken => "broken",
        };
        println!("{label:<9}{}: {}", finding.what, finding.detail);
        if !finding.fix.is_empty() {
            println!("{:<9}fix: {}", "", finding.fix);
        }
    }
    let broken = findings.iter().any(|f| f.verdict == Verdict::Broken);
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Resolves at SIGTERM or SIGINT; both are caught from the moment this returns.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: stopping sandboxes");
    })
}
