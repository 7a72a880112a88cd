//! Checks an OpenAI chat completion body field by field and turns it into a ChatRequest.

use crate::agents::AgentName;
use crate::body::Fields;
use crate::error::ApiError;
use agentmesh_proto::v1::{ChatRequest, Message, ToolCall};
use axum::http::StatusCode;
use serde_json::{Map, Value};

/// Completion tokens assumed for rate limiting when the client sets no `max_tokens`.
const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;
const MAX_STOP_SEQUENCES: usize = 4;
const MAX_CONVERSATION_ID_LEN: usize = 200;

/// A validated chat call.
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub agent: AgentName,
    /// The name echoed as `model` in answers: the agent name requested.
    pub model: String,
    pub request: ChatRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// Prompt plus completion tokens assumed before the answer is known.
    pub estimated_tokens: u64,
}

/// `path_agent` is the agent of `/agent/{agent}/chat`; otherwise `model` chooses it.
pub fn parse(
    body: &Map<String, Value>,
    path_agent: Option<AgentName>,
) -> Result<ChatCall, ApiError> {
    let fields = Fields::new(body);
    let agent = match path_agent {
        Some(agent) => {
            fields.opt_str("model")?;
            agent
        }
        None => model_agent(fields.str("model")?)?,
    };
    let messages = messages(&fields)?;
    check_unsupported(&fields)?;
    let stream = fields.opt_bool("stream")?.unwrap_or(false);
    let include_usage = include_usage(&fields)?;
    let max_tokens = max_tokens(&fields)?;
    let estimated_tokens = estimate(&messages, max_tokens);

    let request = ChatRequest {
        messages,
        conversation_id: conversation_id(&fields)?,
        temperature: fields.opt_range("temperature", 0.0, 2.0)?,
        top_p: fields.opt_range("top_p", 0.0, 1.0)?,
        max_tokens,
        stop: stop(&fields)?,
        model: agent.as_str().to_string(),
        metadata_json: metadata(&fields)?,
    };
    Ok(ChatCall {
        agent,
        model: agent.as_str().to_string(),
        request,
        stream,
        include_usage,
        estimated_tokens,
    })
}

/// 404 `model_not_found`, as OpenAI answers for an unknown model.
pub fn model_agent(model: &str) -> Result<AgentName, ApiError> {
    AgentName::parse(model).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the model `{model}` does not exist: use one of chat, search, data"),
        )
        .with_type("invalid_request_error")
        .with_code("model_not_found")
        .with_param("model")
    })
}

fn messages(fields: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    let items = fields
        .opt_array("messages")?
        .ok_or_else(|| fields.missing("messages"))?;
    if items.is_empty() {
        return Err(fields.invalid("messages", "must contain at least one message"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| message(i, item))
        .collect()
}

fn message(index: usize, item: &Value) -> Result<Message, ApiError> {
    let name = format!("messages[{index}]");
    let Value::Object(map) = item else {
        return Err(ApiError::bad_request(
            format!("`{name}` must be an object"),
            Some(&name),
        ));
    };
    let fields = Fields::nested(map, format!("{name}."));
    let role = match fields.str("role")? {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(fields.invalid(
                "role",
                format!("must be one of system, developer, user, assistant, tool; got {other:?}"),
            ))
        }
    };
    let tool_calls = if role == "assistant" {
        tool_calls(&fields)?
    } else {
        Vec::new()
    };
    let content = match content(&fields)? {
        Some(text) => text,
        None if role == "assistant" && !tool_calls.is_empty() => String::new(),
        None => return Err(fields.missing("content")),
    };
    let tool_call_id = fields
        .opt_str("tool_call_id")?
        .unwrap_or_default()
        .to_string();
    if role == "tool" && tool_call_id.is_empty() {
        return Err(fields.missing("tool_call_id"));
    }
    Ok(Message {
        role: role.to_string(),
        content,
        name: fields.opt_str("name")?.unwrap_or_default().to_string(),
        tool_call_id,
        tool_calls,
    })
}

/// A string, or an array of `{"type": "text", "text": …}` parts joined by newlines.
fn content(fields: &Fields<'_>) -> Result<Option<String>, ApiError> {
    match fields.get("content") {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Array(parts)) => {
            let texts = parts
                .iter()
                .enumerate()
                .map(|(i, part)| text_part(fields, i, part))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(texts.join("\n")))
        }
        Some(_) => Err(fields.invalid("content", "must be a string or an array of text parts")),
    }
}

fn text_part(fields: &Fields<'_>, index: usize, part: &Value) -> Result<String, ApiError> {
    let name = fields.name(&format!("content[{index}]"));
    let Value::Object(map) = part else {
        return Err(ApiError::bad_request(
            format!("`{name}` must be an object"),
            Some(&name),
        ));
    };
    let part = Fields::nested(map, format!("{name}."));
    match part.str("type")? {
        "text" => match part.get("text") {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(part.invalid("text", "must be a string")),
            None => Err(part.missing("text")),
        },
        other => Err(part.invalid(
            "type",
            format!("must be \"text\": content parts of type {other:?} are not supported"),
        )),
    }
}

