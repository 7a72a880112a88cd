//! `agentmesh-mock-llm`: serves the fake provider until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_mock_llm::{MockConfig, MockLlm};
use clap::Parser;

/// A scriptable OpenAI-compatible fake LLM provider.
#[derive(Parser)]
#[command(name = "agentmesh-mock-llm", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AGENTMESH_MOCK_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// JSON script: {"model": "...", "rules": [...]}.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = agentmesh_telemetry::init("mock-llm");
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agentmesh-mock-llm: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.script {
        Some(path) => MockConfig::from_file(path)?,
        None => MockConfig::default(),
    };
    let mock = MockLlm::start(args.listen, config).await?;
    tracing::info!(base_url = %mock.base_url(), "mock llm ready");
    shutdown_signal().await;
    tracing::info!("mock llm stopping");
    mock.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
