//! Runs the client once against any OpenAI-compatible server and prints what it saw: a whole
//! answer, a streamed one, embeddings, and (with `--key`) the error for a wrong key.
//!
//! ```text
//! cargo run -p agentmesh-llm --example against -- \
//!     --base-url http://127.0.0.1:4000/v1 --model fake-chat \
//!     [--key sk-...] [--embed-model fake-embed]
//! ```
//! Exits non-zero when a step that should work failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentmesh_llm::{
    ChatMessage, CompletionRequest, EmbedRequest, LlmClient, LlmConfig, LlmError, LlmEvent, Secret,
};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// Up to and including the version path, e.g. `http://127.0.0.1:4000/v1`.
    #[arg(long)]
    base_url: String,
    /// The chat model to ask.
    #[arg(long)]
    model: String,
    /// API key (Bearer); with it, a call with a wrong key is tried too.
    #[arg(long)]
    key: Option<String>,
    /// Embeddings model; without it the embeddings step is skipped.
    #[arg(long)]
    embed_model: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("against: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &Args, key: Option<&str>) -> LlmConfig {
    let mut config = LlmConfig::single("foreign", &args.base_url, &args.model);
    let provider = &mut config.providers[0];
    provider.api_key = key.map(Secret::new);
    provider.models.extend(args.embed_model.iter().cloned());
    config.first_token_timeout = Duration::from_secs(20);
    config.total_timeout = Duration::from_secs(40);
    config
}

fn ask() -> CompletionRequest {
    CompletionRequest {
        messages: vec![
            ChatMessage::new("system", "Answer in one short sentence."),
            ChatMessage::new("user", "What is a Kubernetes pod?"),
        ],
        max_tokens: Some(60),
        ..CompletionRequest::default()
    }
}

fn failed(step: &str, err: &LlmError) -> bool {
    println!(
        "{step}: ERROR kind={} status={} provider={:?}: {err}",
        err.kind(),
        err.http_status(),
        err.provider()
    );
    false
}

async fn run(args: &Args) -> Result<bool, LlmError> {
    let client = LlmClient::new(config(args, args.key.as_deref()))?;
    client.on_usage(|r: agentmesh_llm::UsageReport| {
        println!(
            "  usage report: provider={} model={} prompt={} completion={} estimated={} {:?}",
            r.provider,
            r.model,
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.estimated,
            r.outcome
        );
    });
    let mut ok = true;

    let started = Instant::now();
    match client.complete(ask()).await {
        Ok(c) => println!(
            "complete: {:?} finish={} model={} usage={:?} in {:?}",
            c.content,
            c.finish_reason,
            c.model,
            c.usage,
            started.elapsed()
        ),
        Err(err) => ok &= failed("complete", &err),
    }

    ok &= stream(&client).await;

    if let Some(model) = &args.embed_model {
        // Two inputs (a batch), then one: a server may get batches wrong.
        for input in [
            vec!["restart a pod", "sales by region"],
            vec!["restart a pod"],
        ] {
            ok &= embed(&client, model, &input).await;
        }
    }

    if args.key.is_some() {
        for (step, key) in [("wrong key", Some("sk-wrong-key")), ("no key", None)] {
            let mut refused = config(args, key);
            refused.max_attempts = 1;
            match LlmClient::new(refused)?.complete(ask()).await {
                Ok(_) => println!("{step}: the server accepted it (no key checking?)"),
                Err(err) => {
                    failed(&format!("{step} (expected)"), &err);
                }
            }
        }
    }
    Ok(ok)
}

async fn embed(client: &LlmClient, model: &str, input: &[&str]) -> bool {
    let req = EmbedRequest {
        model: model.to_string(),
        input: input.iter().map(|t| t.to_string()).collect(),
        ..EmbedRequest::default()
    };
    let step = format!("embed {} input(s)", input.len());
    match client.embed(req).await {
        Ok(e) => {
            let dims: Vec<usize> = e.vectors.iter().map(Vec::len).collect();
            let head: Vec<f32> = e.vectors[0].iter().take(3).copied().collect();
            println!(
                "{step}: {} vectors of {dims:?} dims, first starts {head:?}, model={} \
                 provider={} usage={:?}",
                e.vectors.len(),
                e.model,
                e.provider,
                e.usage
            );
            true
        }
        Err(err) => failed(&step, &err),
    }
}

async fn stream(client: &LlmClient) -> bool {
    let started = Instant::now();
    let mut events = match client.stream(ask()).await {
        Ok(events) => events,
        Err(err) => return failed("stream", &err),
    };
    let (mut deltas, mut text, mut first) = (0, String::new(), None);
    while let Some(item) = events.next().await {
        match item {
            Ok(LlmEvent::Delta(piece)) => {
                first.get_or_insert_with(|| started.elapsed());
                deltas += 1;
                text.push_str(&piece);
            }
            Ok(LlmEvent::ToolCall { index, name, .. }) => {
                println!("stream: tool call delta {index} {name:?}");
            }
            Ok(LlmEvent::Usage(usage)) => println!("stream: usage event {usage:?}"),
            Ok(LlmEvent::Done {
                finish_reason,
                model,
            }) => {
                println!(
                    "stream: {deltas} content deltas {text:?}, first after {first:?}, \
                     done finish={finish_reason} model={model} in {:?}",
                    started.elapsed()
                );
                return true;
            }
            Err(err) => return failed("stream", &err),
        }
    }
    println!("stream: ended without Done");
    false
}
