//! The client: picks providers for a model, sends requests, retries, falls back and streams.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::time::Instant;
use tracing::Instrument;

use crate::circuit::{Circuit, CircuitState, Permit};
use crate::events::{Billing, EventReader, Limits};
use crate::keys::KeySource;
use crate::retry::{backoff, blames_provider, next_step, Next};
use crate::trace::CallTrace;
use crate::usage::{estimate, prompt_chars, SharedSink, UsageOutcome, UsageReport, UsageSink};
use crate::wire::{
    embed_body, parse_completion, parse_embeddings, remaining, request_body, status_error,
};
use crate::{
    Completion, CompletionRequest, EmbedRequest, EmbedResponse, LlmConfig, LlmError, LlmEvent,
    Price, ProviderConfig,
};

/// Events of one streamed answer; ends with `Done` or one error item.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, LlmError>> + Send>>;

/// Shared by every agent; cheap to clone (clones share circuits, key caches and the sink).
#[derive(Clone, Debug)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LlmConfig,
    http: reqwest::Client,
    providers: Vec<Provider>,
    prices: Arc<HashMap<String, Price>>,
    sink: RwLock<SharedSink>,
}

/// A configured provider with what the client learns about it while running.
#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    circuit: Circuit,
    key: KeySource,
}

/// What one attempt needs besides the provider.
struct Call<'a> {
    /// Path under the provider's base URL: `chat/completions` or `embeddings`.
    path: &'static str,
    model: &'a str,
    body: Bytes,
    prompt_chars: usize,
    deadline: Instant,
    /// "total" (the configured bound) or "deadline" (the caller's, when tighter).
    deadline_what: &'static str,
    deadline_limit: Duration,
    /// The call's span and metrics.
    trace: CallTrace,
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        let providers = config
            .providers
            .iter()
            .map(|p| Provider {
                config: p.clone(),
                circuit: Circuit::new(config.circuit_failures, config.circuit_cooldown),
                key: KeySource::default(),
            })
            .collect();
        let prices = Arc::new(config.prices.clone());
        crate::metrics::describe();
        for p in &config.providers {
            crate::metrics::set_circuit_state(&p.name, CircuitState::Closed);
        }
        let inner = Inner {
            config,
            http,
            providers,
            prices,
            sink: RwLock::new(SharedSink::default()),
        };
        Ok(LlmClient {
            inner: Arc::new(inner),
        })
    }

    pub fn default_model(&self) -> &str {
        &self.inner.config.default_model
    }

    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// Where every answered attempt's usage goes (replaces the previous sink). A stream the
    /// caller drops is reported too, with estimated tokens: this is how to bill it.
    pub fn on_usage(&self, sink: impl UsageSink + 'static) {
        let sink = SharedSink::new(Arc::new(sink));
        match self.inner.sink.write() {
            Ok(mut slot) => *slot = sink,
            Err(poisoned) => *poisoned.into_inner() = sink,
        }
    }

    /// Each provider's circuit, in configuration order (for metrics).
    pub fn circuit_states(&self) -> Vec<(String, CircuitState)> {
        let providers = self.inner.providers.iter();
        providers
            .map(|p| (p.config.name.clone(), p.circuit.state()))
            .collect()
    }

    /// One whole answer (no streaming), retried and failed over as configured.
    pub async fn complete(&self, req: CompletionRequest) -> Result<Completion, LlmError> {
        let call = self.prepare(&req, false);
        let result = self
            .run(&call, |provider| self.attempt_complete(provider, &call))
            .instrument(call.trace.span())
            .await;
        call.trace.completed(result.as_ref());
        result
    }

    /// A streamed answer. Retries and fallback happen only until the first event is
    /// ready for the caller; after that a failure is the stream's last item.
    pub async fn stream(&self, req: CompletionRequest) -> Result<EventStream, LlmError> {
        let call = self.prepare(&req, true);
        let result = self
            .run(&call, |provider| self.attempt_stream(provider, &call))
            .instrument(call.trace.span())
            .await;
        match result {
            Ok(stream) => {
                call.trace.first_token();
                Ok(call.trace.clone().observe(stream))
            }
            Err(err) => {
                call.trace.failed(&err);
                Err(err)
            }
        }
    }

    /// Vectors for `req.input`, in the same order, with the same retries, fallback,
    /// circuits, keys and timeouts as chat (the first-byte limit bounds each attempt until
    /// the response headers). No input answers at once with no vectors and no provider.
    pub async fn embed(&self, req: EmbedRequest) -> Result<EmbedResponse, LlmError> {
        let model = req.model.trim();
        if model.is_empty() {
            return Err(LlmError::UnknownModel {
                model: req.model.clone(),
            });
        }
        if req.input.is_empty() {
            self.providers_for(model)?;
            let model = model.to_string();
            return Ok(EmbedResponse {
                model,
                ..EmbedResponse::default()
            });
        }
        let body = Bytes::from(embed_body(&req, model).to_string());
        let chars = req.input.iter().map(|t| t.chars().count()).sum();
        let trace = self.trace("embeddings", model, false);
        let call = self.call("embeddings", model, body, chars, req.deadline, trace);
        let result = self
            .run(&call, |provider| {
                self.attempt_embed(provider, &call, req.input.len())
            })
            .instrument(call.trace.span())
            .await;
        call.trace.embedded(result.as_ref());
        result
    }

    fn prepare<'a>(&'a self, req: &'a CompletionRequest, stream: bool) -> Call<'a> {
        let config = &self.inner.config;
        let model = req.model.as_deref().filter(|m| !m.trim().is_empty());
        let model = model.unwrap_or(&config.default_model);
        let body = Bytes::from(request_body(req, model, stream).to_string());
        let chars = prompt_chars(&req.messages);
        let trace = self.trace("chat", model, stream);
        self.call("chat/completions", model, body, chars, req.deadline, trace)
    }

    fn trace(&self, operation: &'static str, model: &str, stream: bool) -> CallTrace {
        let model_label = crate::metrics::model_label(&self.inner.config, model);
        CallTrace::new(operation, model, model_label, stream)
    }

    /// A call's deadline: the caller's when it is tighter than the configured total.
    fn call<'a>(
        &self,
        path: &'static str,
        model: &'a str,
        body: Bytes,
        prompt_chars: usize,
        theirs: Option<std::time::Instant>,
        trace: CallTrace,
    ) -> Call<'a> {
        let total_timeout = self.inner.config.total_timeout;
        let now = Instant::now();
        let total = now + total_timeout;
        let (deadline, deadline_what, deadline_limit) = match theirs {
            Some(theirs) if Instant::from_std(theirs) < total => {
                let theirs = Instant::from_std(theirs);
                (theirs, "deadline", theirs.saturating_duration_since(now))
            }
            _ => (total, "total", total_timeout),
        };
        Call {
            path,
            model,
            body,
            prompt_chars,
            deadline,
            deadline_what,
            deadline_limit,
            trace,
        }
    }

    /// Providers serving `model`, lowest priority value first (ties keep config order).
    fn providers_for(&self, model: &str) -> Result<Vec<&Provider>, LlmError> {
        let mut providers: Vec<_> = self
            .inner
            .providers
            .iter()
            .filter(|p| p.config.serves(model))
            .collect();
        providers.sort_by_key(|p| p.config.priority);
        if providers.is_empty() {
            return Err(LlmError::UnknownModel {
                model: model.to_string(),
            });
        }
        Ok(providers)
    }

    async fn run<'a, T, F, Fut>(&'a self, call: &Call<'_>, mut attempt: F) -> Result<T, LlmError>
    where
        F: FnMut(&'a Provider) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut last: Option<LlmError> = None;
        for provider in self.providers_for(call.model)? {
            if remaining(call.deadline).is_none() {
                break;
            }
            if let Some(err) = &last {
                call.trace.fallback(err.provider().unwrap_or_default(), err);
            }
            match self.on_provider(call, provider, &mut attempt).await {
                Ok(value) => return Ok(value),
                Err((err, Next::Stop)) => return Err(err),
                Err((err, _)) => {
                    tracing::warn!(
                        provider = %provider.config.name,
                        model = call.model,
                        kind = err.kind(),
                        "llm provider gave up"
                    );
                    last = Some(keep_worst(last, err));
                }
            }
        }
        Err(last.unwrap_or_else(|| deadline_error(call, "all providers")))
    }

    /// Attempts on one provider until success, a final error, an open circuit or the
    /// attempt budget is spent.
    async fn on_provider<'a, T, F, Fut>(
        &'a self,
        call: &Call<'_>,
        provider: &'a Provider,
        attempt: &mut F,
    ) -> Result<T, (LlmError, Next)>
    where
        F: FnMut(&'a Provider) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let name = provider.config.name.as_str();
        let max = self.inner.config.max_attempts;
        let mut previous = None;
        for n in 1..=max {
            let permit = match provider.circuit.try_acquire() {
                Ok(permit) => permit,
                Err(retry_in) => {
                    let skipped = LlmError::CircuitOpen {
                        provider: name.to_string(),
                        retry_in,
                    };
                    tracing::debug!(provider = name, "llm circuit open, skipping");
                    return Err((previous.unwrap_or(skipped), Next::Fallback));
                }
            };
            let span = call.trace.attempt_span(name, n);
            let err = match attempt(provider).instrument(span).await {
                Ok(value) => {
                    log_transition(name, permit.success());
                    return Ok(value);
                }
                Err(err) => err,
            };
            settle_failure(name, permit, &err);
            let step = next_step(&err);
            tracing::debug!(provider = name, attempt = n, kind = err.kind(), error = %err,
                "llm attempt failed");
            if step != Next::Retry || n == max {
                return Err((err, step));
            }
            let wait = self.retry_wait(n, &err);
            if remaining(call.deadline).is_none_or(|left| left <= wait) {
                return Err((err, Next::Fallback));
            }
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            tracing::debug!(provider = name, wait_ms, "llm retry");
            call.trace.retry(name, n, &err, wait);
            tokio::time::sleep(wait).await;
            previous = Some(err);
        }
        Err((deadline_error(call, name), Next::Fallback))
    }

    /// The provider's `Retry-After` when it sent one, else backoff with full jitter.
    fn retry_wait(&self, failures: u32, err: &LlmError) -> Duration {
        let config = &self.inner.config;
        err.retry_after()
            .unwrap_or_else(|| backoff(failures, config.backoff_base, config.backoff_cap))
    }

    async fn attempt_complete(
        &self,
        p: &Provider,
        call: &Call<'_>,
    ) -> Result<Completion, LlmError> {
        let (until, what, limit) = self.first_limit(call, "first byte");
        let name = &p.config.name;
        let response = tokio::time::timeout_at(until, self.send(p, call))
            .await
            .map_err(|_| timeout(name, what, limit))??;
        let body = self.read_body(name, response, call).await?;
        let (mut completion, has_usage) =
            parse_completion(name, &body, call.model, &self.inner.prices)?;
        if !has_usage {
            let chars = completion.content.chars().count()
                + completion
                    .tool_calls
                    .iter()
                    .map(|c| c.name.chars().count() + c.arguments.chars().count())
                    .sum::<usize>();
            let price = crate::usage::price_for(&self.inner.prices, &completion.model, call.model);
            completion.usage = estimate(call.prompt_chars, chars, &price);
        }
        self.sink().record(UsageReport {
            provider: name.clone(),
            model: completion.model.clone(),
            usage: completion.usage,
            estimated: !has_usage,
            outcome: UsageOutcome::Finished,
        });
        Ok(completion)
    }

    async fn attempt_embed(
        &self,
        p: &Provider,
        call: &Call<'_>,
        inputs: usize,
    ) -> Result<EmbedResponse, LlmError> {
        let (until, what, limit) = self.first_limit(call, "first byte");
        let name = &p.config.name;
        let response = tokio::time::timeout_at(until, self.send(p, call))
            .await
            .map_err(|_| timeout(name, what, limit))??;
        let body = self.read_body(name, response, call).await?;
        let prices = &self.inner.prices;
        let (mut answer, has_usage) = parse_embeddings(name, &body, call.model, inputs, prices)?;
        if !has_usage {
            let price = crate::usage::price_for(prices, &answer.model, call.model);
            answer.usage = estimate(call.prompt_chars, 0, &price);
        }
        self.sink().record(UsageReport {
            provider: name.clone(),
            model: answer.model.clone(),
            usage: answer.usage,
            estimated: !has_usage,
            outcome: UsageOutcome::Finished,
        });
        Ok(answer)
    }

    /// A whole body, each read bounded by the idle limit and all of it by the deadline.
    async fn read_body(
        &self,
        provider: &str,
        response: reqwest::Response,
        call: &Call<'_>,
    ) -> Result<Vec<u8>, LlmError> {
        let idle = self.inner.config.idle_timeout;
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        loop {
            let idle_by = Instant::now() + idle;
            let (until, what, limit) = if idle_by < call.deadline {
                (idle_by, "idle", idle)
            } else {
                (call.deadline, call.deadline_what, call.deadline_limit)
            };
            let next = tokio::time::timeout_at(until, chunks.next())
                .await
                .map_err(|_| timeout(provider, what, limit))?;
            match next {
                Some(Ok(bytes)) => body.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    let message = error_chain(&e);
                    let provider = provider.to_string();
                    return Err(LlmError::Stream { provider, message });
                }
                None => return Ok(body),
            }
        }
    }

    async fn attempt_stream(&self, p: &Provider, call: &Call<'_>) -> Result<EventStream, LlmError> {
        let config = &self.inner.config;
        let first_by = Instant::now() + config.first_token_timeout;
        let (until, what, limit) = self.first_limit(call, "first token");
        let name = &p.config.name;
        let response = tokio::time::timeout_at(until, self.send(p, call))
            .await
            .map_err(|_| timeout(name, what, limit))??;

        let limits = Limits {
            first_by,
            first_token: config.first_token_timeout,
            idle: config.idle_timeout,
            deadline: call.deadline,
            deadline_what: call.deadline_what,
            deadline_limit: call.deadline_limit,
        };
        let billing = Billing {
            sink: self.sink(),
            prices: self.inner.prices.clone(),
            prompt_chars: call.prompt_chars,
        };
        let mut reader = EventReader::new(name, response, call.model, billing, limits);
        let first_event = match reader.next_event().await {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Err(err),
            None => return Err(reader.ended_early()),
        };
        let rest = futures::stream::unfold(reader, |mut reader| async move {
            reader.next_event().await.map(|item| (item, reader))
        });
        Ok(Box::pin(
            futures::stream::once(async { Ok(first_event) }).chain(rest),
        ))
    }

    /// Until when to wait for the first byte (whole answers) or token (streams).
    fn first_limit(
        &self,
        call: &Call<'_>,
        what: &'static str,
    ) -> (Instant, &'static str, Duration) {
        let first = self.inner.config.first_token_timeout;
        let by = Instant::now() + first;
        if by < call.deadline {
            (by, what, first)
        } else {
            (call.deadline, call.deadline_what, call.deadline_limit)
        }
    }

    fn sink(&self) -> SharedSink {
        match self.inner.sink.read() {
            Ok(sink) => sink.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends the request; a non-2xx answer becomes the matching error.
    async fn send(&self, p: &Provider, call: &Call<'_>) -> Result<reqwest::Response, LlmError> {
        let name = &p.config.name;
        let url = format!("{}/{}", p.config.base_url.trim_end_matches('/'), call.path);
        let mut request = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .headers(agentmesh_telemetry::propagation::trace_headers())
            .body(call.body.clone());
        if let Some(key) = p.key.key(&p.config).await? {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| LlmError::Connect {
            provider: name.clone(),
            message: error_chain(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap_or_default();
        Err(status_error(
            name,
            status.as_u16(),
            retry_after.as_deref(),
            &body,
        ))
    }
}

fn timeout(provider: &str, what: &'static str, limit: Duration) -> LlmError {
    LlmError::Timeout {
        provider: provider.to_string(),
        what,
        limit,
    }
}

fn deadline_error(call: &Call<'_>, provider: &str) -> LlmError {
    timeout(provider, call.deadline_what, call.deadline_limit)
}

/// A real failure says more than a skipped provider; among skips, the soonest retry wins.
fn keep_worst(last: Option<LlmError>, err: LlmError) -> LlmError {
    match (last, err) {
        (Some(real), LlmError::CircuitOpen { .. })
            if !matches!(real, LlmError::CircuitOpen { .. }) =>
        {
            real
        }
        (
            Some(LlmError::CircuitOpen { retry_in: a, .. }),
            LlmError::CircuitOpen {
                provider,
                retry_in: b,
            },
        ) => LlmError::CircuitOpen {
            provider,
            retry_in: a.min(b),
        },
        (_, err) => err,
    }
}

/// Counts a failed attempt against the circuit when the provider was at fault.
fn settle_failure(provider: &str, permit: Permit, err: &LlmError) {
    if blames_provider(err) {
        log_transition(provider, permit.failure());
    }
}

fn log_transition(provider: &str, change: Option<CircuitState>) {
    if let Some(state) = change {
        crate::metrics::set_circuit_state(provider, state);
    }
    match change {
        Some(CircuitState::Open) => tracing::warn!(provider, "llm circuit opened"),
        Some(state) => tracing::info!(provider, state = state.as_str(), "llm circuit changed"),
        None => {}
    }
}

/// An error and its causes on one line (reqwest's own message omits the cause).
pub(crate) fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_and_models_resolve() {
        let mut config = LlmConfig::single("a", "http://127.0.0.1:1/v1", "m1");
        let mut second = config.providers[0].clone();
        second.name = "b".into();
        second.priority = 0;
        second.models = vec![];
        config.providers[0].priority = 5;
        config.providers.push(second);
        let client = LlmClient::new(config).unwrap();
        assert_send(&client.complete(CompletionRequest::default()));
        assert_send(&client.stream(CompletionRequest::default()));

        let names = |model| -> Vec<String> {
            client
                .providers_for(model)
                .unwrap()
                .iter()
                .map(|p| p.config.name.clone())
                .collect()
        };
        assert_eq!(names("m1"), ["b", "a"]);
        assert_eq!(names("other"), ["b"]);
        let req = CompletionRequest {
            model: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(client.prepare(&req, false).model, "m1");
        let states = client.circuit_states();
        assert_eq!(states[0], ("a".to_string(), CircuitState::Closed));
        assert_eq!(states.len(), 2);
    }

    #[test]
    fn unknown_model_is_reported() {
        let client = LlmClient::new(LlmConfig::single("a", "http://127.0.0.1:1/v1", "m1")).unwrap();
        let err = client.providers_for("gpt-9").unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert!(err.to_string().contains("gpt-9"));
    }

    #[tokio::test]
    async fn caller_deadline_only_shortens() {
        let client = LlmClient::new(LlmConfig::single("a", "http://127.0.0.1:1/v1", "m1")).unwrap();
        let soon = std::time::Instant::now() + Duration::from_secs(2);
        let req = CompletionRequest {
            deadline: Some(soon),
            ..Default::default()
        };
        let call = client.prepare(&req, false);
        assert_eq!(call.deadline_what, "deadline");
        assert!(call.deadline_limit <= Duration::from_secs(2));
        let late = std::time::Instant::now() + Duration::from_secs(3600);
        let req = CompletionRequest {
            deadline: Some(late),
            ..Default::default()
        };
        let call = client.prepare(&req, false);
        assert_eq!(call.deadline_what, "total");
        assert_eq!(call.deadline_limit, Duration::from_secs(120));
    }
}
