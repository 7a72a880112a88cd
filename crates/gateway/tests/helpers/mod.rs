//! Test harness: fake tonic agents and the gateway on port 0 over SQLite state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_gateway::{AgentEndpoints, GatewayConfig};
use agentmesh_proto::v1::agent_server::{Agent, AgentServer};
use agentmesh_proto::v1::chat_event::Event;
use agentmesh_proto::v1::data_server::{Data, DataServer};
use agentmesh_proto::v1::search_server::{Search, SearchServer};
use agentmesh_proto::v1::*;
use agentmesh_state::{NewApiKey, State, StateConfig};
use futures::Stream;
use serde_json::Value;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

pub const ADMIN_KEY: &str = "am-test-admin-secret-0123456789";

/// What the fake agents saw.
#[derive(Default)]
pub struct Seen {
    pub chat_calls: usize,
    pub request_ids: Vec<String>,
    pub key_ids: Vec<String>,
    pub timeouts: Vec<Option<String>>,
    pub requests: Vec<ChatRequest>,
    /// Streams dropped before their last event (the gateway cancelled the call).
    pub cancelled: usize,
}

/// Counts a stream as cancelled unless it reached its end.
struct CancelGuard {
    seen: Arc<Mutex<Seen>>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.seen.lock().unwrap().cancelled += 1;
        }
    }
}

