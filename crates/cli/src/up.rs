//! `agentmesh up`: the gateway and the three agents in one process.
//!
//! Each agent is still a real gRPC server on its own loopback port and the
//! gateway reaches it over gRPC, so the embedded mode runs the same code path
//! as a cluster. State is SQLite + memory unless `AGENTMESH_DATABASE_URL` /
//! `AGENTMESH_REDIS_URL` point elsewhere, so two `up` processes sharing one
//! Postgres and one Redis behave as two replicas of every service.

use agentmesh_agent_runtime::{AgentContext, Peers};
use agentmesh_gateway::{AgentEndpoints, GatewayConfig};
use agentmesh_llm::{LlmClient, LlmConfig};
use agentmesh_local_llm::LocalOptions;
use agentmesh_mock_llm::{MockConfig, MockLlm};
use agentmesh_state::{State, StateConfig};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Time to the first token of the local model: a long prompt on a slow CPU.
const LOCAL_FIRST_TOKEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const LOCAL_TOTAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct UpOptions {
    /// Gateway HTTP address.
    #[arg(long, env = "AGENTMESH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Embedded mode's files (SQLite database, saved admin key).
    #[arg(long, env = "AGENTMESH_DATA_DIR", default_value = ".agentmesh")]
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; default: SQLite in the data directory.
    #[arg(long, env = "AGENTMESH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL; unset: limits and caches in this process.
    #[arg(long, env = "AGENTMESH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "AGENTMESH_REDIS_PREFIX", default_value = "agentmesh:")]
    pub redis_prefix: String,
    /// The model used when no provider is configured: `local` runs SmolLM2-135M-Instruct
    /// (or AGENTMESH_LOCAL_MODEL) in this process; `mock` answers canned text, instantly.
    #[arg(long, env = "AGENTMESH_LLM", default_value = "local",
        value_parser = ["local", "mock"])]
    pub llm: String,
    /// Rules file for the built-in mock LLM (with `--llm mock`).
    #[arg(long, env = "AGENTMESH_MOCK_SCRIPT")]
    pub mock_script: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
}

/// A running system; dropping it does not stop it, call [`Running::shutdown`].
pub struct Running {
    pub gateway_url: String,
    /// The admin key generated at this start, if one was.
    pub new_admin_key: Option<String>,
    pub llm_description: String,
    pub agents: AgentEndpoints,
    /// Stops the gateway alone, so that it drains while the agents still serve.
    gateway_stop: CancellationToken,
    gateway: JoinHandle<anyhow::Result<()>>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    provider: Option<BuiltInProvider>,
}

/// A provider this process runs itself when none is configured.
enum BuiltInProvider {
    Mock(MockLlm),
    Local(JoinHandle<std::io::Result<()>>),
}

impl Running {
    /// The built-in mock provider, when this system runs on it (tests read its request log).
    pub fn mock(&self) -> Option<&MockLlm> {
        match &self.provider {
            Some(BuiltInProvider::Mock(mock)) => Some(mock),
            _ => None,
        }
    }

    /// Stops the gateway first (its `/ready` turns 503, its in-flight streams finish
    /// within `AGENTMESH_DRAIN_SECONDS`, their tool calls still reach the agents), then
    /// the agents, then the built-in provider.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.gateway_stop.cancel();
        let gateway = self.gateway.await.context("gateway task panicked");
        self.token.cancel();
        gateway??;
        for task in self.tasks {
            task.await.context("service task panicked")??;
        }
        match self.provider {
            Some(BuiltInProvider::Mock(mock)) => mock.shutdown().await,
            Some(BuiltInProvider::Local(server)) => {
                server.await.context("local model server panicked")??;
            }
            None => {}
        }
        Ok(())
    }
}

pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    let _telemetry = agentmesh_telemetry::init("agentmesh");
    let running = start(&options).await?;
    if !options.quiet {
        print_banner(&options, &running);
    }

    agentmesh_agent_runtime::shutdown_signal().await;
    if !options.quiet {
        println!("shutting down: draining requests");
    }
    running.shutdown().await
}

