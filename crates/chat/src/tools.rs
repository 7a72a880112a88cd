//! The other agents offered to the model as tools, called over gRPC.

use agentmesh_agent_runtime::balance::{is_transport_failure, AgentPool, PoolConfig};
use agentmesh_agent_runtime::{Peers, RequestMeta};
use agentmesh_llm::{ToolCall, ToolSpec};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::{chat_event, ChatRequest, Message, SearchQueryRequest};
use serde_json::{json, Value};
use std::time::Duration;
use tonic::transport::Channel;

pub const SEARCH_TOOL: &str = "search_documents";
pub const DATA_TOOL: &str = "query_data";
/// Passages a search tool call returns to the model.
const SEARCH_TOP_K: u32 = 5;
/// Longest passage text handed to the model.
const PASSAGE_CHARS: usize = 1200;
/// Bound on one tool call, so a stuck peer cannot hold the conversation; shorter when
/// the caller's deadline is nearer.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Balanced pools over every address of the peers that are configured.
#[derive(Clone, Default)]
pub struct Tools {
    search: Option<AgentPool>,
    data: Option<AgentPool>,
}

/// What a tool call produced; errors go back to the model, never end the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn error(message: impl Into<String>) -> Self {
        Self {
            content: message.into(),
            is_error: true,
        }
    }
}

fn pool(agent: &str, url: &str) -> anyhow::Result<AgentPool> {
    AgentPool::new(agent, url, PoolConfig::default())
        .map_err(|e| anyhow::anyhow!("peer url {url:?} is invalid: {e}"))
}

impl Tools {
    pub fn new(peers: &Peers) -> anyhow::Result<Self> {
        let search = peers.search.as_deref().map(|url| pool("search", url));
        let data = peers.data.as_deref().map(|url| pool("data", url));
        Ok(Self {
            search: search.transpose()?,
            data: data.transpose()?,
        })
    }

    /// Names of the tools on offer.
    pub fn names(&self) -> Vec<String> {
        self.specs().into_iter().map(|s| s.name).collect()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        if self.search.is_some() {
            specs.push(ToolSpec {
                name: SEARCH_TOOL.into(),
                description: "Search the ingested documents; returns the best passages \
                              with their titles and document ids."
                    .into(),
                parameters: one_string_param("query", "What to search for."),
            });
        }
        if self.data.is_some() {
            specs.push(ToolSpec {
                name: DATA_TOOL.into(),
                description: "Answer a question over the loaded tabular datasets by \
                              running a read-only SQL query; returns the SQL, rows and a \
                              summary."
                    .into(),
                parameters: one_string_param("question", "The question, in plain words."),
            });
        }
        specs
    }

    /// Runs one call; every failure becomes an error result for the model.
    pub async fn call(&self, call: &ToolCall, meta: &RequestMeta) -> ToolOutput {
        let run = async {
            match call.name.as_str() {
                SEARCH_TOOL => self.search_documents(&call.arguments, meta).await,
                DATA_TOOL => self.query_data(&call.arguments, meta).await,
                other => ToolOutput::error(format!("unknown tool {other:?}")),
            }
        };
        let limit = meta
            .remaining()
            .map_or(TOOL_TIMEOUT, |left| left.min(TOOL_TIMEOUT));
        match tokio::time::timeout(limit, run).await {
            Ok(output) => output,
            Err(_) => ToolOutput::error(format!("{} timed out after {limit:?}", call.name)),
        }
    }

    async fn search_documents(&self, arguments: &str, meta: &RequestMeta) -> ToolOutput {
        let Some(pool) = &self.search else {
            return ToolOutput::error("search_documents is not available");
        };
        let query = match string_arg(arguments, "query") {
            Ok(q) => q,
            Err(e) => return ToolOutput::error(e),
        };
        let answer = pool
            .unary(|channel| {
                let mut request = tonic::Request::new(SearchQueryRequest {
                    query: query.clone(),
                    top_k: SEARCH_TOP_K,
                });
                meta.apply(request.metadata_mut());
                async move { SearchClient::new(channel).query(request).await }
            })
            .await;
        match answer {
            Ok(response) => ToolOutput {
                content: passages_text(response.into_inner()),
                is_error: false,
            },
            Err(status) => ToolOutput::error(format!("search failed: {}", status.message())),
        }
    }

