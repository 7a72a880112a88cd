//! A finished stream hands its connection back to the pool: streamed calls made one after
//! another, each dropped right at `Done`, use one TCP connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agentmesh_llm::{ChatMessage, CompletionRequest, LlmClient, LlmConfig, LlmEvent};
use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;

const SSE: &str =
    "data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"model\":\"m1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";

#[tokio::test]
async fn streams_dropped_at_done_reuse_one_connection() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            // Chunked, like a real provider: the body's end comes after `[DONE]`.
            let frames = SSE
                .split_inclusive("\n\n")
                .map(|f| Ok::<_, Infallible>(f.to_string()));
            let body = Body::from_stream(futures::stream::iter(frames.collect::<Vec<_>>()));
            ([(header::CONTENT_TYPE, "text/event-stream")], body)
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = LlmConfig::single("local", &format!("http://{addr}/v1"), "m1");
    let client = LlmClient::new(config).unwrap();
    for _ in 0..3 {
        let request = CompletionRequest {
            messages: vec![ChatMessage::new("user", "hello")],
            ..CompletionRequest::default()
        };
        let mut events = client.stream(request).await.unwrap();
        while let Some(event) = events.next().await {
            if matches!(event.unwrap(), LlmEvent::Done { .. }) {
                break; // dropped here, before the stream's own end
            }
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    server.abort();
}
