//! The `agentmesh` command: `up` runs the whole system in one process; the
//! other commands are HTTP clients of a running gateway.

mod batch;
mod client;
mod commands;
mod eval;
mod model;
mod probe;
mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use up::{start, Running, UpOptions};

#[derive(Debug, Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "Run and use a team of LLM agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where client commands send requests, and with which key.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Gateway URL.
    #[arg(
        long,
        env = "AGENTMESH_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key; defaults to the admin key saved by `agentmesh up` in the data directory.
    #[arg(long, env = "AGENTMESH_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Data directory of a local `agentmesh up` (to find its saved admin key).
    #[arg(
        long,
        env = "AGENTMESH_DATA_DIR",
        default_value = ".agentmesh",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and all agents in one process (embedded defaults).
    Up(UpOptions),
    /// Manage API keys (admin).
    Keys {
        #[command(subcommand)]
        command: commands::KeysCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ingest, list, delete and search documents.
    Docs {
        #[command(subcommand)]
        command: commands::DocsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Load and query CSV datasets.
    Data {
        #[command(subcommand)]
        command: commands::DataCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask an agent a question and stream the answer.
    Chat(commands::ChatArgs),
    /// Run many agent tasks from a JSONL file (OpenAI batch format).
    Batch {
        #[command(subcommand)]
        command: batch::BatchCommand,
    },
    /// Measure agents against questions with known answers.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Exit 0 when a service is healthy: `http://host:port/health` or `grpc://host:port`.
    Probe { url: String },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(options) => up::run(options).await,
        Command::Keys { command, client } => commands::keys(command, client).await,
        Command::Docs { command, client } => commands::docs(command, client).await,
        Command::Data { command, client } => commands::data(command, client).await,
        Command::Chat(args) => commands::chat(args).await,
        Command::Batch { command } => batch::batch(command).await,
        Command::Eval { command } => eval::run(command).await,
        Command::Probe { url } => probe::probe(&url).await,
    }
}
