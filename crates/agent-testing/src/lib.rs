//! Test support shared by the agent crates: starts an agent on port 0 with embedded
//! SQLite state and the mock LLM, and reads its answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_agent_runtime::{AgentContext, Peers};
use agentmesh_llm::{LlmClient, LlmConfig};
use agentmesh_mock_llm::{MockConfig, MockLlm};
use agentmesh_proto::v1::{chat_event, ChatEvent, ChatRequest, Message};
use agentmesh_state::{State, StateConfig};
use std::future::Future;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const MODEL: &str = "mock-model";

pub struct Running {
    pub url: String,
    pub mock: MockLlm,
    pub state: State,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// SQLite state in a fresh temp dir.
pub async fn sqlite_state() -> (State, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = State::connect(&StateConfig::embedded(dir.path()))
        .await
        .unwrap();
    (state, dir)
}

/// Starts `serve` with `state`, the mock configured by `config` and `peers`.
pub async fn start<F, Fut>(
    serve: F,
    config: MockConfig,
    state: State,
    dir: tempfile::TempDir,
    peers: Peers,
) -> Running
where
    F: FnOnce(AgentContext, TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let llm = LlmClient::new(LlmConfig::single("mock", &mock.base_url(), MODEL)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel();
    let ctx = AgentContext {
        state: state.clone(),
        llm,
        peers,
    };
    tokio::spawn(serve(ctx, listener, stopped));
    Running {
        url,
        mock,
        state,
        _dir: dir,
        stop: Some(stop),
    }
}

pub fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.into(),
        ..Message::default()
    }
}

pub fn chat_request(messages: Vec<Message>, conversation_id: &str) -> ChatRequest {
    ChatRequest {
        messages,
        conversation_id: conversation_id.into(),
        model: "agent".into(),
        ..ChatRequest::default()
    }
}

/// Events of a stream until it ends, and the error that ended it, if any.
pub async fn collect(
    mut stream: tonic::Streaming<ChatEvent>,
) -> (Vec<chat_event::Event>, Option<tonic::Status>) {
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(e)) => events.extend(e.event),
            Ok(None) => return (events, None),
            Err(status) => return (events, Some(status)),
        }
    }
}

/// The concatenated text deltas.
pub fn text(events: &[chat_event::Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            chat_event::Event::Delta(d) => Some(d.text.as_str()),
            _ => None,
        })
        .collect()
}

pub fn meta(status: &tonic::Status, key: &str) -> String {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Every chat-completions request the mock received, as JSON text.
pub fn mock_log(mock: &MockLlm) -> Vec<String> {
    mock.requests().iter().map(|r| r.to_string()).collect()
}
