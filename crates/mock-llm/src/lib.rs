//! A scriptable OpenAI-compatible fake provider for tests, benchmarks and offline use.
//!
//! It is a real HTTP server: clients talk to it exactly as to a hosted API. Rules in a
//! [`MockConfig`] pick canned replies, tool calls, or faults (error statuses with
//! `Retry-After`, hangs, cut streams, characters split across writes, slow chunks).
//! Without a rule it answers plainly that it is a mock. `/v1/embeddings` answers with
//! deterministic vectors ([`embedding`]) and the same rules' faults.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod answer;
mod config;
mod embed;
mod plan;
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use axum::serve::ListenerExt;
pub use config::{MockConfig, MockToolCall, RetryAfter, Rule, ToolDeltas};
pub use embed::{embed as embedding, DEFAULT_DIM as DEFAULT_EMBEDDING_DIM};
use server::Shared;

/// How long shutdown waits for open connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running mock server. Dropping it stops the server too.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockLlm {
    /// Binds `addr` (port 0 picks a free port) and serves until shutdown.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> anyhow::Result<MockLlm> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared::new(config, stopping.clone()));
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            let mut stopping = stopping;
            axum::serve(listener.tap_io(agentmesh_telemetry::net::no_delay), app)
                .with_graceful_shutdown(async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(%addr, "mock llm listening");
        Ok(MockLlm {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1` (loopback when bound to every interface).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/v1")
    }

    /// Every request body received so far (chat completions and embeddings), in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The most requests that were open at the same time.
    pub fn in_flight_max(&self) -> usize {
        self.shared
            .in_flight_max
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `Authorization` header of every request, in arrival order.
    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.shared
            .auth
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// When each request arrived, counted from the server's start.
    pub fn arrivals(&self) -> Vec<Duration> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Requests whose client went away before the answer was fully sent (a dropped stream,
    /// a timed-out hang): the server saw the cancellation.
    pub fn cancelled(&self) -> usize {
        self.shared
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the accepted API keys (empty: any request is accepted).
    pub fn set_api_keys(&self, keys: &[&str]) {
        if let Ok(mut accepted) = self.shared.api_keys.lock() {
            *accepted = keys.iter().map(|k| k.to_string()).collect();
        }
    }

    /// Requests open right now (a stream counts until its body ends).
    pub fn in_flight(&self) -> usize {
        self.shared
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting, ends hanging answers, waits briefly for open streams, then cuts them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
