//! The span of one LLM call, after the OpenTelemetry GenAI conventions, with a child span
//! per attempt (retries and fallbacks show as siblings, plus events), and the call's
//! metrics. Prompt and completion text are never recorded.

use crate::metrics;
use crate::{EventStream, LlmError, LlmEvent, Usage};
use futures::Stream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::field::Empty;

/// Shared by the call's attempts and, for streams, by the stream handed to the caller.
#[derive(Clone, Debug)]
pub(crate) struct CallTrace {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    span: tracing::Span,
    /// Bounded label for metrics.
    model: String,
    started: Instant,
    /// The provider that answered, or the last one tried.
    provider: Mutex<String>,
}

impl CallTrace {
    /// `operation` is the GenAI operation name: `chat` or `embeddings`.
    pub fn new(operation: &'static str, model: &str, model_label: String, stream: bool) -> Self {
        let span = tracing::info_span!(
            "llm",
            otel.name = %format_args!("{operation} {model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = operation,
            gen_ai.request.model = %model,
            gen_ai.provider.name = Empty,
            gen_ai.response.model = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            agentmesh.llm.stream = stream,
            agentmesh.llm.cost_usd = Empty,
            error.type = Empty,
        );
        let inner = Inner {
            span,
            model: model_label,
            started: Instant::now(),
            provider: Mutex::new(String::new()),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn span(&self) -> tracing::Span {
        self.inner.span.clone()
    }

    /// The span of attempt `n` on `provider`; the provider request carries its context.
    pub fn attempt_span(&self, provider: &str, n: u32) -> tracing::Span {
        self.set_provider(provider);
        tracing::info_span!(
            parent: &self.inner.span,
            "llm_attempt",
            otel.name = %format_args!("attempt {provider}"),
            otel.kind = "client",
            gen_ai.provider.name = %provider,
            agentmesh.llm.attempt = n,
        )
    }

    fn set_provider(&self, provider: &str) {
        if let Ok(mut slot) = self.inner.provider.lock() {
            provider.clone_into(&mut slot);
        }
    }

    fn provider(&self) -> String {
        self.inner
            .provider
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    pub fn retry(&self, provider: &str, n: u32, err: &LlmError, wait: Duration) {
        metrics::retry(provider, err.kind());
        let attributes = [
            ("gen_ai.provider.name", provider.to_string()),
            ("agentmesh.llm.attempt", n.to_string()),
            ("error.type", err.kind().to_string()),
            ("agentmesh.llm.wait_ms", wait.as_millis().to_string()),
        ];
        agentmesh_telemetry::span_event(&self.inner.span, "retry", &attributes);
    }

    pub fn fallback(&self, provider: &str, err: &LlmError) {
        metrics::fallback(provider, err.kind());
        let attributes = [
            ("gen_ai.provider.name", provider.to_string()),
            ("error.type", err.kind().to_string()),
        ];
        agentmesh_telemetry::span_event(&self.inner.span, "fallback", &attributes);
    }

    /// The first event of a stream is ready for the caller.
    pub fn first_token(&self) {
        let seconds = self.inner.started.elapsed().as_secs_f64();
        metrics::first_token(&self.provider(), &self.inner.model, seconds);
    }

    fn usage(&self, usage: &Usage) {
        let span = &self.inner.span;
        span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
        span.record("agentmesh.llm.cost_usd", usage.cost_usd);
    }

    fn done(&self, finish_reason: &str, model: &str) {
        let span = &self.inner.span;
        span.record("gen_ai.response.model", model);
        span.record("gen_ai.response.finish_reasons", finish_reason);
    }

    /// Records the call's end: `Ok` or the error that ended it; `None`: the caller left.
    fn end(&self, outcome: Option<Result<(), &LlmError>>) {
        let span = &self.inner.span;
        let provider = self.provider();
        span.record("gen_ai.provider.name", provider.as_str());
        let label = match outcome {
            Some(Ok(())) => "ok",
            Some(Err(err)) => {
                span.record("error.type", err.kind());
                span.record("otel.status_code", "ERROR");
                err.kind()
            }
            None => "cancelled",
        };
        let seconds = self.inner.started.elapsed().as_secs_f64();
        metrics::finished(&provider, &self.inner.model, label, seconds);
    }

    /// Ends a whole-answer call.
    pub fn completed(&self, result: Result<&crate::Completion, &LlmError>) {
        if let Ok(completion) = result {
            self.usage(&completion.usage);
            self.done(&completion.finish_reason, &completion.model);
        }
        self.end(Some(result.map(|_| ())));
    }

    /// Ends an embeddings call.
    pub fn embedded(&self, result: Result<&crate::EmbedResponse, &LlmError>) {
        if let Ok(response) = result {
            self.usage(&response.usage);
            self.inner
                .span
                .record("gen_ai.response.model", response.model.as_str());
        }
        self.end(Some(result.map(|_| ())));
    }

    /// Ends a stream that failed before its first event.
    pub fn failed(&self, err: &LlmError) {
        self.end(Some(Err(err)));
    }

    /// The caller's stream, which keeps the span open and records usage, the finish
    /// reason and the end of the call.
    pub fn observe(self, inner: EventStream) -> EventStream {
        Box::pin(Observed {
            inner,
            trace: self,
            ended: false,
        })
    }
}

struct Observed {
    inner: EventStream,
    trace: CallTrace,
    ended: bool,
}

impl Stream for Observed {
    type Item = Result<LlmEvent, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(item) => item,
            Poll::Pending => return Poll::Pending,
        };
        match &item {
            Some(Ok(LlmEvent::Usage(usage))) => this.trace.usage(usage),
            Some(Ok(LlmEvent::Done {
                finish_reason,
                model,
            })) => {
                this.trace.done(finish_reason, model);
                if !this.ended {
                    this.ended = true;
                    this.trace.end(Some(Ok(())));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) if !this.ended => {
                this.ended = true;
                this.trace.end(Some(Err(err)));
            }
            Some(Err(_)) => {}
            None if !this.ended => {
                this.ended = true;
                this.trace.end(Some(Ok(())));
            }
            None => {}
        }
        Poll::Ready(item)
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.ended {
            self.trace.end(None);
        }
    }
}
