//! HTTP routes of the mock: chat completions (whole or streamed), embeddings, model list,
//! health.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::answer::{frames, split_inside_char, whole, Answer, Frames};
use crate::config::{MockConfig, Rule};
use crate::embed::EmbedRequest;
use crate::plan::{pick, Prompt};

/// Pause between the two halves of a split character, so they leave in separate writes.
const SPLIT_PAUSE: Duration = Duration::from_millis(15);

pub(crate) struct Shared {
    pub config: MockConfig,
    used: Vec<AtomicU32>,
    pub requests: Mutex<Vec<Value>>,
    pub in_flight: AtomicUsize,
    pub in_flight_max: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub auth: Mutex<Vec<Option<String>>>,
    pub arrivals: Mutex<Vec<Duration>>,
    pub api_keys: Mutex<Vec<String>>,
    started: Instant,
    seq: AtomicU64,
    /// Flips to true on shutdown; hanging answers wait for it.
    stopping: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(config: MockConfig, stopping: watch::Receiver<bool>) -> Shared {
        let used = config.rules.iter().map(|_| AtomicU32::new(0)).collect();
        let api_keys = Mutex::new(config.api_keys.clone());
        Shared {
            config,
            used,
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            in_flight_max: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            auth: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            api_keys,
            started: Instant::now(),
            seq: AtomicU64::new(0),
            stopping,
        }
    }

    async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// Records the request's arrival and key; false when the key is not accepted.
    fn admit(&self, headers: &HeaderMap) -> bool {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push(self.started.elapsed());
        }
        if let Ok(mut seen) = self.auth.lock() {
            seen.push(auth.clone());
        }
        let Ok(keys) = self.api_keys.lock() else {
            return false;
        };
        let sent = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        keys.is_empty() || sent.is_some_and(|sent| keys.iter().any(|k| k == sent))
    }
}

/// Counts a request as in flight until dropped (for streams: until the body ends). Dropped
/// before `finish`, the client went away: a cancellation.
struct InFlight(Arc<Shared>, bool);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.in_flight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone(), false)
    }

    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
            tracing::debug!("mock request cancelled by the client");
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared)
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let model = json!({"id": shared.config.model, "object": "model", "created": 0,
                       "owned_by": "agentmesh-mock"});
    Json(json!({"object": "list", "data": [model]}))
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guard = InFlight::new(&shared);
    let body = match admit(&shared, &headers, &body) {
        Ok(body) => body,
        Err(response) => return finished(guard, response),
    };
    let prompt = match Prompt::parse(&body, &shared.config.model) {
        Ok(prompt) => prompt,
        Err(message) => return finished(guard, error(400, &message, None)),
    };
    let request_no = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let rule = pick(&shared.config, &shared.used, &prompt).cloned();
    tracing::debug!(request_no, model = %prompt.model, stream = prompt.stream, "mock request");
    respond(guard, prompt, rule.unwrap_or_default(), request_no).await
}

/// Deterministic vectors (see `embed.rs`); rules match the inputs as if they were the
/// last user message, so the same faults apply.
async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guard = InFlight::new(&shared);
    let body = match admit(&shared, &headers, &body) {
        Ok(body) => body,
        Err(response) => return finished(guard, response),
    };
    let config = &shared.config;
    let request = match EmbedRequest::parse(&body, &config.model, config.embedding_dim) {
        Ok(request) => request,
        Err(message) => return finished(guard, error(400, &message, None)),
    };
    let prompt = Prompt::for_embeddings(&request.model, &request.inputs);
    let request_no = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let rule = pick(config, &shared.used, &prompt)
        .cloned()
        .unwrap_or_default();
    tracing::debug!(request_no, model = %request.model, inputs = request.inputs.len(),
        "mock embeddings request");
    if let Some(response) = fault(&guard, &rule).await {
        return finished(guard, response);
    }
    let delay = rule
        .delay_ms
        .map_or(config.chunk_delay, Duration::from_millis);
    pause(delay).await;
    let answer = request.answer(rule.embeddings_short_by.unwrap_or(0));
    finished(guard, Json(answer).into_response())
}

/// Records the request (body, key, arrival) and reads its JSON; an unreadable body is a
/// 400, a key not accepted a 401.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn admit(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    let admitted = shared.admit(headers);
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, &format!("body is not valid JSON: {e}"), None))?;
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(body.clone());
    }
    if !admitted {
        return Err(error(401, "Incorrect API key provided", None));
    }
    Ok(body)
}

/// The rule's fault, if it has one: after its first-byte delay, an error status, or a hang
/// until shutdown.
async fn fault(guard: &InFlight, rule: &Rule) -> Option<Response> {
    if let Some(ms) = rule.first_byte_delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = rule.status {
        let message = rule
            .message
            .clone()
            .unwrap_or_else(|| format!("mock fault {status}"));
        let retry_after = rule.retry_after.as_ref().map(ToString::to_string);
        return Some(error(status, &message, retry_after.as_deref()));
    }
    if rule.hang {
        guard.0.stopped().await;
        return Some(error(503, "the mock is shutting down", None));
    }
    None
}

fn finished(guard: InFlight, response: Response) -> Response {
    guard.finish();
    response
}

async fn respond(guard: InFlight, mut prompt: Prompt, rule: Rule, request_no: u64) -> Response {
    if let Some(response) = fault(&guard, &rule).await {
        return finished(guard, response);
    }
    if let Some(model) = &rule.response_model {
        prompt.model.clone_from(model);
    }
    prompt.include_usage &= !rule.omit_usage;
    let answer = Answer::new(&rule, &prompt, request_no);
    let delay = rule
        .delay_ms
        .map_or(guard.0.config.chunk_delay, Duration::from_millis);
    if !prompt.stream {
        pause(delay).await;
        return finished(
            guard,
            Json(whole(&prompt, &answer, request_no)).into_response(),
        );
    }
    let frames = frames(&prompt, &answer, request_no, rule.tool_deltas);
    let body = Body::from_stream(sse_body(guard, frames, rule, delay));
    let content_type = HeaderValue::from_static("text/event-stream");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Sleeps for `delay`; no sleep at all for zero, which would still wait for the timer
/// wheel's next tick (about a millisecond per chunk).
async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn sse_body(
    guard: InFlight,
    frames: Frames,
    rule: Rule,
    delay: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    async_stream::stream! {
        let Frames { opening, content, closing } = frames;
        let cut = rule.cut_after_chunks.unwrap_or(usize::MAX);
        let stall = rule.hang_after_chunks.unwrap_or(usize::MAX);
        yield Ok(Bytes::from(opening));
        for (i, frame) in content.into_iter().enumerate() {
            if i >= cut {
                guard.finish();
                return;
            }
            if i >= stall {
                guard.0.stopped().await;
                guard.finish();
                return;
            }
            pause(delay).await;
            if rule.split_utf8 {
                if let Some((a, b)) = split_inside_char(frame.as_bytes()) {
                    yield Ok(Bytes::copy_from_slice(a));
                    tokio::time::sleep(SPLIT_PAUSE).await;
                    yield Ok(Bytes::copy_from_slice(b));
                    continue;
                }
            }
            yield Ok(Bytes::from(frame));
        }
        for frame in closing {
            yield Ok(Bytes::from(frame));
        }
        guard.finish();
    }
}

/// An OpenAI-shaped error answer.
fn error(status: u16, message: &str, retry_after: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16(),
                                "param": null}});
    let mut response = (status, Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
