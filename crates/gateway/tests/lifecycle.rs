//! Replicas, failures and shutdown: the gateway in front of real chat agents (each
//! replica in its own runtime, so killing it drops every connection at once) talking to
//! the mock provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use agentmesh_agent_runtime::balance::{static_resolver, PoolConfig};
use agentmesh_agent_runtime::{AgentContext, Peers};
use agentmesh_gateway::{AgentEndpoints, GatewayConfig};
use agentmesh_llm::{LlmClient, LlmConfig};
use agentmesh_mock_llm::{MockConfig, MockLlm, Rule};
use agentmesh_state::{State, StateConfig};
use futures::StreamExt;
use helpers::{chat_body, error_of, sse_data, ADMIN_KEY};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A words-long reply, streamed one word per `delay_ms`.
fn slow_reply(words: usize, delay_ms: u64, first_byte_ms: u64) -> MockConfig {
    let text: Vec<String> = (0..words).map(|i| format!("word{i}")).collect();
    MockConfig::new("mock-llm").with_rule(Rule {
        last_user_contains: Some("slow".into()),
        reply: Some(text.join(" ")),
        delay_ms: Some(delay_ms),
        first_byte_delay_ms: Some(first_byte_ms),
        ..Rule::default()
    })
}

/// One chat agent replica with its own mock provider, runtime and SQLite file.
struct Replica {
    address: SocketAddr,
    mock: MockLlm,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    served: Option<oneshot::Receiver<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(address: SocketAddr, mock: MockConfig) -> Replica {
        let mock = MockLlm::start("127.0.0.1:0".parse().unwrap(), mock)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (kill, kill_rx) = oneshot::channel::<()>();
        let (served_tx, served) = oneshot::channel();
        let base_url = mock.base_url();
        let data_dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let state = State::connect(&StateConfig::embedded(&data_dir))
                    .await
                    .unwrap();
                let llm = LlmClient::new(LlmConfig::single("mock", &base_url, "mock-llm")).unwrap();
                let ctx = AgentContext {
                    state,
                    llm,
                    peers: Peers::default(),
                };
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = agentmesh_chat::serve(ctx, listener, async move {
                    let _ = stop_rx.await;
                });
                tokio::select! {
                    result = serve => { let _ = served_tx.send(result); }
                    _ = kill_rx => {}
                }
            });
            // Drops every task of the replica, its connections included: a crash.
            runtime.shutdown_background();
        });
        Replica {
            address,
            mock,
            stop: Some(stop),
            kill: Some(kill),
            served: Some(served),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn kill(&mut self) {
        let _ = self.kill.take().unwrap().send(());
    }

    /// What SIGTERM does in the agent binary.
    fn terminate(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    async fn served(&mut self, within: Duration) -> anyhow::Result<()> {
        let served = self.served.take().unwrap();
        tokio::time::timeout(within, served)
            .await
            .expect("the replica stops within the drain period")
            .unwrap()
    }
}

/// Two replicas on 127.0.0.1 and 127.0.0.2 with the same port, behind one name.
async fn two_replicas(mock: MockConfig) -> (Replica, Replica, PoolConfig, String) {
    let first = Replica::start("127.0.0.1:0".parse().unwrap(), mock.clone()).await;
    let port = first.address.port();
    let second = Replica::start(SocketAddr::from(([127, 0, 0, 2], port)), mock).await;
    let name = "chat.agents.test";
    let table = HashMap::from([(name.to_string(), vec![first.address, second.address])]);
    let pool = PoolConfig {
        resolver: static_resolver(table),
        eject_for: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    (first, second, pool, format!("http://{name}:{port}"))
}

struct Gateway {
    url: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start_gateway(chat_url: &str, pool: PoolConfig, drain: Duration) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let state = State::connect(&StateConfig::embedded(dir.path()))
        .await
        .unwrap();
    let config = GatewayConfig {
        agents: AgentEndpoints {
            chat: chat_url.into(),
            search: chat_url.into(),
            data: chat_url.into(),
        },
        admin_key: Some(ADMIN_KEY.into()),
        request_timeout: Duration::from_secs(20),
        pool,
        drain,
        ..GatewayConfig::default()
    };
    agentmesh_gateway::bootstrap_admin_key(&state, &config)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = oneshot::channel::<()>();
    let served = tokio::spawn(agentmesh_gateway::serve(
        config,
        state,
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Gateway {
        url,
        client: reqwest::Client::new(),
        stop: Some(stop),
        served,
        _dir: dir,
    }
}

impl Gateway {
    fn chat(&self, prompt: &str, stream: bool) -> reqwest::RequestBuilder {
        let mut body = chat_body("chat", prompt);
        body["stream"] = json!(stream);
        self.client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
    }
}

/// How one request under load ended, from the client's side.
#[derive(Debug)]
enum Outcome {
    Answered,
    /// The stream had started, then ended with an error event: allowed.
    CutAfterStart,
    Lost(#[allow(dead_code)] String),
}

async fn one_request(client: reqwest::RequestBuilder, stream: bool) -> Outcome {
    let response = match client.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::Lost(format!("transport: {error}")),
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status != 200 {
        return Outcome::Lost(format!("{status}: {text}"));
    }
    if !stream {
        let body: Value = serde_json::from_str(&text).unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.starts_with("word0"), "{content}");
        return Outcome::Answered;
    }
    let events = sse_data(&text);
    match events.last().map(String::as_str) {
        Some("[DONE]") => Outcome::Answered,
        Some(last) if last.contains("\"error\"") && events.len() > 1 => Outcome::CutAfterStart,
        _ => Outcome::Lost(format!("stream: {text}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_loses_no_request_that_had_not_started_streaming() {
    let (mut doomed, survivor, pool, url) = two_replicas(slow_reply(6, 40, 150)).await;
    let gw = Arc::new(start_gateway(&url, pool, Duration::from_secs(5)).await);

    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for worker in 0..10 {
        let (gw, running) = (gw.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                let stream = (worker + i) % 2 == 0;
                outcomes.push(one_request(gw.chat("slow please", stream), stream).await);
                i += 1;
            }
            outcomes
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let served_before = doomed.mock.requests().len();
    let in_flight_at_kill = doomed.mock.in_flight();
    let survivor_before = survivor.mock.requests().len();
    doomed.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    running.store(false, Ordering::SeqCst);

    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    let lost: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Lost(_)))
        .collect();
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Answered))
        .count();
    assert!(lost.is_empty(), "lost requests: {lost:?}");
    assert!(served_before > 0, "the doomed replica had taken traffic");
    assert!(
        in_flight_at_kill > 0,
        "requests were in flight on the killed replica"
    );
    assert!(
        survivor.mock.requests().len() > survivor_before + 5,
        "the survivor took over"
    );
    assert!(answered > 20, "steady load: {answered} answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_replica_lets_its_streams_finish() {
    let (mut stopping, staying, pool, url) = two_replicas(slow_reply(12, 80, 0)).await;
    let gw = start_gateway(&url, pool, Duration::from_secs(5)).await;

    let mut streams = Vec::new();
    for _ in 0..6 {
        let response = gw.chat("slow please", true).send().await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    let mut texts = Vec::new();
    for stream in &mut streams {
        let first = stream.next().await.unwrap().unwrap();
        texts.push(String::from_utf8(first.to_vec()).unwrap());
    }
    let on_stopping = stopping.mock.requests().len();
    assert!(
        on_stopping > 0 && !staying.mock.requests().is_empty(),
        "both replicas hold streams ({on_stopping} on the stopping one)"
    );

    stopping.terminate();
    let mut fresh = Vec::new();
    for _ in 0..4 {
        fresh.push(one_request(gw.chat("slow please", false), false).await);
    }
    for (stream, text) in streams.iter_mut().zip(texts.iter_mut()) {
        while let Some(chunk) = stream.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }
    for text in &texts {
        let events = sse_data(text);
        assert_eq!(events.last().unwrap(), "[DONE]", "{text}");
        assert!(!text.contains("\"error\""), "{text}");
        let words: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert!(
            words.contains("word11"),
            "the whole answer arrived: {words}"
        );
    }
    assert!(
        fresh.iter().all(|o| matches!(o, Outcome::Answered)),
        "requests sent while one replica drained: {fresh:?}"
    );
    stopping.served(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_period_bounds_shutdown() {
    let mut replica = Replica::start("127.0.0.1:0".parse().unwrap(), slow_reply(100, 100, 0)).await;
    let mut gw = start_gateway(
        &replica.url(),
        PoolConfig::default(),
        Duration::from_secs(1),
    )
    .await;
    let response = gw.chat("slow please", true).send().await.unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();

    let started = Instant::now();
    let _ = gw.stop.take().unwrap().send(());
    let served = tokio::time::timeout(Duration::from_secs(5), &mut gw.served).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "it waited for the stream: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "then gave up: {took:?}");
    replica.terminate();
}

#[tokio::test]
async fn provider_failures_name_the_provider() {
    let mock = MockConfig::new("mock-llm")
        .with_rule(Rule {
            last_user_contains: Some("auth".into()),
            status: Some(401),
            message: Some("invalid api key".into()),
            ..Rule::default()
        })
        .with_rule(Rule {
            last_user_contains: Some("hang".into()),
            hang: true,
            ..Rule::default()
        });
    let mut replica = Replica::start("127.0.0.1:0".parse().unwrap(), mock).await;
    let gw = start_gateway(
        &replica.url(),
        PoolConfig::default(),
        Duration::from_secs(1),
    )
    .await;

    let response = gw.chat("auth please", false).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let error = error_of(response, 502).await;
    assert_eq!(error["code"], "provider_auth_failed");
    assert_eq!(error["type"], "upstream_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("mock"), "names the provider: {message}");

    let response = gw
        .chat("hang please", false)
        .header("x-agentmesh-timeout-ms", "2000")
        .send()
        .await
        .unwrap();
    let error = error_of(response, 504).await;
    assert_eq!(error["type"], "timeout_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("mock"), "names the provider: {message}");
    assert!(
        message.contains("1.9") || message.contains("19"),
        "names the limit: {message}"
    );
    replica.terminate();
}

/// A free loopback port for a child process to bind.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn status_of(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_gateway_binary_lets_20_open_streams_finish() {
    let mut replica = Replica::start("127.0.0.1:0".parse().unwrap(), slow_reply(15, 150, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentmesh-gateway"))
        .env("AGENTMESH_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTMESH_DATA_DIR", dir.path())
        .env("AGENTMESH_ADMIN_KEY", ADMIN_KEY)
        .env("AGENTMESH_CHAT_URL", replica.url())
        .env("AGENTMESH_SEARCH_URL", replica.url())
        .env("AGENTMESH_DATA_URL", replica.url())
        .env("AGENTMESH_SHUTDOWN_DELAY_MS", "1000")
        .env("AGENTMESH_DRAIN_SECONDS", "20")
        .env("AGENTMESH_LOG", "warn")
        .env_remove("AGENTMESH_DATABASE_URL")
        .env_remove("AGENTMESH_REDIS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut ready = None;
    for _ in 0..200 {
        ready = status_of(&probe, &format!("{base}/ready")).await;
        if ready == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, Some(200), "the gateway binary became ready");

    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"model": "chat", "stream": true,
                          "messages": [{"role": "user", "content": "slow please"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        streams.push((body, String::from_utf8(first.to_vec()).unwrap()));
    }

    let pid = gateway.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut unready_at = None;
    for _ in 0..100 {
        if status_of(&probe, &format!("{base}/ready")).await == Some(503) {
            unready_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready_at = unready_at.expect("/ready said 503 after SIGTERM");

    let finished =
        futures::future::join_all(streams.into_iter().map(|(mut body, mut text)| async move {
            while let Some(chunk) = body.next().await {
                text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            }
            (Instant::now(), text)
        }))
        .await;
    for (ended_at, text) in &finished {
        let events = sse_data(text);
        assert_eq!(events.last().unwrap(), "[DONE]", "{text}");
        assert!(!text.contains("\"error\""), "{text}");
        assert!(
            *ended_at > unready_at,
            "/ready said 503 before any stream ended"
        );
    }

    let exit = tokio::time::timeout(Duration::from_secs(20), gateway.wait())
        .await
        .expect("the gateway exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(status_of(&probe, &format!("{base}/health")).await, None);
    replica.terminate();
}
