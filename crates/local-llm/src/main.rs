//! `agentmesh-local-llm`: the local GGUF model as an OpenAI-compatible provider.

use agentmesh_local_llm::{default_model_path, LocalModel, LocalOptions};
use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Serve a local GGUF model over the OpenAI chat completions API")]
struct Args {
    /// GGUF file; default: AGENTMESH_LOCAL_MODEL or the file scripts/fetch-model.sh placed.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, env = "AGENTMESH_LOCAL_LISTEN", default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    agentmesh_local_llm::prefer_fast_weights();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry = agentmesh_telemetry::init("agentmesh-local-llm");
    let path = args.model.or_else(default_model_path).context(
        "no model file: pass --model, set AGENTMESH_LOCAL_MODEL or run scripts/fetch-model.sh",
    )?;
    let model = LocalModel::load(&path, LocalOptions::default())?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(model = model.model_name(), addr = %listener.local_addr()?, "serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    agentmesh_local_llm::server::serve(model, listener, shutdown).await?;
    Ok(())
}
