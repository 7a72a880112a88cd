//! Configuration of agent binaries from `AGENTMESH_*` environment variables.

use agentmesh_llm::{LlmClient, LlmConfig};
use agentmesh_state::{State, StateConfig};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Drain period of a stopping server when `AGENTMESH_DRAIN_SECONDS` is unset.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// The gRPC listen address: `AGENTMESH_GRPC_LISTEN` or the agent's default.
pub fn listen_addr_from_env(default: &str) -> anyhow::Result<SocketAddr> {
    let raw = std::env::var("AGENTMESH_GRPC_LISTEN").unwrap_or_else(|_| default.to_string());
    raw.parse()
        .with_context(|| format!("AGENTMESH_GRPC_LISTEN {raw:?} is not host:port"))
}

/// Connects to `AGENTMESH_DATABASE_URL` (default: SQLite in `AGENTMESH_DATA_DIR`) and
/// `AGENTMESH_REDIS_URL` (default: in-process); see [`State::start`] for a database
/// that is down at start.
pub async fn connect_state_from_env() -> anyhow::Result<State> {
    let data_dir = std::env::var("AGENTMESH_DATA_DIR").unwrap_or_else(|_| "./.agentmesh".into());
    let data_dir = PathBuf::from(data_dir);
    let mut config = StateConfig::embedded(&data_dir);
    match std::env::var("AGENTMESH_DATABASE_URL") {
        Ok(url) if !url.is_empty() => config.database_url = url,
        _ => std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?,
    }
    config.redis_url = std::env::var("AGENTMESH_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    // A database down at start does not stop the agent: calls that need it fail with
    // Unavailable until it is connected in the background.
    State::start(&config)
        .await
        .context("cannot connect to state storage")
}

/// The LLM client from `AGENTMESH_LLM_*`; an error says what to set when none is configured.
pub fn llm_from_env() -> anyhow::Result<LlmClient> {
    let config = LlmConfig::from_env().context("invalid AGENTMESH_LLM_* settings")?;
    let config = config.context(
        "no LLM provider configured: set AGENTMESH_LLM_BASE_URL (and AGENTMESH_LLM_MODEL, \
         AGENTMESH_LLM_API_KEY or AGENTMESH_LLM_API_KEY_FILE)",
    )?;
    LlmClient::new(config).context("invalid LLM configuration")
}

/// How long a stopping server lets in-flight calls run: `AGENTMESH_DRAIN_SECONDS`
/// (default 30).
pub fn drain_period_from_env() -> anyhow::Result<Duration> {
    match std::env::var("AGENTMESH_DRAIN_SECONDS") {
        Ok(raw) if !raw.trim().is_empty() => {
            let seconds = raw.trim().parse::<u64>().with_context(|| {
                format!("AGENTMESH_DRAIN_SECONDS must be a whole number of seconds, got {raw:?}")
            })?;
            Ok(Duration::from_secs(seconds))
        }
        _ => Ok(DEFAULT_DRAIN),
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = term => tracing::info!("sigterm received"),
    }
}
