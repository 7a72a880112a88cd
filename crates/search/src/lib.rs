//! The search agent: document ingestion, full-text ranking, cited answers.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod answer;
pub mod chunk;
pub mod embeddings;
pub mod front_matter;
pub mod ingest;
pub mod metrics;
pub mod rank;
mod service;

pub use embeddings::SearchConfig;
pub use service::{SearchAgent, AGENT_NAME, DEFAULT_TOP_K, MAX_TOP_K};

use agentmesh_agent_runtime::{serve_grpc, AgentContext};
use agentmesh_proto::v1::agent_server::AgentServer;
use agentmesh_proto::v1::search_server::SearchServer;
use std::future::Future;
use tokio::net::TcpListener;

/// Default gRPC address of the search agent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// Serves `agentmesh.v1.Agent` and `agentmesh.v1.Search` on `listener` until `shutdown`,
/// configured from the environment ([`SearchConfig::from_env`]).
pub async fn serve(
    ctx: AgentContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = SearchConfig::from_env()?;
    serve_with(ctx, &config, listener, shutdown).await
}

/// [`serve`] with a given configuration.
pub async fn serve_with(
    ctx: AgentContext,
    config: &SearchConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics::describe();
    if let Some(model) = &config.embeddings_model {
        embeddings::check_model(&ctx.llm, model).await?;
        tracing::info!(%model, "search blends vector similarity into full-text ranking");
    }
    let agent = SearchAgent::with_config(ctx, config);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(AgentServer::new(agent.clone()));
    let search = SearchServer::new(agent).max_decoding_message_size(4 * ingest::MAX_TEXT_BYTES);
    routes.add_service(search);
    let served = ["agentmesh.v1.Agent", "agentmesh.v1.Search"];
    serve_grpc(AGENT_NAME, listener, routes.routes(), &served, shutdown).await
}
