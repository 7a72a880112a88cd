//! agentmesh-gateway: the OpenAI-compatible HTTP front of agentmesh.
//!
//! Checks API keys, rate limits and budgets, then routes each request over gRPC to
//! the chat, search or data agent. Every error, including axum's own rejections,
//! answers in the OpenAI shape `{"error": {"message", "type", "code", "param"}}`.

mod agents;
mod app;
mod auth;
mod body;
mod chat;
mod config;
mod error;
mod keys;
mod ledger;
mod limits;
mod metrics;
mod openapi;
mod routes;

pub use config::{AgentEndpoints, GatewayConfig};
pub use error::ApiError;
pub use keys::{bootstrap_admin_key, generate_key};

use agentmesh_state::State;
use axum::serve::ListenerExt;
use std::future::{Future, IntoFuture};

/// How long [`ensure_admin_key`] waits between attempts while the database is down.
const BOOTSTRAP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// [`bootstrap_admin_key`], but a database that cannot be reached does not stop the
/// start: the attempt is repeated in the background until it succeeds (the gateway
/// serves degraded meanwhile, see [`State::start`]). A generated secret is passed to
/// `show` once, whenever it is created. Other failures are returned.
pub async fn ensure_admin_key(
    state: &State,
    config: &GatewayConfig,
    show: impl Fn(String) + Send + 'static,
) -> anyhow::Result<()> {
    match bootstrap_admin_key(state, config).await {
        Ok(generated) => {
            if let Some(secret) = generated {
                show(secret);
            }
            return Ok(());
        }
        Err(error) if !storage_unavailable(&error) => return Err(error),
        Err(error) => {
            tracing::warn!(%error, "admin key not checked yet: database unavailable, retrying");
        }
    }
    let (state, config) = (state.clone(), config.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(BOOTSTRAP_RETRY).await;
            match bootstrap_admin_key(&state, &config).await {
                Ok(generated) => {
                    tracing::info!("admin key checked");
                    if let Some(secret) = generated {
                        show(secret);
                    }
                    return;
                }
                Err(error) if storage_unavailable(&error) => {
                    tracing::debug!(%error, "admin key check still waiting for the database");
                }
                Err(error) => {
                    tracing::error!(%error, "admin key check failed");
                    return;
                }
            }
        }
    });
    Ok(())
}

fn storage_unavailable(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<agentmesh_state::StateError>(),
        Some(agentmesh_state::StateError::Unavailable { .. })
    )
}

/// The gateway's routes over `state`, calling the agents of `config`.
pub fn router(config: GatewayConfig, state: State) -> anyhow::Result<axum::Router> {
    let app = app::AppState::new(config, state)?;
    Ok(app::build(app))
}

/// Longest the exit waits for queued usage rows to be written.
const LEDGER_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `shutdown` resolves; then `/ready` turns 503 at once, new connections
/// stop (after `config.shutdown_delay`, 0 by default) and in-flight requests (streams
/// included) run to their end, for at most `config.drain`; whatever still runs then is
/// cut, the queued usage rows are written and the function returns.
pub async fn serve(
    config: GatewayConfig,
    state: State,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (drain, delay) = (config.drain, config.shutdown_delay);
    let app = app::AppState::new(config, state)?;
    let router = app::build(app.clone());
    let app_for_flush = app.clone();
    let address = listener.local_addr()?;
    tracing::info!(%address, "gateway listening");

    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let draining = async move {
        shutdown.await;
        app.start_draining();
        tracing::info!(drain_seconds = drain.as_secs(), "gateway draining");
        tokio::time::sleep(delay).await;
        let _ = draining_tx.send(true);
    };
    let server = axum::serve(listener.tap_io(agentmesh_telemetry::net::no_delay), router)
        .with_graceful_shutdown(draining)
        .into_future();
    let drain_over = async move {
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served?,
        () = drain_over => tracing::warn!("drain period over, closing remaining requests"),
    }
    if !app_for_flush.ledger.flush(LEDGER_FLUSH).await {
        tracing::warn!("usage ledger not fully written before exit");
    }
    tracing::info!("gateway stopped");
    Ok(())
}
