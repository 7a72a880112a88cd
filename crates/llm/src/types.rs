//! Request, response and event types of the LLM client (OpenAI chat completions shape).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// system, user, assistant or tool.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            ..Self::default()
        }
    }
}

/// A complete tool call (arguments are the model's JSON text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionRequest {
    /// None: the provider's configured default model.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub tools: Vec<ToolSpec>,
    /// The caller's own deadline (for an agent: its gRPC deadline). Every attempt, retry
    /// wait and fallback ends by then; None means only the configured total timeout.
    pub deadline: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
}

/// A whole (non-streamed) answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: String,
    /// The model that answered, as the provider named it.
    pub model: String,
    pub usage: Usage,
}

/// One piece of a streamed answer. A stream ends with exactly one `Done`
/// (after any `Usage`) or with an error item; never silently.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Delta(String),
    /// A piece of a tool call; pieces with the same index are one call.
    ToolCall {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Usage(Usage),
    Done {
        finish_reason: String,
        model: String,
    },
}

/// Texts to embed in one call; the answer has one vector per input, in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedRequest {
    /// An embeddings model some provider lists in its `models` (or a provider serving any).
    pub model: String,
    pub input: Vec<String>,
    /// Asks the provider for vectors of this length (models that support it).
    pub dimensions: Option<u32>,
    /// The caller's own deadline, as for [`CompletionRequest::deadline`].
    pub deadline: Option<std::time::Instant>,
}

/// The vectors of an [`EmbedRequest`], `vectors[i]` for `input[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedResponse {
    /// The model that answered, as the provider named it.
    pub model: String,
    /// The provider that answered (empty when there was no input to send).
    pub provider: String,
    pub vectors: Vec<Vec<f32>>,
    /// Prompt tokens and their cost (`completion_tokens` is 0).
    pub usage: Usage,
}
