//! Metrics of an agent process: its gRPC calls (counted by the server's layer, see
//! `agentmesh_telemetry::grpc`) served on a small HTTP port beside gRPC.

use agentmesh_state::State;
use anyhow::Context;
use std::net::SocketAddr;

/// The variable naming the metrics address (`host:port`); unset or empty: no server.
pub const METRICS_LISTEN_ENV: &str = "AGENTMESH_METRICS_LISTEN";

/// Serves `GET /metrics` on `AGENTMESH_METRICS_LISTEN` for the life of the process and
/// samples `state`'s degraded modes; returns the bound address, None when unset.
/// In `agentmesh up` the gateway's `/metrics` already shows every service.
pub async fn serve_metrics_from_env(state: &State) -> anyhow::Result<Option<SocketAddr>> {
    agentmesh_telemetry::metrics::install();
    agentmesh_telemetry::grpc::describe();
    agentmesh_state::metrics::spawn_sampler(state);
    let raw = std::env::var(METRICS_LISTEN_ENV).unwrap_or_default();
    if raw.trim().is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = raw
        .trim()
        .parse()
        .with_context(|| format!("{METRICS_LISTEN_ENV} {raw:?} is not host:port"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {METRICS_LISTEN_ENV}={addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "metrics listening");
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(error) = agentmesh_telemetry::metrics::serve(listener, forever).await {
            tracing::warn!(%error, "metrics server stopped");
        }
    });
    Ok(Some(bound))
}
