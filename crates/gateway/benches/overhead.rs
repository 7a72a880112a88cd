//! The gateway's own overhead: one chat call made directly to an agent over gRPC and the
//! same call through the gateway (key check, rate limits, routing, usage ledger, JSON),
//! at 1, 64 and 512 concurrent clients, everything on 127.0.0.1.
//!
//! The agent answers at once (three events, no LLM), so the difference is the gateway.
//! Criterion measures time per request at each concurrency (its inverse is the
//! throughput); a second pass of `AGENTMESH_BENCH_SECONDS` (default 3) per case records
//! every latency and prints p50/p99 and requests per second for both paths.
//!
//! Rate limits run against Redis when `AGENTMESH_BENCH_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) answers, else in process; keys and the usage ledger live in
//! SQLite, or in a fresh Postgres database with `AGENTMESH_BENCH_DB=postgres` (server from
//! `AGENTMESH_TEST_DATABASE_URL`). The printout says which. The key has per-minute
//! request and token limits and a budget, so every limit runs on every request.
//!
//! A third pass offers a fixed load (`AGENTMESH_BENCH_RATE`, default 1000 requests/s)
//! spread over 64 and 512 clients, open loop: the added latency below saturation, where a
//! closed loop on two cores mostly measures queueing behind the other clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use agentmesh_gateway::{AgentEndpoints, GatewayConfig};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::agent_server::{Agent, AgentServer};
use agentmesh_proto::v1::chat_event::Event;
use agentmesh_proto::v1::*;
use agentmesh_state::testing::{fresh_postgres, TestDb};
use agentmesh_state::{State, StateConfig};
use criterion::Criterion;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The allocator of the gateway binary, so that the numbers are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_KEY: &str = "am-bench-admin-secret-0123456789";
const CONCURRENCY: [usize; 3] = [1, 64, 512];

/// Answers every chat at once: one delta, usage, final.
struct InstantAgent;

type Events = Pin<Box<dyn Stream<Item = Result<ChatEvent, Status>> + Send>>;

fn event(event: Event) -> Result<ChatEvent, Status> {
    Ok(ChatEvent { event: Some(event) })
}

#[tonic::async_trait]
impl Agent for InstantAgent {
    type ChatStream = Events;

    async fn chat(&self, _request: Request<ChatRequest>) -> Result<Response<Events>, Status> {
        let events = vec![
            event(Event::Delta(ContentDelta {
                text: "Hello world".into(),
            })),
            event(Event::Usage(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                cost_usd: 0.0,
            })),
            event(Event::Final(Final {
                finish_reason: "stop".into(),
                model: "instant".into(),
                conversation_id: String::new(),
            })),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse::default()))
    }
}

/// Both ways to ask, ready to call.
#[derive(Clone)]
struct Target {
    channel: Channel,
    http: reqwest::Client,
    completions: String,
    key: String,
}

impl Target {
    async fn direct(&self) {
        let message = Message {
            role: "user".into(),
            content: "hi".into(),
            ..Message::default()
        };
        let request = ChatRequest {
            messages: vec![message],
            ..ChatRequest::default()
        };
        let mut client = AgentClient::new(self.channel.clone());
        let stream = client.chat(request).await.unwrap().into_inner();
        let events = stream.count().await;
        assert_eq!(events, 3);
    }

    async fn gateway(&self) {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        let response = self
            .http
            .post(&self.completions)
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "Hello world");
    }

    async fn call(&self, through_gateway: bool) {
        if through_gateway {
            self.gateway().await;
        } else {
            self.direct().await;
        }
    }
}

async fn start_agent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(InstantAgent))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

