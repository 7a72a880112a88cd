//! `agentmesh-chat`: the chat agent as its own process.

/// A faster allocator for a server that allocates per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use agentmesh_agent_runtime::{
    connect_state_from_env, listen_addr_from_env, llm_from_env, shutdown_signal, AgentContext,
    Peers,
};
use agentmesh_chat::{DEFAULT_DATA_URL, DEFAULT_LISTEN, DEFAULT_SEARCH_URL};

fn peer(var: &str, default: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if url.trim().is_empty() => None,
        Ok(url) => Some(url),
        Err(_) => Some(default.to_string()),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("agentmesh-chat: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let _telemetry = agentmesh_telemetry::init("agentmesh-chat");
    let addr = listen_addr_from_env(DEFAULT_LISTEN)?;
    let llm = llm_from_env()?;
    let state = connect_state_from_env().await?;
    agentmesh_agent_runtime::serve_metrics_from_env(&state).await?;
    let peers = Peers {
        search: peer("AGENTMESH_SEARCH_URL", DEFAULT_SEARCH_URL),
        data: peer("AGENTMESH_DATA_URL", DEFAULT_DATA_URL),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let ctx = AgentContext { state, llm, peers };
    agentmesh_chat::serve(ctx, listener, shutdown_signal()).await
}
