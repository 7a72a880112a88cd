//! The chat agent: conversation memory, other agents as tools.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod memory;
mod service;
pub mod tools;
pub mod turns;

pub use service::{ChatAgent, AGENT_NAME, MAX_TOOL_ROUNDS};

use agentmesh_agent_runtime::{serve_grpc, AgentContext};
use agentmesh_proto::v1::agent_server::AgentServer;
use std::future::Future;
use tokio::net::TcpListener;

/// Default gRPC address of the chat agent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_SEARCH_URL: &str = "http://127.0.0.1:50052";
pub const DEFAULT_DATA_URL: &str = "http://127.0.0.1:50053";

/// Serves `agentmesh.v1.Agent` on `listener` until `shutdown`.
pub async fn serve(
    ctx: AgentContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let agent = ChatAgent::new(ctx)?;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(AgentServer::new(agent));
    serve_grpc(
        AGENT_NAME,
        listener,
        routes.routes(),
        &["agentmesh.v1.Agent"],
        shutdown,
    )
    .await
}
