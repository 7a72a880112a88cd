//! The OpenAI wire format: chat completions and embeddings request bodies, whole responses,
//! error statuses.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::retry::parse_retry_after;
use crate::sse::{error_text, parse_usage};
use crate::usage::price_for;
use crate::{
    ChatMessage, Completion, CompletionRequest, EmbedRequest, EmbedResponse, LlmError, Price,
    ToolCall,
};

/// Longest provider error text kept in our own error message.
const MAX_ERROR_TEXT: usize = 500;

pub(crate) fn request_body(req: &CompletionRequest, model: &str, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        req.messages.iter().map(message).collect(),
    );
    body.insert("stream".into(), json!(stream));
    if stream {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(n) = req.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let function = json!({
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                });
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    Value::Object(body)
}

fn message(m: &ChatMessage) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), json!(m.role));
    out.insert(
        "content".into(),
        m.content.as_ref().map_or(Value::Null, |c| json!(c)),
    );
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                let function = json!({"name": c.name, "arguments": c.arguments});
                json!({"id": c.id, "type": "function", "function": function})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        out.insert("tool_call_id".into(), json!(id));
    }
    if let Some(name) = &m.name {
        out.insert("name".into(), json!(name));
    }
    Value::Object(out)
}

/// Reads a whole (non-streamed) response body. The flag says whether the provider
/// reported usage (else the usage is zero and the caller estimates it).
pub(crate) fn parse_completion(
    provider: &str,
    body: &[u8],
    asked_model: &str,
    prices: &HashMap<String, Price>,
) -> Result<(Completion, bool), LlmError> {
    let invalid = |message: String| LlmError::InvalidResponse {
        provider: provider.into(),
        message,
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body is not JSON ({e})")))?;
    if let Some(error) = value.get("error") {
        return Err(invalid(format!(
            "provider sent an error: {}",
            error_text(error)
        )));
    }
    let choice = value
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| invalid("the answer has no choices".into()))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let tool_calls = message.get("tool_calls").and_then(Value::as_array);
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(asked_model)
        .to_string();
    let usage = value.get("usage").filter(|u| u.is_object());
    let price = price_for(prices, &model, asked_model);
    let completion = Completion {
        content: text(message.get("content")),
        tool_calls: tool_calls.into_iter().flatten().map(tool_call).collect(),
        finish_reason: text(choice.get("finish_reason")),
        usage: usage.map(|u| parse_usage(u, &price)).unwrap_or_default(),
        model,
    };
    Ok((completion, usage.is_some()))
}

fn tool_call(call: &Value) -> ToolCall {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let function = call.get("function");
    let arguments = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(), // some servers send the object itself
        None => String::new(),
    };
    ToolCall {
        id: text(call.get("id")),
        name: text(function.and_then(|f| f.get("name"))),
        arguments,
    }
}

/// An embeddings request body (vectors as JSON floats).
pub(crate) fn embed_body(req: &EmbedRequest, model: &str) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("input".into(), json!(req.input));
    body.insert("encoding_format".into(), json!("float"));
    if let Some(d) = req.dimensions {
        body.insert("dimensions".into(), json!(d));
    }
    Value::Object(body)
}

