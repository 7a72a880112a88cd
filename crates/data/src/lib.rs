//! The data agent: CSV datasets and checked read-only SQL.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod ask;
pub mod csv_load;
pub mod dump_load;
pub mod error;
pub mod render;
mod service;
pub mod sql_check;

pub use error::DataError;
pub use service::{DataAgent, AGENT_NAME, MAX_CSV_BYTES, MAX_ROWS, QUERY_TIMEOUT};

use agentmesh_agent_runtime::{serve_grpc, AgentContext};
use agentmesh_proto::v1::agent_server::AgentServer;
use agentmesh_proto::v1::data_server::DataServer;
use std::future::Future;
use tokio::net::TcpListener;

/// Default gRPC address of the data agent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";

/// Serves `agentmesh.v1.Agent` and `agentmesh.v1.Data` on `listener` until `shutdown`.
pub async fn serve(
    ctx: AgentContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let agent = DataAgent::new(ctx);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(AgentServer::new(agent.clone()));
    let data = DataServer::new(agent).max_decoding_message_size(MAX_CSV_BYTES + 64 * 1024);
    routes.add_service(data);
    let served = ["agentmesh.v1.Agent", "agentmesh.v1.Data"];
    serve_grpc(AGENT_NAME, listener, routes.routes(), &served, shutdown).await
}
