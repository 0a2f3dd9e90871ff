//! `ash`: the Ash server and its command-line client in one binary.

mod bench;
mod commands;
mod mcp;
mod scaffold;
mod start;
mod storage;
mod telemetry;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ash",
    version,
    about = "Deploy AI agents and run each session in a sandbox"
)]
struct Cli {
    /// Server URL for client commands [env: ASH_SERVER_URL] [default: http://localhost:4100]
    #[arg(long, global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground (a coordinator when ASH_CLUSTER_TOKEN is set).
    Start(start::StartArgs),
    /// Run a runner of a cluster (holds sandboxes, serves coordinators only), or list runners.
    Runner(RunnerCli),
    /// Deploy (or redeploy) an agent folder; it must contain CLAUDE.md.
    Deploy(commands::DeployArgs),
    /// List, show or delete agents.
    #[command(subcommand)]
    Agent(commands::AgentCommand),
    /// Create, message, list and end sessions.
    #[command(subcommand)]
    Session(commands::SessionCommand),
    /// List, make or delete API keys.
    #[command(subcommand)]
    Key(commands::KeyCommand),
    /// List, show, store, call or delete the registry's tools.
    #[command(subcommand)]
    Tool(commands::ToolCommand),
    /// Chat with an agent: interactive without MESSAGE, one reply with it.
    Chat(commands::ChatArgs),
    /// Serve the server's MCP tools on stdio, for MCP clients that start a local process.
    Mcp,
    /// Show the server's health.
    Health,
    /// Measure a server (one it starts, or --server) against the performance budgets.
    Bench(bench::BenchArgs),
    /// Print the server's OpenAPI document (the same as GET /docs/json).
    Openapi,
    /// Check what this host can do for sandboxes, and how to fix what it cannot.
    Doctor(start::StartArgs),
    /// List the server's plugins, check a plugin folder, or start a new plugin.
    #[command(subcommand)]
    Plugin(commands::PluginCommand),
    /// Move records between storage backends (SQLite, Postgres, a storage plugin).
    #[command(subcommand)]
    Storage(storage::StorageCommand),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RunnerCli {
    #[command(subcommand)]
    command: Option<RunnerCommand>,
    #[command(flatten)]
    run: start::RunnerArgs,
}

#[derive(Subcommand)]
enum RunnerCommand {
    /// List the cluster's runners: state, load, heartbeat age (asks a coordinator).
    List,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    // A root server keeps its mounts (the workspaces' filesystems) in a mount namespace of its
    // own, before the runtime starts threads: they end with it, however it ends.
    // SAFETY: geteuid has no preconditions.
    let serves = matches!(
        cli.command,
        Command::Start(_) | Command::Runner(RunnerCli { command: None, .. })
    );
    if serves && unsafe { libc::geteuid() } == 0 {
        if let Err(e) = ash_server::disk::private_mounts() {
            eprintln!("ash: cannot make a mount namespace of its own: {e} (a root server needs CAP_SYS_ADMIN)");
            return std::process::ExitCode::FAILURE;
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Start(args) => start::run(args).await,
            Command::Runner(RunnerCli {
                command: Some(RunnerCommand::List),
                ..
            }) => commands::runner_list(cli.server).await,
            Command::Runner(RunnerCli { run, .. }) => start::run_runner(run).await,
            Command::Doctor(args) => start::doctor(args),
            Command::Storage(command) => storage::run(command).await,
            Command::Bench(args) => bench::run(cli.server, args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Plugin(commands::PluginCommand::Check { dir }) => commands::check_plugin(&dir),
            Command::Plugin(commands::PluginCommand::New { name, kind }) => {
                scaffold::new_plugin(&name, kind.into())
            }
            Command::Mcp => mcp::run(ash_cli::client::Client::discover(cli.server)?).await,
            Command::Openapi => {
                println!("{}", ash_server::openapi_document());
                Ok(std::process::ExitCode::SUCCESS)
            }
            command => commands::run(cli.server, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ash: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Each live sandbox and each SSE stream holds file descriptors (on the server and in `ash
/// bench`); the usual soft limit of 1024 would cap a node far below its capacity, so take the
/// hard limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !raised {
        tracing::warn!(
            "cannot raise the open-files limit: {}",
            std::io::Error::last_os_error()
        );
    }
}
