//! The client: picks providers for a model, sends requests, retries, falls back and streams.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::time::Instant;

use crate::events::{EventReader, Limits};
use crate::retry::{backoff, next_step, Next};
use crate::wire::{parse_completion, remaining, request_body, status_error};
use crate::{Completion, CompletionRequest, LlmConfig, LlmError, LlmEvent, Price, ProviderConfig};

/// Events of one streamed answer; ends with `Done` or one error item.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, LlmError>> + Send>>;

/// Shared by every agent; cheap to clone.
#[derive(Clone, Debug)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LlmConfig,
    http: reqwest::Client,
}

/// What one attempt needs besides the provider.
struct Call<'a> {
    model: &'a str,
    body: Bytes,
    price: Price,
    deadline: Instant,
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(LlmClient {
            inner: Arc::new(Inner { config, http }),
        })
    }

    pub fn default_model(&self) -> &str {
        &self.inner.config.default_model
    }

    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// One whole answer (no streaming), retried and failed over as configured.
    pub async fn complete(&self, req: CompletionRequest) -> Result<Completion, LlmError> {
        let call = self.prepare(&req, false);
        self.run(&call, |provider| self.attempt_complete(provider, &call))
            .await
    }

    /// A streamed answer. Retries and fallback happen only until the first event is
    /// ready for the caller; after that a failure is the stream's last item.
    pub async fn stream(&self, req: CompletionRequest) -> Result<EventStream, LlmError> {
        let call = self.prepare(&req, true);
        self.run(&call, |provider| self.attempt_stream(provider, &call))
            .await
    }

    fn prepare<'a>(&'a self, req: &'a CompletionRequest, stream: bool) -> Call<'a> {
        let config = &self.inner.config;
        let model = req.model.as_deref().filter(|m| !m.trim().is_empty());
        let model = model.unwrap_or(&config.default_model);
        let body = Bytes::from(request_body(req, model, stream).to_string());
        let price = config.prices.get(model).copied().unwrap_or_default();
        Call {
            model,
            body,
            price,
            deadline: Instant::now() + config.total_timeout,
        }
    }

    /// Providers serving `model`, lowest priority value first (ties keep config order).
    fn providers_for(&self, model: &str) -> Result<Vec<&ProviderConfig>, LlmError> {
        let mut providers: Vec<_> = self
            .inner
            .config
            .providers
            .iter()
            .filter(|p| p.serves(model))
            .collect();
        providers.sort_by_key(|p| p.priority);
        if providers.is_empty() {
            return Err(LlmError::UnknownModel {
                model: model.to_string(),
            });
        }
        Ok(providers)
    }

    async fn run<'a, T, F, Fut>(&'a self, call: &Call<'_>, mut attempt: F) -> Result<T, LlmError>
    where
        F: FnMut(&'a ProviderConfig) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let mut last = None;
        for provider in self.providers_for(call.model)? {
            match self.on_provider(call, provider, &mut attempt).await {
                Ok(value) => return Ok(value),
                Err((err, Next::Stop)) => return Err(err),
                Err((err, _)) => {
                    let kind = err.kind();
                    let name = provider.name.as_str();
                    tracing::warn!(
                        provider = name,
                        model = call.model,
                        kind,
                        "llm provider gave up"
                    );
                    last = Some(err);
                }
            }
            if remaining(call.deadline).is_none() {
                break;
            }
        }
        Err(last.unwrap_or_else(|| self.total_timeout("all providers")))
    }

    /// Attempts on one provider until success, a final error or the attempt budget is spent.
    async fn on_provider<'a, T, F, Fut>(
        &'a self,
        call: &Call<'_>,
        provider: &'a ProviderConfig,
        attempt: &mut F,
    ) -> Result<T, (LlmError, Next)>
    where
        F: FnMut(&'a ProviderConfig) -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let max = self.inner.config.max_attempts;
        for n in 1..=max {
            let err = match attempt(provider).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let step = next_step(&err);
            tracing::debug!(
                provider = %provider.name,
                attempt = n,
                kind = err.kind(),
                error = %err,
                "llm attempt failed"
            );
            if step != Next::Retry || n == max {
                return Err((err, step));
            }
            let wait = err.retry_after().unwrap_or_else(|| backoff(n));
            if remaining(call.deadline).is_none_or(|left| left <= wait) {
                return Err((err, Next::Fallback));
            }
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            tracing::debug!(provider = %provider.name, wait_ms, "llm retry");
            tokio::time::sleep(wait).await;
        }
        Err((self.total_timeout(&provider.name), Next::Fallback))
    }

    async fn attempt_complete(
        &self,
        p: &ProviderConfig,
        call: &Call<'_>,
    ) -> Result<Completion, LlmError> {
        let work = async {
            let response = self.send(p, call).await?;
            let body = response.bytes().await.map_err(|e| LlmError::Stream {
                provider: p.name.clone(),
                message: error_chain(&e),
            })?;
            parse_completion(&p.name, &body, call.model, &call.price)
        };
        tokio::time::timeout_at(call.deadline, work)
            .await
            .map_err(|_| self.total_timeout(&p.name))?
    }

    async fn attempt_stream(
        &self,
        p: &ProviderConfig,
        call: &Call<'_>,
    ) -> Result<EventStream, LlmError> {
        let config = &self.inner.config;
        let first = Instant::now() + config.first_token_timeout;
        let (until, what, limit) = if first < call.deadline {
            (first, "first token", config.first_token_timeout)
        } else {
            (call.deadline, "total", config.total_timeout)
        };
        let timeout = || LlmError::Timeout {
            provider: p.name.clone(),
            what,
            limit,
        };
        let response = tokio::time::timeout_at(until, self.send(p, call))
            .await
            .map_err(|_| timeout())??;

        let limits = Limits::new(config, first, call.deadline);
        let mut reader = EventReader::new(&p.name, response, call.model, call.price, limits);
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

    /// Sends the request; a non-2xx answer becomes the matching error.
    async fn send(
        &self,
        p: &ProviderConfig,
        call: &Call<'_>,
    ) -> Result<reqwest::Response, LlmError> {
        let url = format!("{}/chat/completions", p.base_url.trim_end_matches('/'));
        let mut request = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(call.body.clone());
        if let Some(key) = crate::keys::api_key(p).await? {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| LlmError::Connect {
            provider: p.name.clone(),
            message: error_chain(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        let retry_after = retry_after.map(str::to_string);
        let body = response.bytes().await.unwrap_or_default();
        Err(status_error(
            &p.name,
            status.as_u16(),
            retry_after.as_deref(),
            &body,
        ))
    }

    fn total_timeout(&self, provider: &str) -> LlmError {
        LlmError::Timeout {
            provider: provider.to_string(),
            what: "total",
            limit: self.inner.config.total_timeout,
        }
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
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(names("m1"), ["b", "a"]);
        assert_eq!(names("other"), ["b"]);
        let req = CompletionRequest {
            model: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(client.prepare(&req, false).model, "m1");
    }

    #[test]
    fn unknown_model_is_reported() {
        let client = LlmClient::new(LlmConfig::single("a", "http://127.0.0.1:1/v1", "m1")).unwrap();
        let err = client.providers_for("gpt-9").unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert!(err.to_string().contains("gpt-9"));
    }
}