/// Starts every service and returns once all of them accept connections.
pub async fn start(options: &UpOptions) -> anyhow::Result<Running> {
    let state_config = state_config(options)?;
    let state = State::connect(&state_config)
        .await
        .with_context(|| format!("connecting state ({})", redact(&state_config.database_url)))?;
    step(
        options,
        &format!("state: {} + {}", state.db.backend(), state.hot.backend()),
    );

    let token = CancellationToken::new();
    let (llm, llm_description, provider) = llm_client(options, &token).await?;
    step(options, &format!("llm: {llm_description}"));

    let mut tasks = Vec::new();
    let agents = start_agents(&state, &llm, &token, &mut tasks).await?;
    step(options, "agents: chat, search and data serving gRPC");

    let mut config = GatewayConfig::from_env()?;
    config.agents = agents.clone();
    let new_admin_key = agentmesh_gateway::bootstrap_admin_key(&state, &config).await?;
    if let Some(key) = &new_admin_key {
        save_admin_key(&options.data_dir, key)?;
    }

    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding the gateway to {}", options.listen))?;
    let gateway_url = format!("http://{}", listener.local_addr()?);
    let gateway_stop = CancellationToken::new();
    let shutdown = gateway_stop.clone().cancelled_owned();
    let gateway = tokio::spawn(agentmesh_gateway::serve(config, state, listener, shutdown));
    step(options, &format!("gateway: {gateway_url}"));

    Ok(Running {
        gateway_url,
        new_admin_key,
        llm_description,
        agents,
        gateway_stop,
        gateway,
        token,
        tasks,
        provider,
    })
}

fn state_config(options: &UpOptions) -> anyhow::Result<StateConfig> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating data directory {}", options.data_dir.display()))?;
    let mut config = StateConfig::embedded(&options.data_dir);
    if let Some(url) = &options.database_url {
        config.database_url = url.clone();
    }
    config.redis_url = options.redis_url.clone().filter(|u| !u.is_empty());
    config.redis_prefix = options.redis_prefix.clone();
    Ok(config)
}

/// The configured provider; else the local model (the default) or the mock.
async fn llm_client(
    options: &UpOptions,
    token: &CancellationToken,
) -> anyhow::Result<(LlmClient, String, Option<BuiltInProvider>)> {
    if let Some(config) = LlmConfig::from_env()? {
        let description = format!("{} at {}", config.default_model, provider_urls(&config));
        return Ok((LlmClient::new(config)?, description, None));
    }
    if options.llm == "mock" {
        return mock_provider(options).await;
    }
    local_provider(options, token).await
}

async fn mock_provider(
    options: &UpOptions,
) -> anyhow::Result<(LlmClient, String, Option<BuiltInProvider>)> {
    let mock_config = match &options.mock_script {
        Some(path) => MockConfig::from_file(path)?,
        None => MockConfig::default(),
    };
    let mock = MockLlm::start(SocketAddr::from(([127, 0, 0, 1], 0)), mock_config).await?;
    let config = LlmConfig::single("mock", &mock.base_url(), "mock-llm");
    let description = format!("mock provider at {} (answers are canned)", mock.base_url());
    Ok((
        LlmClient::new(config)?,
        description,
        Some(BuiltInProvider::Mock(mock)),
    ))
}

