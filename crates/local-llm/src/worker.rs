//! The generation thread: owns the weights and runs one job at a time from a bounded queue.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_llm::{LlmError, LlmEvent, Usage};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::mpsc::UnboundedSender;

use crate::stop::{Step, StopMatcher, Utf8Buffer};
use crate::template::ChatMl;
use crate::tokenizer::TextTokenizer;

/// The provider name errors carry.
pub(crate) const PROVIDER: &str = "local";

/// Prompt tokens fed per forward pass: bounds the attention scratch memory of long prompts
/// and lets a cancelled request stop between chunks.
const PROMPT_CHUNK: usize = 256;

pub(crate) type EventSender = UnboundedSender<Result<LlmEvent, LlmError>>;

/// What every handle of one loaded model shares with its generation thread.
pub(crate) struct Shared {
    pub name: String,
    pub tokenizer: TextTokenizer,
    pub template: ChatMl,
    /// Ids that end an answer (`<|im_end|>`, `<|endoftext|>`, the file's EOS).
    pub end_ids: Vec<u32>,
    pub max_context: usize,
    /// Jobs queued or running.
    pub busy: AtomicUsize,
    /// Tokens sampled over the model's life (for metrics and tests).
    pub generated: AtomicU64,
}

pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stops: Vec<String>,
    pub events: EventSender,
}

/// Starts the thread; it ends when every sender of the returned queue is dropped.
pub(crate) fn spawn(
    weights: ModelWeights,
    shared: Arc<Shared>,
    capacity: usize,
) -> std::io::Result<SyncSender<Job>> {
    let (jobs, queue) = sync_channel(capacity);
    std::thread::Builder::new()
        .name("local-llm".into())
        .spawn(move || serve(weights, shared, queue))?;
    Ok(jobs)
}

fn serve(mut weights: ModelWeights, shared: Arc<Shared>, queue: Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        let events = job.events.clone();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run(&mut weights, &shared, job);
        }));
        if outcome.is_err() {
            tracing::error!(model = %shared.name, "local generation panicked");
            let _ = events.send(Err(stream_error("generation failed unexpectedly")));
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
    tracing::debug!(model = %shared.name, "local generation thread stopped");
}

/// Why a generation ended early.
enum Halt {
    /// The receiver is gone: the client dropped the stream.
    Cancelled,
    Failed(String),
}

impl From<candle_core::Error> for Halt {
    fn from(err: candle_core::Error) -> Halt {
        Halt::Failed(err.to_string())
    }
}

struct Outcome {
    finish_reason: &'static str,
    completion_tokens: usize,
    prompt_time: Duration,
    generation_time: Duration,
}

fn run(weights: &mut ModelWeights, shared: &Shared, job: Job) {
    if job.events.is_closed() {
        tracing::debug!("local request dropped while queued");
        return;
    }
    match generate(weights, shared, &job) {
        Ok(outcome) => finish(shared, &job, &outcome),
        Err(Halt::Cancelled) => tracing::debug!("local generation cancelled"),
        Err(Halt::Failed(message)) => {
            tracing::warn!(model = %shared.name, error = %message, "local generation failed");
            let _ = job.events.send(Err(stream_error(&message)));
        }
    }
}

fn finish(shared: &Shared, job: &Job, outcome: &Outcome) {
    let usage = Usage {
        prompt_tokens: saturating_u32(job.prompt.len()),
        completion_tokens: saturating_u32(outcome.completion_tokens),
        cost_usd: 0.0,
    };
    let _ = job.events.send(Ok(LlmEvent::Usage(usage)));
    let _ = job.events.send(Ok(LlmEvent::Done {
        finish_reason: outcome.finish_reason.to_string(),
        model: shared.name.clone(),
    }));
    tracing::debug!(
        prompt_tokens = job.prompt.len(),
        completion_tokens = outcome.completion_tokens,
        prompt_ms = outcome.prompt_time.as_millis() as u64,
        generation_ms = outcome.generation_time.as_millis() as u64,
        finish_reason = outcome.finish_reason,
        "local generation done"
    );
}

