//! `agentmesh-gateway`: serves the HTTP API until SIGTERM or ctrl-c.

/// A faster allocator for a server that allocates per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use agentmesh_gateway::{ensure_admin_key, serve, GatewayConfig};
use agentmesh_state::{State, StateConfig};
use anyhow::Context;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = agentmesh_telemetry::init("gateway");
    let config = GatewayConfig::from_env()?;
    let state_config = state_config()?;
    // A database that is down at start does not stop the gateway: it serves degraded
    // (503 for what needs the database, cached keys work) and connects when it can.
    let state = State::start(&state_config)
        .await
        .context("connecting state")?;
    ensure_admin_key(&state, &config, |secret| {
        println!("generated admin API key (shown once, store it now): {secret}");
    })
    .await?;

    let listen = env("AGENTMESH_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding AGENTMESH_LISTEN={listen}"))?;
    let served = serve(config, state, listener, shutdown_signal()).await;
    telemetry.shutdown();
    served
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `AGENTMESH_DATABASE_URL` and `AGENTMESH_REDIS_URL` (keys under
/// `AGENTMESH_REDIS_PREFIX`, default `agentmesh:`), else SQLite in the data dir.
fn state_config() -> anyhow::Result<StateConfig> {
    let data_dir = PathBuf::from(env("AGENTMESH_DATA_DIR").unwrap_or_else(|| ".agentmesh".into()));
    let mut config = match env("AGENTMESH_DATABASE_URL") {
        Some(url) => StateConfig {
            database_url: url,
            ..StateConfig::embedded(&data_dir)
        },
        None => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            StateConfig::embedded(&data_dir)
        }
    };
    config.redis_url = env("AGENTMESH_REDIS_URL");
    if let Some(prefix) = env("AGENTMESH_REDIS_PREFIX") {
        config.redis_prefix = prefix;
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "ctrl-c handler failed");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "SIGTERM handler failed");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