/// Loads the local GGUF model (fetching the default one first if needed) and
/// serves it on a loopback port, so agents reach it like any provider.
async fn local_provider(
    options: &UpOptions,
    token: &CancellationToken,
) -> anyhow::Result<(LlmClient, String, Option<BuiltInProvider>)> {
    let path = match agentmesh_local_llm::default_model_path() {
        Some(path) => path,
        None => crate::model::fetch_default(&options.data_dir, options.quiet)?,
    };
    let model = tokio::task::spawn_blocking(move || {
        agentmesh_local_llm::LocalModel::load(&path, LocalOptions::default())
    })
    .await
    .context("loading the local model")??;
    let name = model.model_name().to_string();

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let base_url = format!("http://{}/v1", listener.local_addr()?);
    let stop = token.clone().cancelled_owned();
    let server = tokio::spawn(agentmesh_local_llm::server::serve(model, listener, stop));

    let mut config = LlmConfig::single("local", &base_url, &name);
    // A CPU model reads a long prompt slowly; remote-provider limits would cut it off.
    config.first_token_timeout = LOCAL_FIRST_TOKEN_TIMEOUT;
    config.total_timeout = LOCAL_TOTAL_TIMEOUT;
    config.idle_timeout = LOCAL_FIRST_TOKEN_TIMEOUT;
    let description = format!("{name} running in this process on the CPU (no API key needed)");
    Ok((
        LlmClient::new(config)?,
        description,
        Some(BuiltInProvider::Local(server)),
    ))
}

fn provider_urls(config: &LlmConfig) -> String {
    let urls: Vec<&str> = config
        .providers
        .iter()
        .map(|p| p.base_url.as_str())
        .collect();
    urls.join(", ")
}

async fn start_agents(
    state: &State,
    llm: &LlmClient,
    token: &CancellationToken,
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<AgentEndpoints> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let search_listener = TcpListener::bind(loopback).await?;
    let data_listener = TcpListener::bind(loopback).await?;
    let chat_listener = TcpListener::bind(loopback).await?;
    let endpoints = AgentEndpoints {
        chat: format!("http://{}", chat_listener.local_addr()?),
        search: format!("http://{}", search_listener.local_addr()?),
        data: format!("http://{}", data_listener.local_addr()?),
    };

    let plain = AgentContext {
        state: state.clone(),
        llm: llm.clone(),
        peers: Peers::default(),
    };
    let chat = AgentContext {
        peers: Peers {
            search: Some(endpoints.search.clone()),
            data: Some(endpoints.data.clone()),
        },
        ..plain.clone()
    };
    let stop = || token.clone().cancelled_owned();
    tasks.push(tokio::spawn(agentmesh_search::serve(
        plain.clone(),
        search_listener,
        stop(),
    )));
    tasks.push(tokio::spawn(agentmesh_data::serve(
        plain,
        data_listener,
        stop(),
    )));
    tasks.push(tokio::spawn(agentmesh_chat::serve(
        chat,
        chat_listener,
        stop(),
    )));
    Ok(endpoints)
}

/// Keeps the generated admin key where the CLI's client commands find it.
/// The file is readable by its owner only.
fn save_admin_key(data_dir: &Path, key: &str) -> anyhow::Result<()> {
    let path = data_dir.join("admin.key");
    std::fs::write(&path, format!("{key}\n"))
        .with_context(|| format!("saving the admin key to {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn step(options: &UpOptions, message: &str) {
    if !options.quiet {
        println!("  ok  {message}");
    }
}

fn print_banner(options: &UpOptions, running: &Running) {
    let url = &running.gateway_url;
    println!();
    println!("agentmesh is up");
    println!("  OpenAI base URL   {url}/v1");
    println!(
        "  agents (gRPC)     chat {}  search {}  data {}",
        running.agents.chat, running.agents.search, running.agents.data
    );
    println!("  health            {url}/health   ready {url}/ready   metrics {url}/metrics");
    match &running.new_admin_key {
        Some(key) => {
            println!("  admin key         {key}");
            println!(
                "                    (shown once; saved to {})",
                options.data_dir.join("admin.key").display()
            );
        }
        None => println!(
            "  admin key         as before (AGENTMESH_ADMIN_KEY or {})",
            options.data_dir.join("admin.key").display()
        ),
    }
    println!();
    println!("try:  agentmesh docs ingest ../shared/data/k8s-docs");
    println!("      agentmesh data load ../shared/data/northwind");
    println!("      agentmesh chat --agent search \"Why was my pod OOMKilled?\"");
    println!("press Ctrl-C to stop");
}

/// Hides the password of a database URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
