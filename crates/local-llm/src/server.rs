//! The local model behind an OpenAI-compatible HTTP endpoint on loopback.
//!
//! Agents reach every model the same way, through the LLM client over HTTP, so
//! retries, streaming, usage and timeouts follow one code path whether the
//! model is a hosted API or this process's CPU. It also lets one process hold
//! the model for every agent of `agentmesh up`, or serve it to agents in other
//! processes (`agentmesh-local-llm`).

use crate::LocalModel;
use agentmesh_llm::{ChatMessage, CompletionRequest, LlmError, LlmEvent, ToolSpec, Usage};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds a client should wait when the generation queue is full.
const BUSY_RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.
pub fn router(model: LocalModel) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(model)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    model: LocalModel,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener.tap_io(agentmesh_telemetry::net::no_delay),
        router(model),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn models(State(model): State<LocalModel>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": model.model_name(), "object": "model", "created": 0, "owned_by": "local"}
    ]}))
}

async fn chat(State(model): State<LocalModel>, body: axum::body::Bytes) -> Response {
    let body: ChatBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("invalid request: {err}")),
    };
    let stream = body.stream;
    let request = completion_request(body);
    if stream {
        stream_answer(model, request).await
    } else {
        match model.complete(request).await {
            Ok(done) => Json(json!({
                "id": completion_id(), "object": "chat.completion", "created": now(),
                "model": done.model,
                "choices": [{"index": 0, "finish_reason": done.finish_reason,
                    "message": {"role": "assistant", "content": done.content}}],
                "usage": usage_json(&done.usage),
            }))
            .into_response(),
            Err(err) => llm_error(&err),
        }
    }
}

fn completion_request(body: ChatBody) -> CompletionRequest {
    let stop = match body.stop {
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
        None => Vec::new(),
    };
    // The local model cannot call tools: a request offering them gets a plain answer.
    CompletionRequest {
        model: body.model,
        messages: body.messages,
        temperature: body.temperature,
        top_p: body.top_p,
        max_tokens: body.max_tokens,
        stop,
        tools: Vec::<ToolSpec>::new(),
        ..CompletionRequest::default()
    }
}

async fn stream_answer(model: LocalModel, request: CompletionRequest) -> Response {
    let name = model.model_name().to_string();
    let events = match model.stream(request).await {
        Ok(events) => events,
        Err(err) => return llm_error(&err),
    };
    let id = completion_id();
    let created = now();
    let chunk = move |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let body = futures::stream::once(async move { first })
        .chain(events.map(move |event| match event {
            Ok(LlmEvent::Delta(text)) => chunk(json!({"content": text}), Value::Null),
            Ok(LlmEvent::Usage(usage)) => {
                let mut usage_chunk = chunk(json!({}), Value::Null);
                usage_chunk["choices"] = json!([]);
                usage_chunk["usage"] = usage_json(&usage);
                usage_chunk
            }
            Ok(LlmEvent::Done { finish_reason, .. }) => chunk(json!({}), json!(finish_reason)),
            Ok(LlmEvent::ToolCall { .. }) => chunk(json!({}), Value::Null),
            Err(err) => json!({"error": {"message": err.to_string(), "type": "server_error",
                "code": null, "param": null}}),
        }))
        .map(|value| Ok::<Event, Infallible>(Event::default().data(value.to_string())))
        .chain(futures::stream::once(async {
            Ok(Event::default().data("[DONE]"))
        }));
    Sse::new(body).into_response()
}

fn usage_json(usage: &Usage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens})
}

/// 400 for a bad request, 503 with `Retry-After` when the queue is full, 500 otherwise.
fn llm_error(err: &LlmError) -> Response {
    match err {
        LlmError::BadRequest { message, .. } => error(StatusCode::BAD_REQUEST, message),
        LlmError::Upstream {
            status: 503,
            message,
            ..
        } => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(BUSY_RETRY_AFTER_SECS),
            );
            response
        }
        other => error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = json!({"error": {"message": message, "type": kind, "code": null, "param": null}});
    (status, Json(body)).into_response()
}

fn completion_id() -> String {
    format!("chatcmpl-local-{:x}", rand::random::<u64>())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