fn tool_calls(fields: &Fields<'_>) -> Result<Vec<ToolCall>, ApiError> {
    let Some(items) = fields.opt_array("tool_calls")? else {
        return Ok(Vec::new());
    };
    let mut calls = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = fields.name(&format!("tool_calls[{i}]"));
        let Value::Object(map) = item else {
            return Err(ApiError::bad_request(
                format!("`{name}` must be an object"),
                Some(&name),
            ));
        };
        let call = Fields::nested(map, format!("{name}."));
        let function = call
            .opt_object("function")?
            .ok_or_else(|| call.missing("function"))?;
        let function = Fields::nested(function, format!("{name}.function."));
        calls.push(ToolCall {
            id: call.str("id")?.to_string(),
            name: function.str("name")?.to_string(),
            arguments: function.opt_str("arguments")?.unwrap_or("{}").to_string(),
        });
    }
    Ok(calls)
}

/// Fields whose meaning the agents cannot honour: refused rather than ignored.
fn check_unsupported(fields: &Fields<'_>) -> Result<(), ApiError> {
    if let Some(n) = fields
        .opt_int("n", 0, u64::MAX)
        .map_err(|_| n_error(fields))?
    {
        if n != 1 {
            return Err(n_error(fields));
        }
    }
    for tools in ["tools", "functions"] {
        let given = fields
            .opt_array(tools)?
            .is_some_and(|items| !items.is_empty());
        if given {
            return Err(fields.invalid(
                tools,
                "is not supported: agents bring their own tools and run them themselves",
            ));
        }
    }
    fields.opt_range("presence_penalty", -2.0, 2.0)?;
    fields.opt_range("frequency_penalty", -2.0, 2.0)?;
    fields.opt_str("user")?;
    Ok(())
}

fn n_error(fields: &Fields<'_>) -> ApiError {
    fields.invalid("n", "must be 1: agents return a single choice")
}

fn include_usage(fields: &Fields<'_>) -> Result<bool, ApiError> {
    let Some(options) = fields.opt_object("stream_options")? else {
        return Ok(false);
    };
    let options = Fields::nested(options, "stream_options.".into());
    Ok(options.opt_bool("include_usage")?.unwrap_or(false))
}

fn max_tokens(fields: &Fields<'_>) -> Result<Option<u32>, ApiError> {
    let max = u64::from(u32::MAX);
    let tokens = match fields.opt_int("max_tokens", 1, max)? {
        Some(tokens) => Some(tokens),
        None => fields.opt_int("max_completion_tokens", 1, max)?,
    };
    Ok(tokens.and_then(|t| u32::try_from(t).ok()))
}

fn stop(fields: &Fields<'_>) -> Result<Vec<String>, ApiError> {
    let stops = match fields.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(_)) => fields.opt_strings("stop")?.unwrap_or_default(),
        Some(_) => return Err(fields.invalid("stop", "must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(fields.invalid("stop", "may hold at most 4 sequences"));
    }
    Ok(stops)
}

fn conversation_id(fields: &Fields<'_>) -> Result<String, ApiError> {
    let Some(id) = fields.opt_str("conversation_id")? else {
        return Ok(String::new());
    };
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if id.is_empty() || id.len() > MAX_CONVERSATION_ID_LEN || !valid_chars {
        return Err(fields.invalid(
            "conversation_id",
            "must be 1 to 200 characters of letters, digits, '-', '_', '.' or ':'",
        ));
    }
    Ok(id.to_string())
}

fn metadata(fields: &Fields<'_>) -> Result<String, ApiError> {
    match fields.opt_object("metadata")? {
        Some(map) => Ok(Value::Object(map.clone()).to_string()),
        None => Ok(String::new()),
    }
}

fn estimate(messages: &[Message], max_tokens: Option<u32>) -> u64 {
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    let prompt = u64::try_from(chars / 4 + 1).unwrap_or(u64::MAX);
    let completion = max_tokens
        .map(u64::from)
        .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
    prompt.saturating_add(completion)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(body: Value) -> Result<ChatCall, ApiError> {
        match body {
            Value::Object(map) => parse(&map, None),
            _ => panic!("not an object"),
        }
    }

    fn param(body: Value) -> String {
        run(body).unwrap_err().param.clone().unwrap_or_default()
    }

    #[test]
    fn accepts_text_parts_and_extensions() {
        let call = run(json!({
            "model": "search",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user",
                 "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "conversation_id": "conv-1",
            "metadata": {"team": "x"},
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5,
        }))
        .unwrap();
        assert_eq!(call.agent, AgentName::Search);
        assert_eq!(call.request.messages[0].role, "system");
        assert_eq!(call.request.messages[1].content, "a\nb");
        assert_eq!(call.request.conversation_id, "conv-1");
        assert_eq!(call.request.metadata_json, r#"{"team":"x"}"#);
        assert!(call.stream && call.include_usage);
    }

    #[test]
    fn every_problem_names_its_field() {
        let user = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(param(json!({"messages": user})), "model");
        assert_eq!(param(json!({"model": "chat"})), "messages");
        assert_eq!(param(json!({"model": "chat", "messages": []})), "messages");
        assert_eq!(
            param(json!({"model": "chat", "messages": "hi"})),
            "messages"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": [{"role": "boss", "content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": [{"role": "user", "content": 5}]})),
            "messages[0].content"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": [{"role": "user",
                "content": [{"type": "image_url", "image_url": {}}]}]})),
            "messages[0].content[0].type"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "temperature": 3})),
            "temperature"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "top_p": -1})),
            "top_p"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "n": 2})),
            "n"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "stream": "yes"})),
            "stream"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "metadata": []})),
            "metadata"
        );
        assert_eq!(
            param(json!({"model": "chat", "messages": user, "tools": [{}]})),
            "tools"
        );
    }

    #[test]
    fn unknown_model_is_404_model_not_found() {
        let error = run(json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(error.code.as_deref(), Some("model_not_found"));
    }
}
