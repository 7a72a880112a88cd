//! Per-request plumbing shared by agents: metadata, validation, message conversion, events.

use crate::status::invalid_argument;
use agentmesh_llm::{ChatMessage, ToolCall};
use agentmesh_proto::v1::{chat_event, ChatEvent, ContentDelta, Final, Message, Usage};
use futures::Stream;
use std::pin::Pin;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const KEY_ID_HEADER: &str = "x-agentmesh-key-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The stream type every agent's `Chat` returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, Status>> + Send + 'static>>;

/// Caller identity carried in gRPC metadata, forwarded on calls to other agents.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub key_id: String,
    pub traceparent: Option<String>,
}

impl RequestMeta {
    pub fn from_metadata(map: &MetadataMap) -> Self {
        let get = |key: &str| {
            map.get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            request_id: get(REQUEST_ID_HEADER).unwrap_or_default(),
            key_id: get(KEY_ID_HEADER).unwrap_or_default(),
            traceparent: get(TRACEPARENT_HEADER),
        }
    }

    /// The span of one RPC, with the ids recorded on it.
    pub fn span(&self, agent: &'static str, rpc: &'static str) -> tracing::Span {
        tracing::info_span!(
            "rpc",
            agent,
            rpc,
            request_id = %self.request_id,
            key_id = %self.key_id,
        )
    }

    /// Copies the ids onto an outgoing request's metadata (calls to other agents).
    pub fn apply(&self, map: &mut MetadataMap) {
        let pairs = [
            (REQUEST_ID_HEADER, Some(self.request_id.as_str())),
            (KEY_ID_HEADER, Some(self.key_id.as_str())),
            (TRACEPARENT_HEADER, self.traceparent.as_deref()),
        ];
        for (key, value) in pairs {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Ok(value) = MetadataValue::try_from(value) {
                map.insert(key, value);
            }
        }
    }
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Checks what every agent needs: at least one message, known roles, tool results tied
/// to a call.
pub fn validate_messages(messages: &[Message]) -> Result<(), Status> {
    if messages.is_empty() {
        return Err(invalid_argument(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            let msg = format!(
                "messages[{i}].role {:?} is not one of system, user, assistant, tool",
                m.role
            );
            return Err(invalid_argument(msg, Some("messages")));
        }
        if m.role == "tool" && m.tool_call_id.is_empty() {
            let msg = format!("messages[{i}] has role tool but no tool_call_id");
            return Err(invalid_argument(msg, Some("messages")));
        }
    }
    Ok(())
}

/// The text of the last user message, or InvalidArgument when there is none.
pub fn last_user_message(messages: &[Message]) -> Result<&str, Status> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| invalid_argument("a non-empty user message is required", Some("messages")))
}

/// Converts wire messages to the LLM client's shape.
pub fn llm_messages(messages: &[Message]) -> Vec<ChatMessage> {
    messages.iter().map(llm_message).collect()
}

fn llm_message(m: &Message) -> ChatMessage {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let tool_calls = m
        .tool_calls
        .iter()
        .map(|c| ToolCall {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        })
        .collect();
    ChatMessage {
        role: m.role.clone(),
        content: Some(m.content.clone()),
        tool_calls,
        tool_call_id: non_empty(&m.tool_call_id),
        name: non_empty(&m.name),
    }
}

pub fn delta_event(text: impl Into<String>) -> ChatEvent {
    ChatEvent {
        event: Some(chat_event::Event::Delta(ContentDelta { text: text.into() })),
    }
}

pub fn usage_event(usage: &agentmesh_llm::Usage) -> ChatEvent {
    let usage = Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cost_usd: usage.cost_usd,
    };
    ChatEvent {
        event: Some(chat_event::Event::Usage(usage)),
    }
}

pub fn final_event(finish_reason: &str, model: &str, conversation_id: &str) -> ChatEvent {
    let fin = Final {
        finish_reason: finish_reason.to_string(),
        model: model.to_string(),
        conversation_id: conversation_id.to_string(),
    };
    ChatEvent {
        event: Some(chat_event::Event::Final(fin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }

    #[test]
    fn empty_messages_are_refused_naming_the_field() {
        let err = validate_messages(&[]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let param = err.metadata().get("x-agentmesh-error-param").unwrap();
        assert_eq!(param.to_str().unwrap(), "messages");
    }

    #[test]
    fn unknown_roles_and_orphan_tool_messages_are_refused() {
        let err = validate_messages(&[msg("wizard", "hi")]).unwrap_err();
        assert!(err.message().contains("wizard"), "{}", err.message());
        assert!(validate_messages(&[msg("tool", "42")]).is_err());
        assert!(validate_messages(&[msg("system", "be brief"), msg("user", "hi")]).is_ok());
    }

    #[test]
    fn last_user_message_skips_later_assistant_turns() {
        let msgs = [
            msg("user", "first"),
            msg("assistant", "a"),
            msg("user", "second"),
        ];
        assert_eq!(last_user_message(&msgs).unwrap(), "second");
        assert!(last_user_message(&[msg("system", "x")]).is_err());
    }

    #[test]
    fn metadata_round_trips_to_outgoing_calls() {
        let mut incoming = MetadataMap::new();
        incoming.insert(REQUEST_ID_HEADER, "req-1".parse().unwrap());
        incoming.insert(KEY_ID_HEADER, "key-9".parse().unwrap());
        let meta = RequestMeta::from_metadata(&incoming);
        let mut outgoing = MetadataMap::new();
        meta.apply(&mut outgoing);
        assert_eq!(outgoing.get(REQUEST_ID_HEADER).unwrap(), "req-1");
        assert_eq!(outgoing.get(KEY_ID_HEADER).unwrap(), "key-9");
        assert!(outgoing.get(TRACEPARENT_HEADER).is_none());
    }
}