#[derive(Clone, Default)]
pub struct FakeAgent {
    pub seen: Arc<Mutex<Seen>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, Status>> + Send>>;

fn event(event: Event) -> Result<ChatEvent, Status> {
    Ok(ChatEvent { event: Some(event) })
}

fn delta(text: &str) -> Result<ChatEvent, Status> {
    event(Event::Delta(ContentDelta { text: text.into() }))
}

fn finish(conversation_id: &str) -> Result<ChatEvent, Status> {
    event(Event::Final(Final {
        finish_reason: "stop".into(),
        model: "fake-llm".into(),
        conversation_id: conversation_id.into(),
    }))
}

fn usage() -> Result<ChatEvent, Status> {
    event(Event::Usage(Usage {
        prompt_tokens: 5,
        completion_tokens: 2,
        cost_usd: 0.001,
    }))
}

/// A Status as the real agents send it, with the gateway's error metadata.
pub fn provider_error() -> Status {
    let mut status = Status::unavailable("provider primary rejected our API key");
    let metadata = status.metadata_mut();
    metadata.insert("x-agentmesh-http-status", "502".parse().unwrap());
    metadata.insert("x-agentmesh-error-type", "upstream_error".parse().unwrap());
    metadata.insert(
        "x-agentmesh-error-code",
        "provider_auth_failed".parse().unwrap(),
    );
    status
}

/// The last user message picks the script.
fn script(prompt: &str, conversation_id: &str) -> Vec<Result<ChatEvent, Status>> {
    match prompt {
        "fail-early" => vec![Err(provider_error())],
        "fail-mid" => vec![delta("partial"), Err(provider_error())],
        "no-final" => vec![delta("cut")],
        "tools" => vec![
            event(Event::ToolCall(ToolCallDelta {
                index: 0,
                id: "call_1".into(),
                name: "search_documents".into(),
                arguments: r#"{"query":"pods"}"#.into(),
            })),
            event(Event::ToolResult(ToolResult {
                tool_call_id: "call_1".into(),
                name: "search_documents".into(),
                content: "Pods are the smallest unit.".into(),
                is_error: false,
            })),
            delta("Pods are small."),
            event(Event::Citations(Citations {
                citations: vec![Citation {
                    document_id: "pods".into(),
                    title: "Pods".into(),
                    source: "k8s".into(),
                    heading: "Intro".into(),
                    score: 1.5,
                }],
            })),
            usage(),
            finish(conversation_id),
        ],
        _ => vec![
            delta("Hello"),
            delta(" world"),
            usage(),
            finish(conversation_id),
        ],
    }
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    type ChatStream = EventStream;

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<EventStream>, Status> {
        let text = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        {
            let mut seen = self.seen.lock().unwrap();
            seen.chat_calls += 1;
            seen.request_ids
                .push(text("x-request-id").unwrap_or_default());
            seen.key_ids
                .push(text("x-agentmesh-key-id").unwrap_or_default());
            seen.timeouts.push(text("grpc-timeout"));
            seen.requests.push(request.get_ref().clone());
        }
        let chat = request.into_inner();
        let prompt = chat
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let events = script(&prompt, &chat.conversation_id);
        let delay = |prefix: &str| {
            prompt
                .strip_prefix(prefix)
                .and_then(|ms| ms.parse::<u64>().ok())
        };
        let (slow, pause) = (delay("slow:"), delay("pause:"));
        let guard = CancelGuard {
            seen: self.seen.clone(),
            finished: false,
        };
        let stream = async_stream::stream! {
            let mut guard = guard;
            if let Some(ms) = slow {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            for (i, item) in events.into_iter().enumerate() {
                yield item;
                if let (0, Some(ms)) = (i, pause) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            guard.finished = true;
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        Ok(Response::new(DescribeResponse {
            name: "fake".into(),
            version: "0".into(),
            model: "fake-llm".into(),
            tools: vec![],
        }))
    }
}

#[derive(Clone, Default)]
pub struct FakeSearch;

#[tonic::async_trait]
impl Search for FakeSearch {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let doc = request.into_inner();
        let id = if doc.id.is_empty() {
            "doc-1".to_string()
        } else {
            doc.id
        };
        Ok(Response::new(IngestResponse {
            id,
            chunks: 2,
            replaced: false,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let deleted = request.into_inner().id != "missing";
        Ok(Response::new(DeleteDocumentResponse { deleted }))
    }

    async fn list(
        &self,
        _request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let doc = Document {
            id: "pods".into(),
            title: "Pods".into(),
            source: "k8s".into(),
            chunks: 3,
            metadata_json: r#"{"lang":"en"}"#.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
        };
        Ok(Response::new(ListDocumentsResponse {
            documents: vec![doc],
        }))
    }

    async fn query(
        &self,
        request: Request<SearchQueryRequest>,
    ) -> Result<Response<SearchQueryResponse>, Status> {
        let query = request.into_inner();
        let passage = Passage {
            document_id: "pods".into(),
            title: "Pods".into(),
            source: "k8s".into(),
            heading: "Intro".into(),
            text: format!("about {}", query.query),
            score: f64::from(query.top_k),
        };
        Ok(Response::new(SearchQueryResponse {
            results: vec![passage],
        }))
    }
}

/// (table name, CSV bytes) of a registered dataset.
pub type Registered = (String, Vec<u8>);

#[derive(Clone, Default)]
pub struct FakeData {
    pub registered: Arc<Mutex<Vec<Registered>>>,
}

#[tonic::async_trait]
impl Data for FakeData {
    async fn register_dataset(
        &self,
        request: Request<RegisterDatasetRequest>,
    ) -> Result<Response<Dataset>, Status> {
        let dataset = request.into_inner();
        self.registered
            .lock()
            .unwrap()
            .push((dataset.name.clone(), dataset.csv.clone()));
        let rows = dataset
            .csv
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            .saturating_sub(1);
        Ok(Response::new(Dataset {
            name: dataset.name,
            columns: vec![Column {
                name: "id".into(),
                r#type: "integer".into(),
            }],
            row_count: rows as u64,
            created_at: "2025-01-01T00:00:00Z".into(),
        }))
    }

    async fn load_dump(
        &self,
        _request: Request<LoadDumpRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        Err(Status::unimplemented("the fake data agent loads no dumps"))
    }

    async fn list_datasets(
        &self,
        _request: Request<ListDatasetsRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        Ok(Response::new(ListDatasetsResponse { datasets: vec![] }))
    }

    async fn query(
        &self,
        request: Request<DataQueryRequest>,
    ) -> Result<Response<DataQueryResponse>, Status> {
        let sql = request.into_inner().sql;
        if sql.to_lowercase().starts_with("delete") {
            let mut status = Status::invalid_argument("only read-only queries are allowed");
            status.metadata_mut().insert(
                "x-agentmesh-error-code",
                "sql_not_read_only".parse().unwrap(),
            );
            status
                .metadata_mut()
                .insert("x-agentmesh-error-param", "sql".parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(DataQueryResponse {
            columns: vec!["id".into()],
            rows_json: "[[1],[2]]".into(),
            row_count: 2,
            truncated: false,
        }))
    }
}

/// Serves all three fake services plus gRPC health on one port.
pub async fn start_agents(agent: FakeAgent, data: FakeData) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("agentmesh.v1.Agent", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(AgentServer::new(agent))
            .add_service(SearchServer::new(FakeSearch))
            .add_service(DataServer::new(data))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    url
}

pub struct TestGateway {
    pub url: String,
    pub client: reqwest::Client,
    pub state: State,
    pub agent: FakeAgent,
    pub data: FakeData,
    shutdown: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

pub struct Options {
    pub max_body_bytes: usize,
    pub agents_down: bool,
    pub keepalive: Duration,
    /// Calls in flight per agent before the gateway answers 503.
    pub max_concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            agents_down: false,
            keepalive: Duration::from_secs(15),
            max_concurrency: 1024,
        }
    }
}

pub async fn start() -> TestGateway {
    start_with(Options::default()).await
}

pub async fn start_with(options: Options) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let state = State::connect(&StateConfig::embedded(dir.path()))
        .await
        .unwrap();
    start_on(state, dir, options).await
}

/// The gateway over `state`; `dir` lives as long as the gateway.
pub async fn start_on(state: State, dir: tempfile::TempDir, options: Options) -> TestGateway {
    let agent = FakeAgent::default();
    let data = FakeData::default();
    let agents_url = if options.agents_down {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", unused.local_addr().unwrap());
        drop(unused);
        url
    } else {
        start_agents(agent.clone(), data.clone()).await
    };
    let config = GatewayConfig {
        agents: AgentEndpoints {
            chat: agents_url.clone(),
            search: agents_url.clone(),
            data: agents_url,
        },
        admin_key: Some(ADMIN_KEY.into()),
        request_timeout: Duration::from_secs(10),
        max_body_bytes: options.max_body_bytes,
        keepalive: options.keepalive,
        pool: agentmesh_agent_runtime::balance::PoolConfig {
            max_concurrency: options.max_concurrency,
            ..Default::default()
        },
        ..GatewayConfig::default()
    };
    let created = agentmesh_gateway::bootstrap_admin_key(&state, &config)
        .await
        .unwrap();
    assert!(
        created.is_none(),
        "a configured admin key is stored, not generated"
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let served = tokio::spawn(agentmesh_gateway::serve(
        config,
        state.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    TestGateway {
        url,
        client: reqwest::Client::new(),
        state,
        agent,
        data,
        shutdown: Some(tx),
        served,
        _dir: dir,
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Creates a key through the admin API and returns (id, secret).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let response = self.post("/admin/keys", ADMIN_KEY, body).await;
        assert_eq!(response.status(), 201);
        let value: Value = response.json().await.unwrap();
        (
            value["id"].as_str().unwrap().into(),
            value["key"].as_str().unwrap().into(),
        )
    }

    /// Stores a key directly, for states the API refuses to create (already expired).
    pub async fn insert_key(&self, secret: &str, new: impl FnOnce(&mut NewApiKey)) -> String {
        let mut key = NewApiKey {
            id: format!("key_test_{}", uuid_like(secret)),
            name: "test".into(),
            prefix: secret.chars().take(11).collect(),
            secret_hash: agentmesh_state::hash_secret(secret),
            scopes: vec![],
            rpm_limit: None,
            tpm_limit: None,
            budget_usd: None,
            expires_at: None,
        };
        new(&mut key);
        self.state.db.create_key(key).await.unwrap().id
    }
}

fn uuid_like(secret: &str) -> String {
    agentmesh_state::hash_secret(secret)[..16].to_string()
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn chat_body(model: &str, prompt: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// Asserts the OpenAI error shape and returns the `error` object.
pub async fn error_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "body: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "{body}"
    );
    error
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
        })
        .map(|data| data.trim().to_string())
        .collect()
}
