//! `agentmesh-search`: the search agent as its own process.

/// A faster allocator for a server that allocates per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use agentmesh_agent_runtime::{
    connect_state_from_env, listen_addr_from_env, llm_from_env, shutdown_signal, AgentContext,
    Peers,
};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("agentmesh-search: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let _telemetry = agentmesh_telemetry::init("agentmesh-search");
    let addr = listen_addr_from_env(agentmesh_search::DEFAULT_LISTEN)?;
    let llm = llm_from_env()?;
    let state = connect_state_from_env().await?;
    agentmesh_agent_runtime::serve_metrics_from_env(&state).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let ctx = AgentContext {
        state,
        llm,
        peers: Peers::default(),
    };
    agentmesh_search::serve(ctx, listener, shutdown_signal()).await
}
