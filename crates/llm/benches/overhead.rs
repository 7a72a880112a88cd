//! The LLM client's own cost: one non-streamed call and one streamed answer through
//! `LlmClient`, against the same request sent with a bare `reqwest::Client` to the same
//! server, which answers from memory on 127.0.0.1 (a fixed completion, or a fixed SSE body
//! of N content chunks). The server's cost is the same for both paths, so the difference is
//! the client: body building, provider choice, circuit, span and metrics, response parsing,
//! usage and cost. Per chunk: (time at 201 chunks - time at 1 chunk) / 200, for each path.
//!
//! The Prometheus recorder is installed, as in every service, so metrics are really
//! recorded. The server runs on its own thread and runtime; the calls on another.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_llm::{ChatMessage, CompletionRequest, LlmClient, LlmConfig, LlmEvent};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::StreamExt;
use serde_json::json;
use tokio::runtime::Runtime;

const MODEL: &str = "bench-model";
const MANY: usize = 201;

/// Answers prepared once: the whole completion, and SSE bodies by chunk count.
struct Answers {
    whole: Bytes,
    streams: Vec<(usize, Bytes)>,
}

fn whole_answer() -> Bytes {
    let body = json!({"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "A pod is the smallest deployable unit of computing in Kubernetes."},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23}});
    Bytes::from(body.to_string())
}

fn sse_answer(chunks: usize) -> Bytes {
    let mut out = String::new();
    let frame = |delta: serde_json::Value, finish: serde_json::Value| {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    out.push_str(&frame(
        json!({"role": "assistant", "content": ""}),
        json!(null),
    ));
    for i in 0..chunks {
        out.push_str(&frame(json!({"content": format!(" word{i}")}), json!(null)));
    }
    out.push_str(&frame(json!({}), json!("stop")));
    let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0,
        "model": MODEL, "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}});
    out.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    Bytes::from(out)
}

async fn answer(
    State(answers): State<Arc<Answers>>,
    Path(chunks): Path<usize>,
    body: Bytes,
) -> Response {
    let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
    if !streamed {
        let json = [(header::CONTENT_TYPE, "application/json")];
        return (json, Body::from(answers.whole.clone())).into_response();
    }
    let sse = answers.streams.iter().find(|(n, _)| *n == chunks);
    let Some((_, bytes)) = sse else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let events = [(header::CONTENT_TYPE, "text/event-stream")];
    (events, Body::from(bytes.clone())).into_response()
}

/// Starts the server on its own thread; returns `http://127.0.0.1:PORT`.
fn start_server() -> String {
    let answers = Arc::new(Answers {
        whole: whole_answer(),
        streams: vec![(1, sse_answer(1)), (MANY, sse_answer(MANY))],
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new()
                .route("/{chunks}/v1/chat/completions", post(answer))
                .with_state(answers);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn request() -> CompletionRequest {
    CompletionRequest {
        model: Some(MODEL.into()),
        messages: vec![
            ChatMessage::new("system", "Answer in one short sentence."),
            ChatMessage::new("user", "What is a Kubernetes pod?"),
        ],
        max_tokens: Some(60),
        ..CompletionRequest::default()
    }
}

/// The body the client sends, byte for byte the same shape, for the raw path.
fn raw_body(stream: bool) -> Bytes {
    let mut body = json!({"model": MODEL, "messages": [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "What is a Kubernetes pod?"}],
        "stream": stream, "max_tokens": 60});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

fn client(server: &str, chunks: usize) -> LlmClient {
    let base = format!("{server}/{chunks}/v1");
    LlmClient::new(LlmConfig::single("bench", &base, MODEL)).unwrap()
}

async fn client_call(client: &LlmClient) {
    let answer = client.complete(request()).await.unwrap();
    assert_eq!(answer.usage.completion_tokens, 11);
}

async fn raw_call(http: &reqwest::Client, url: &str, body: &Bytes) {
    let response = http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let bytes = response.bytes().await.unwrap();
    assert!(!bytes.is_empty());
}

async fn client_stream(client: &LlmClient, chunks: usize) {
    let mut events = client.stream(request()).await.unwrap();
    let mut deltas = 0;
    while let Some(event) = events.next().await {
        match event.unwrap() {
            LlmEvent::Delta(_) => deltas += 1,
            LlmEvent::Done { .. } => break,
            _ => {}
        }
    }
    assert!(deltas >= chunks);
}

async fn raw_stream(http: &reqwest::Client, url: &str, body: &Bytes) {
    let response = http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut total = 0;
    while let Some(bytes) = stream.next().await {
        total += bytes.unwrap().len();
    }
    assert!(total > 0);
}

/// Time of `iters` sequential runs of `f` on the runtime.
fn timed<F, Fut>(rt: &Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    agentmesh_telemetry::metrics::install();
    let server = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let (whole, streamed) = (raw_body(false), raw_body(true));

    let mut group = c.benchmark_group("call");
    let llm = client(&server, 1);
    let url = format!("{server}/1/v1/chat/completions");
    group.bench_function("client", |b| {
        b.iter_custom(|n| timed(&rt, n, || client_call(&llm)))
    });
    group.bench_function("raw", |b| {
        b.iter_custom(|n| timed(&rt, n, || raw_call(&http, &url, &whole)))
    });
    group.finish();

    for chunks in [1, MANY] {
        let mut group = c.benchmark_group(format!("stream_{chunks}_chunks"));
        let llm = client(&server, chunks);
        let url = format!("{server}/{chunks}/v1/chat/completions");
        group.bench_function("client", |b| {
            b.iter_custom(|n| timed(&rt, n, || client_stream(&llm, chunks)))
        });
        group.bench_function("raw", |b| {
            b.iter_custom(|n| timed(&rt, n, || raw_stream(&http, &url, &streamed)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
