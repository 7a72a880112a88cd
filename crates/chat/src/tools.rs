//! The other agents offered to the model as tools, called over gRPC.

use agentmesh_agent_runtime::{Peers, RequestMeta};
use agentmesh_llm::{ToolCall, ToolSpec};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::{chat_event, ChatRequest, Message, SearchQueryRequest};
use serde_json::{json, Value};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub const SEARCH_TOOL: &str = "search_documents";
pub const DATA_TOOL: &str = "query_data";
/// Passages a search tool call returns to the model.
const SEARCH_TOP_K: u32 = 5;
/// Longest passage text handed to the model.
const PASSAGE_CHARS: usize = 1200;
/// Bound on one tool call, so a stuck peer cannot hold the conversation.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Lazily connected channels to the peers that are configured.
#[derive(Clone, Default)]
pub struct Tools {
    search: Option<Channel>,
    data: Option<Channel>,
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

fn channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("peer url {url:?} is invalid: {e}"))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy())
}

impl Tools {
    pub fn new(peers: &Peers) -> anyhow::Result<Self> {
        Ok(Self {
            search: peers.search.as_deref().map(channel).transpose()?,
            data: peers.data.as_deref().map(channel).transpose()?,
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
        match tokio::time::timeout(TOOL_TIMEOUT, run).await {
            Ok(output) => output,
            Err(_) => ToolOutput::error(format!("{} timed out after {TOOL_TIMEOUT:?}", call.name)),
        }
    }

    async fn search_documents(&self, arguments: &str, meta: &RequestMeta) -> ToolOutput {
        let Some(channel) = self.search.clone() else {
            return ToolOutput::error("search_documents is not available");
        };
        let query = match string_arg(arguments, "query") {
            Ok(q) => q,
            Err(e) => return ToolOutput::error(e),
        };
        let mut request = tonic::Request::new(SearchQueryRequest {
            query,
            top_k: SEARCH_TOP_K,
        });
        meta.apply(request.metadata_mut());
        match SearchClient::new(channel).query(request).await {
            Ok(response) => ToolOutput {
                content: passages_text(response.into_inner()),
                is_error: false,
            },
            Err(status) => ToolOutput::error(format!("search failed: {}", status.message())),
        }
    }

    async fn query_data(&self, arguments: &str, meta: &RequestMeta) -> ToolOutput {
        let Some(channel) = self.data.clone() else {
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
        let mut request = tonic::Request::new(chat);
        meta.apply(request.metadata_mut());
        match collect_answer(AgentClient::new(channel), request).await {
            Ok(text) => ToolOutput {
                content: text,
                is_error: false,
            },
            Err(status) => ToolOutput::error(format!("query_data failed: {}", status.message())),
        }
    }
}

/// The text of another agent's streamed answer.
async fn collect_answer(
    mut client: AgentClient<Channel>,
    request: tonic::Request<ChatRequest>,
) -> Result<String, tonic::Status> {
    let mut stream = client.chat(request).await?.into_inner();
    let mut text = String::new();
    while let Some(event) = stream.message().await? {
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