    async fn query_data(&self, arguments: &str, meta: &RequestMeta) -> ToolOutput {
        let Some(pool) = &self.data else {
            return ToolOutput::error("query_data is not available");
        };
        let question = match string_arg(arguments, "question") {
            Ok(q) => q,
            Err(e) => return ToolOutput::error(e),
        };
        let message = Message {
            role: "user".into(),
            content: question,
            ..Message::default()
        };
        let chat = ChatRequest {
            messages: vec![message],
            ..ChatRequest::default()
        };
        match collect_answer(pool, &chat, meta).await {
            Ok(text) => ToolOutput {
                content: text,
                is_error: false,
            },
            Err(status) => ToolOutput::error(format!("query_data failed: {}", status.message())),
        }
    }
}

/// The text of another agent's streamed answer. A transport failure before the first
/// event moves the call to another address of the peer; after it, the error stands.
async fn collect_answer(
    pool: &AgentPool,
    chat: &ChatRequest,
    meta: &RequestMeta,
) -> Result<String, tonic::Status> {
    let mut slot = pool.call()?;
    let mut last = None;
    while let Some(channel) = slot.next_channel(last.is_some()).await? {
        match read_answer(channel, chat, meta).await {
            Err((status, false)) if is_transport_failure(&status) => {
                slot.failed();
                last = Some(status);
            }
            Err((status, _)) => return Err(status),
            Ok(text) => return Ok(text),
        }
    }
    Err(last.unwrap_or_else(|| tonic::Status::unavailable("no address of the peer left")))
}

/// One attempt; an error says whether any event had arrived before it.
async fn read_answer(
    channel: Channel,
    chat: &ChatRequest,
    meta: &RequestMeta,
) -> Result<String, (tonic::Status, bool)> {
    let mut request = tonic::Request::new(chat.clone());
    meta.apply(request.metadata_mut());
    let opened = AgentClient::new(channel).chat(request).await;
    let mut stream = opened.map_err(|status| (status, false))?.into_inner();
    let mut text = String::new();
    let mut started = false;
    while let Some(event) = stream.message().await.map_err(|status| (status, started))? {
        started = true;
        if let Some(chat_event::Event::Delta(delta)) = event.event {
            text.push_str(&delta.text);
        }
    }
    Ok(text)
}

fn one_string_param(name: &str, description: &str) -> Value {
    json!({
        "type": "object",
        "properties": { name: { "type": "string", "description": description } },
        "required": [name],
    })
}

/// The string argument `name` of a call's JSON arguments.
fn string_arg(arguments: &str, name: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("arguments are not JSON ({e}); expected {{\"{name}\": \"...\"}}"))?;
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("argument {name:?} must be a non-empty string"))
}

fn passages_text(response: agentmesh_proto::v1::SearchQueryResponse) -> String {
    if response.results.is_empty() {
        return "No ingested document matches this query.".into();
    }
    let mut out = String::new();
    for (i, p) in response.results.iter().enumerate() {
        let text: String = p.text.chars().take(PASSAGE_CHARS).collect();
        out.push_str(&format!(
            "[{}] {} ({}) — {}\n{}\n\n",
            i + 1,
            p.title,
            p.document_id,
            p.heading,
            text
        ));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_carry_the_named_string() {
        assert_eq!(string_arg(r#"{"query": " oom "}"#, "query").unwrap(), "oom");
        assert!(string_arg("not json", "query")
            .unwrap_err()
            .contains("not JSON"));
        assert!(string_arg(r#"{"query": 3}"#, "query").is_err());
        assert!(string_arg(r#"{"q": "x"}"#, "query").is_err());
    }

    #[test]
    fn only_configured_peers_are_offered() {
        assert!(Tools::default().specs().is_empty());
    }

    #[tokio::test]
    async fn unreachable_peer_is_a_tool_error_not_a_failure() {
        let peers = Peers {
            search: Some("http://127.0.0.1:9".into()),
            data: None,
        };
        let tools = Tools::new(&peers).unwrap();
        assert_eq!(tools.names(), [SEARCH_TOOL]);
        let call = ToolCall {
            id: "c1".into(),
            name: SEARCH_TOOL.into(),
            arguments: r#"{"query": "oom"}"#.into(),
        };
        let out = tools.call(&call, &RequestMeta::default()).await;
        assert!(out.is_error, "{out:?}");
        let unknown = ToolCall {
            name: "rm_rf".into(),
            ..call
        };
        assert!(tools.call(&unknown, &RequestMeta::default()).await.is_error);
    }
}