fn generate(weights: &mut ModelWeights, shared: &Shared, job: &Job) -> Result<Outcome, Halt> {
    let started = Instant::now();
    let mut sampler = LogitsProcessor::from_sampling(job.seed, job.sampling.clone());
    weights.clear_kv_cache();
    let mut next = feed_prompt(weights, &job.prompt, &job.events, &mut sampler)?;
    let prompt_time = started.elapsed();

    let mut text = TextOut::new(&job.stops, &job.events);
    let mut produced = 0;
    let finish_reason = loop {
        if job.events.is_closed() {
            return Err(Halt::Cancelled);
        }
        if shared.end_ids.contains(&next) {
            text.flush()?;
            break "stop";
        }
        produced += 1;
        shared.generated.fetch_add(1, Ordering::Relaxed);
        if text.push(shared.tokenizer.piece(next))? {
            break "stop";
        }
        if produced >= job.max_new {
            text.flush()?;
            break "length";
        }
        let position = job.prompt.len() + produced - 1;
        next = forward(weights, &[next], position, &mut sampler)?;
    };

    Ok(Outcome {
        finish_reason,
        completion_tokens: produced,
        prompt_time,
        generation_time: started.elapsed() - prompt_time,
    })
}

/// Runs the prompt through the model in chunks; returns the first sampled token.
fn feed_prompt(
    weights: &mut ModelWeights,
    prompt: &[u32],
    events: &EventSender,
    sampler: &mut LogitsProcessor,
) -> Result<u32, Halt> {
    let mut next = None;
    for (index, chunk) in prompt.chunks(PROMPT_CHUNK).enumerate() {
        if events.is_closed() {
            return Err(Halt::Cancelled);
        }
        let logits = weights.forward(&ids_tensor(chunk)?, index * PROMPT_CHUNK)?;
        next = Some(logits);
    }
    let logits = next.ok_or_else(|| Halt::Failed("empty prompt".into()))?;
    Ok(sampler.sample(&logits.squeeze(0)?.to_dtype(DType::F32)?)?)
}

fn forward(
    weights: &mut ModelWeights,
    ids: &[u32],
    position: usize,
    sampler: &mut LogitsProcessor,
) -> Result<u32, Halt> {
    let logits = weights.forward(&ids_tensor(ids)?, position)?;
    Ok(sampler.sample(&logits.squeeze(0)?.to_dtype(DType::F32)?)?)
}

fn ids_tensor(ids: &[u32]) -> candle_core::Result<Tensor> {
    Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)
}

/// Token bytes to streamed text: whole characters only, stop strings held back and cut.
struct TextOut<'a> {
    utf8: Utf8Buffer,
    stops: StopMatcher,
    events: &'a EventSender,
}

impl<'a> TextOut<'a> {
    fn new(stops: &[String], events: &'a EventSender) -> TextOut<'a> {
        TextOut {
            utf8: Utf8Buffer::default(),
            stops: StopMatcher::new(stops),
            events,
        }
    }

    /// Sends what can be sent; true when a stop string ended the answer.
    fn push(&mut self, bytes: &[u8]) -> Result<bool, Halt> {
        let text = self.utf8.push(bytes);
        if text.is_empty() {
            return Ok(false);
        }
        match self.stops.push(&text) {
            Step::Emit(text) => self.send(text).map(|()| false),
            Step::Stop(text) => self.send(text).map(|()| true),
        }
    }

    /// Sends everything still held when generation ends without a stop string.
    fn flush(&mut self) -> Result<(), Halt> {
        let rest = self.utf8.finish();
        match self.stops.push(&rest) {
            Step::Stop(text) => self.send(text),
            Step::Emit(text) => {
                self.send(text)?;
                let held = self.stops.finish();
                self.send(held)
            }
        }
    }

    fn send(&self, text: String) -> Result<(), Halt> {
        if text.is_empty() {
            return Ok(());
        }
        self.events
            .send(Ok(LlmEvent::Delta(text)))
            .map_err(|_| Halt::Cancelled)
    }
}

pub(crate) fn stream_error(message: &str) -> LlmError {
    LlmError::Stream {
        provider: PROVIDER.into(),
        message: message.into(),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
