//! Per-request plumbing shared by agents: metadata, validation, message conversion, events.

use crate::status::invalid_argument;
use agentmesh_llm::{ChatMessage, ToolCall};
use agentmesh_proto::v1::{chat_event, ChatEvent, ContentDelta, Final, Message, Usage};
use futures::Stream;
use std::pin::Pin;
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const KEY_ID_HEADER: &str = "x-agentmesh-key-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The gRPC deadline header, `<digits><unit>` with unit one of H M S m u n.
pub const TIMEOUT_HEADER: &str = "grpc-timeout";

/// The stream type every agent's `Chat` returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, Status>> + Send + 'static>>;

/// Caller identity and deadline carried in gRPC metadata, forwarded on calls to other
/// agents (the deadline shrinks along the chain, so a tool call ends before its caller).
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub key_id: String,
    pub traceparent: Option<String>,
    /// When the caller gives up (from `grpc-timeout`); None: no deadline was sent.
    pub deadline: Option<tokio::time::Instant>,
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
            deadline: get(TIMEOUT_HEADER)
                .and_then(|raw| parse_grpc_timeout(&raw))
                .map(|timeout| tokio::time::Instant::now() + timeout),
        }
    }

    /// Time left before the caller's deadline, if it sent one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// The span of one RPC, with the ids recorded on it, a child of the caller's span
    /// when `traceparent` names one.
    pub fn span(&self, agent: &'static str, rpc: &'static str) -> tracing::Span {
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{agent} {rpc}"),
            otel.kind = "server",
            rpc.system = "grpc",
            agent,
            rpc,
            request_id = %self.request_id,
            key_id = %self.key_id,
            model = tracing::field::Empty,
        );
        let traceparent = self.traceparent.as_deref();
        agentmesh_telemetry::propagation::set_parent_from_traceparent(&span, traceparent);
        span
    }

    /// The deadline as the LLM client takes it (`CompletionRequest::deadline`).
    pub fn llm_deadline(&self) -> Option<std::time::Instant> {
        self.deadline.map(tokio::time::Instant::into_std)
    }

    /// Copies the ids onto an outgoing request's metadata (calls to other agents), and
    /// the remaining deadline, minus a margin so the callee gives up first.
    pub fn apply(&self, map: &mut MetadataMap) {
        if let Some(remaining) = self.remaining() {
            let margin = (remaining / 50).min(Duration::from_millis(500));
            let millis = remaining
                .saturating_sub(margin)
                .as_millis()
                .clamp(1, 99_999_999);
            if let Ok(value) = MetadataValue::try_from(format!("{millis}m")) {
                map.insert(TIMEOUT_HEADER, value);
            }
        }
        // The current span's context when spans are exported, else the caller's.
        let traceparent = match agentmesh_telemetry::propagation::inject_metadata(map) {
            true => None,
            false => self.traceparent.as_deref(),
        };
        let pairs = [
            (REQUEST_ID_HEADER, Some(self.request_id.as_str())),
            (KEY_ID_HEADER, Some(self.key_id.as_str())),
            (TRACEPARENT_HEADER, traceparent),
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

/// Parses a `grpc-timeout` value (at most 8 digits and a unit).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.len().checked_sub(1)?;
    let (digits, unit) = raw.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(value.saturating_mul(3600))),
        "M" => Some(Duration::from_secs(value.saturating_mul(60))),
        "S" => Some(Duration::from_secs(value)),
        "m" => Some(Duration::from_millis(value)),
        "u" => Some(Duration::from_micros(value)),
        "n" => Some(Duration::from_nanos(value)),
        _ => None,
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
        assert!(
            outgoing.get(TIMEOUT_HEADER).is_none(),
            "no deadline, none sent"
        );
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("9800m"),
            Some(Duration::from_millis(9800))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "12", "123456789m", "5x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_deadline_shrinks_on_outgoing_calls() {
        let mut incoming = MetadataMap::new();
        incoming.insert(TIMEOUT_HEADER, "10S".parse().unwrap());
        let meta = RequestMeta::from_metadata(&incoming);
        let mut outgoing = MetadataMap::new();
        meta.apply(&mut outgoing);
        let sent = outgoing.get(TIMEOUT_HEADER).unwrap().to_str().unwrap();
        let sent = parse_grpc_timeout(sent).unwrap();
        assert!(
            sent <= Duration::from_millis(9800),
            "a margin is kept: {sent:?}"
        );
        assert!(sent >= Duration::from_millis(9000), "{sent:?}");
    }
}
