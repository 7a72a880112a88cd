//! Measures prompt and generation speed and peak memory of the local model.
//!
//! `cargo run --release -p agentmesh-local-llm --example bench [-- path/to/model.gguf]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentmesh_llm::{ChatMessage, CompletionRequest, LlmEvent};
use agentmesh_local_llm::{default_model_path, LocalModel, LocalOptions};
use anyhow::{bail, Context};
use futures::StreamExt;

const ROUNDS: usize = 3;
const GENERATE: u32 = 128;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => default_model_path().context("no model: run scripts/fetch-model.sh")?,
    };
    let started = Instant::now();
    let model = LocalModel::load(&path, LocalOptions::default())?;
    println!("model      {} ({})", model.model_name(), path.display());
    println!("load       {:.2} s", started.elapsed().as_secs_f64());

    let prompt_speed = best(ROUNDS, || prompt_round(&model)).await?;
    println!("prompt     {prompt_speed:.1} tokens/s (best of {ROUNDS})");
    let generation_speed = best(ROUNDS, || generation_round(&model)).await?;
    println!("generation {generation_speed:.1} tokens/s (best of {ROUNDS}, {GENERATE} tokens)");
    println!(
        "peak RSS   {}",
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

async fn best<F, Fut>(rounds: usize, mut round: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut best = 0f64;
    for _ in 0..rounds {
        best = best.max(round().await?);
    }
    Ok(best)
}

/// A long prompt and one answer token: nearly all the time is prompt processing.
async fn prompt_round(model: &LocalModel) -> anyhow::Result<f64> {
    let text =
        "Kubernetes schedules containers onto nodes and restarts them when they fail. ".repeat(24);
    let started = Instant::now();
    let answer = model
        .complete(request(&format!("Summarise: {text}"), 1))
        .await?;
    Ok(f64::from(answer.usage.prompt_tokens) / started.elapsed().as_secs_f64())
}

/// Tokens per second after the first one arrived, over a fixed-length answer.
async fn generation_round(model: &LocalModel) -> anyhow::Result<f64> {
    let req = request(
        "Write a long story about a dragon who learns to bake bread.",
        GENERATE,
    );
    let mut stream = model.stream(req).await?;
    let mut first: Option<Instant> = None;
    let mut text = String::new();
    let mut completion = 0;
    while let Some(event) = stream.next().await {
        match event? {
            LlmEvent::Delta(piece) => {
                first.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            LlmEvent::Usage(usage) => completion = usage.completion_tokens,
            _ => {}
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    if completion < 2 || elapsed.is_zero() {
        bail!("the answer was too short to time: {text:?}");
    }
    println!(
        "  {completion} tokens: {:?}…",
        text.chars().take(80).collect::<String>()
    );
    Ok(f64::from(completion - 1) / elapsed.as_secs_f64())
}

fn request(question: &str, max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        messages: vec![ChatMessage::new("user", question)],
        max_tokens: Some(max_tokens),
        ..CompletionRequest::default()
    }
}

fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_string())
}