/// Reads an embeddings answer: exactly one vector per input (placed by `index`), all of one
/// length. The flag says whether the provider reported usage (else the caller estimates).
pub(crate) fn parse_embeddings(
    provider: &str,
    body: &[u8],
    asked_model: &str,
    inputs: usize,
    prices: &HashMap<String, Price>,
) -> Result<(EmbedResponse, bool), LlmError> {
    let invalid = |message: String| LlmError::InvalidResponse {
        provider: provider.into(),
        message,
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body is not JSON ({e})")))?;
    if let Some(error) = value.get("error") {
        let text = error_text(error);
        return Err(invalid(format!("provider sent an error: {text}")));
    }
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the answer has no data array".into()))?;
    if data.len() != inputs {
        let got = data.len();
        return Err(invalid(format!("{got} vectors for {inputs} inputs")));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for (i, item) in data.iter().enumerate() {
        let index = match item.get("index") {
            None => i,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n < inputs)
                .ok_or_else(|| invalid(format!("data[{i}].index is not an input position")))?,
        };
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .and_then(|xs| xs.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
            .ok_or_else(|| invalid(format!("data[{i}].embedding is not an array of numbers")))?;
        if vectors[index].replace(vector).is_some() {
            return Err(invalid(format!("two vectors for input {index}")));
        }
    }
    let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
    if vectors
        .iter()
        .any(|v| v.is_empty() || v.len() != vectors[0].len())
    {
        return Err(invalid("the vectors are empty or differ in length".into()));
    }
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(asked_model)
        .to_string();
    let usage = value.get("usage").filter(|u| u.is_object());
    let price = price_for(prices, &model, asked_model);
    let mut usage_out = usage.map(|u| parse_usage(u, &price)).unwrap_or_default();
    usage_out.completion_tokens = 0;
    usage_out.cost_usd = price.cost(usage_out.prompt_tokens, 0);
    let response = EmbedResponse {
        model,
        provider: provider.to_string(),
        vectors,
        usage: usage_out,
    };
    Ok((response, usage.is_some()))
}

/// Maps a non-2xx answer to an error. `retry_after` is the raw header value, if any.
pub(crate) fn status_error(
    provider: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> LlmError {
    let provider = provider.to_string();
    match status {
        401 | 403 => LlmError::Auth { provider, status },
        429 => LlmError::RateLimited {
            provider,
            retry_after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
        },
        400 | 422 => LlmError::BadRequest {
            provider,
            message: body_message(body),
        },
        _ => LlmError::Upstream {
            provider,
            status,
            message: body_message(body),
        },
    }
}

/// The `error.message` of an OpenAI error body, else the start of the body as text.
fn body_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v
            .get("error")
            .map(error_text)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        return "(empty body)".into();
    }
    truncate(&text, MAX_ERROR_TEXT)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// How long until `deadline`, or None if it has passed.
pub(crate) fn remaining(deadline: tokio::time::Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    #[test]
    fn body_has_openai_shape() {
        let mut assistant = ChatMessage {
            role: "assistant".into(),
            ..ChatMessage::default()
        };
        assistant.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "query_data".into(),
            arguments: "{}".into(),
        });
        let mut tool_result = ChatMessage::new("tool", "3 rows");
        tool_result.tool_call_id = Some("c1".into());
        let req = CompletionRequest {
            messages: vec![ChatMessage::new("user", "hi"), assistant, tool_result],
            tools: vec![ToolSpec {
                name: "query_data".into(),
                description: "run SQL".into(),
                parameters: json!({"type": "object"}),
            }],
            max_tokens: Some(10),
            ..CompletionRequest::default()
        };
        let body = request_body(&req, "m", true);
        assert_eq!(body["stream_options"]["include_usage"], json!(true));
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "query_data");
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert_eq!(body["messages"][2]["tool_call_id"], "c1");
        assert_eq!(body["max_tokens"], 10);
        assert!(body.get("temperature").is_none());
        assert!(request_body(&req, "m", false)
            .get("stream_options")
            .is_none());
    }

    #[test]
    fn whole_answer_with_tool_calls() {
        let body = json!({
            "model": "gpt-x",
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "search_documents", "arguments": "{\"query\":\"x\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        });
        let prices = HashMap::new();
        let (c, has_usage) =
            parse_completion("p", body.to_string().as_bytes(), "asked", &prices).unwrap();
        assert!(has_usage);
        assert_eq!(c.content, "");
        assert_eq!(c.model, "gpt-x");
        assert_eq!(c.finish_reason, "tool_calls");
        assert_eq!(c.tool_calls[0].name, "search_documents");
        assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (10, 4));
        let err = parse_completion("p", b"<html>", "asked", &prices).unwrap_err();
        assert_eq!(err.kind(), "invalid_response");
    }

    #[test]
    fn embeddings_are_placed_by_index_and_counted() {
        let req = EmbedRequest {
            input: vec!["a".into(), "b".into()],
            dimensions: Some(3),
            ..EmbedRequest::default()
        };
        let body = embed_body(&req, "e");
        assert_eq!(body["input"], json!(["a", "b"]));
        assert_eq!(
            (body["dimensions"].clone(), body["encoding_format"].clone()),
            (json!(3), json!("float"))
        );

        let prices = HashMap::from([(
            "e".to_string(),
            Price {
                input_per_mtok: 2.0,
                output_per_mtok: 9.0,
            },
        )]);
        let answer = json!({"model": "e", "data": [
            {"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
            "usage": {"prompt_tokens": 500000, "total_tokens": 500000}});
        let parse = |v: &Value, n| parse_embeddings("p", v.to_string().as_bytes(), "e", n, &prices);
        let (r, has_usage) = parse(&answer, 2).unwrap();
        assert!(has_usage);
        assert_eq!(r.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(
            (r.usage.prompt_tokens, r.usage.completion_tokens),
            (500000, 0)
        );
        assert!((r.usage.cost_usd - 1.0).abs() < 1e-9);

        let err = parse(&answer, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider p sent an answer we cannot read: 2 vectors for 3 inputs"
        );
        let twice =
            json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]});
        assert!(parse(&twice, 2)
            .unwrap_err()
            .to_string()
            .contains("two vectors for input 0"));
        let ragged = json!({"data": [{"embedding": [1.0]}, {"embedding": [2.0, 3.0]}]});
        assert!(parse(&ragged, 2)
            .unwrap_err()
            .to_string()
            .contains("differ in length"));
        let text = json!({"data": [{"embedding": "AAAA"}]});
        assert_eq!(parse(&text, 1).unwrap_err().kind(), "invalid_response");
    }

    #[test]
    fn statuses_map_to_errors() {
        let body = br#"{"error":{"message":"Invalid key sk-...","type":"auth"}}"#;
        assert_eq!(status_error("p", 401, None, body).kind(), "auth");
        let limited = status_error("p", 429, Some("2"), b"");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
        let bad = status_error(
            "p",
            422,
            None,
            br#"{"error":{"message":"max_tokens too big"}}"#,
        );
        assert_eq!(
            bad.to_string(),
            "provider p rejected the request: max_tokens too big"
        );
        let long = "x".repeat(2000);
        let up = status_error("p", 500, None, long.as_bytes());
        assert!(up.to_string().len() < 600);
    }
}