async fn redis_url() -> Option<String> {
    let url = std::env::var("AGENTMESH_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let address = url.trim_start_matches("redis://").trim_end_matches('/');
    let reachable = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    matches!(reachable, Ok(Ok(_))).then_some(url)
}

async fn setup(dir: &std::path::Path) -> (Target, String, Option<TestDb>) {
    let agent_url = start_agent().await;
    let mut state_config = StateConfig::embedded(dir);
    let postgres = match std::env::var("AGENTMESH_BENCH_DB").as_deref() {
        Ok("postgres") => Some(fresh_postgres().await),
        _ => None,
    };
    if let Some(db) = &postgres {
        state_config.database_url = db.url.clone();
    }
    state_config.redis_url = redis_url().await;
    state_config.redis_prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
    let database = if postgres.is_some() {
        "Postgres"
    } else {
        "SQLite"
    };
    let limits = match &state_config.redis_url {
        Some(url) => format!("rate limits in Redis ({url}), {database}"),
        None => format!("rate limits in process (no Redis reachable), {database}"),
    };
    let state = State::connect(&state_config).await.unwrap();
    let config = GatewayConfig {
        agents: AgentEndpoints {
            chat: agent_url.clone(),
            search: agent_url.clone(),
            data: agent_url.clone(),
        },
        admin_key: Some(ADMIN_KEY.into()),
        ..GatewayConfig::default()
    };
    agentmesh_gateway::bootstrap_admin_key(&state, &config)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(agentmesh_gateway::serve(
        config,
        state,
        listener,
        std::future::pending(),
    ));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let created: Value = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "bench", "rpm_limit": 1_000_000_000u64,
                      "tpm_limit": 4_000_000_000u64, "budget_usd": 1_000_000.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let channel = Channel::from_shared(agent_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let target = Target {
        channel,
        http,
        completions: format!("{base}/v1/chat/completions"),
        key: created["key"]
            .as_str()
            .unwrap_or_else(|| panic!("key not created: {created}"))
            .to_string(),
    };
    (target, limits, postgres)
}

/// Runs `total` calls with `concurrency` workers; the wall time of all of them.
async fn batch(target: &Target, through_gateway: bool, concurrency: usize, total: u64) -> Duration {
    let left = Arc::new(AtomicUsize::new(usize::try_from(total).unwrap()));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, left) = (target.clone(), left.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    target.call(through_gateway).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    started.elapsed()
}

/// Every latency of `seconds` of calls with `concurrency` workers, and the wall time.
async fn sample(
    target: &Target,
    through_gateway: bool,
    concurrency: usize,
    seconds: Duration,
) -> (Vec<Duration>, Duration) {
    let until = Instant::now() + seconds;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let began = Instant::now();
                    target.call(through_gateway).await;
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    (all, started.elapsed())
}

/// Latencies of `seconds` of calls offered at a fixed total `rate` (requests per second)
/// spread over `concurrency` workers, each on its own schedule. A latency is counted from
/// when the call was due, not when it started, so a stalled gateway is not hidden by
/// workers that simply sent less (coordinated omission).
async fn paced(
    target: &Target,
    through_gateway: bool,
    concurrency: usize,
    rate: f64,
    seconds: Duration,
) -> (Vec<Duration>, Duration) {
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let started = Instant::now();
    let until = started + seconds;
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let target = target.clone();
            let offset = interval.mul_f64(i as f64 / concurrency as f64);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut due = started + offset;
                while due < until {
                    tokio::time::sleep_until(due.into()).await;
                    target.call(through_gateway).await;
                    latencies.push(due.elapsed());
                    due += interval;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    (all, started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Row {
    p50: Duration,
    p99: Duration,
    rps: f64,
}

fn row(mut latencies: Vec<Duration>, wall: Duration) -> Row {
    latencies.sort_unstable();
    Row {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        rps: latencies.len() as f64 / wall.as_secs_f64(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn report(runtime: &Runtime, target: &Target, limits: &str) {
    let seconds = std::env::var("AGENTMESH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seconds = Duration::from_secs(seconds);
    println!();
    println!("gateway overhead, {seconds:?} per case, {limits}");
    println!(
        "{:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>12} {:>12}",
        "clients",
        "direct50",
        "direct99",
        "direct/s",
        "gw50",
        "gw99",
        "gw/s",
        "overhead50",
        "overhead99"
    );
    for concurrency in CONCURRENCY {
        let (direct, direct_wall) = runtime.block_on(sample(target, false, concurrency, seconds));
        let (gateway, gateway_wall) = runtime.block_on(sample(target, true, concurrency, seconds));
        let (d, g) = (row(direct, direct_wall), row(gateway, gateway_wall));
        println!(
            "{:>7} | {:>9} {:>9} {:>9.0} | {:>9} {:>9} {:>9.0} | {:>12} {:>12}",
            concurrency,
            ms(d.p50),
            ms(d.p99),
            d.rps,
            ms(g.p50),
            ms(g.p99),
            g.rps,
            ms(g.p50.saturating_sub(d.p50)),
            ms(g.p99.saturating_sub(d.p99)),
        );
    }
    println!("(milliseconds; overhead = gateway minus direct at the same percentile)");

    let rate: f64 = std::env::var("AGENTMESH_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000.0);
    println!();
    println!("at an offered load of {rate} requests/s (open loop), {seconds:?} per case");
    println!(
        "{:>7} | {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>12} {:>12}",
        "clients", "direct50", "direct99", "gw50", "gw99", "gw/s", "overhead50", "overhead99"
    );
    for concurrency in CONCURRENCY.into_iter().filter(|c| *c > 1) {
        let (direct, _) = runtime.block_on(paced(target, false, concurrency, rate, seconds));
        let (gateway, wall) = runtime.block_on(paced(target, true, concurrency, rate, seconds));
        let (d, g) = (row(direct, seconds), row(gateway, wall));
        println!(
            "{:>7} | {:>9} {:>9} | {:>9} {:>9} {:>9.0} | {:>12} {:>12}",
            concurrency,
            ms(d.p50),
            ms(d.p99),
            ms(g.p50),
            ms(g.p99),
            g.rps,
            ms(g.p50.saturating_sub(d.p50)),
            ms(g.p99.saturating_sub(d.p99)),
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (target, limits, postgres) = runtime.block_on(setup(dir.path()));

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("overhead");
    for concurrency in CONCURRENCY {
        for (name, through_gateway) in [("direct", false), ("gateway", true)] {
            group.bench_function(format!("{name}/{concurrency}"), |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(batch(&target, through_gateway, concurrency, iters))
                })
            });
        }
    }
    group.finish();
    criterion.final_summary();

    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    if benchmarking {
        report(&runtime, &target, &limits);
    }
    if let Some(db) = postgres {
        runtime.block_on(db.cleanup());
    }
}
