//! Turns an agent's ChatEvent stream into an OpenAI completion or SSE chunks.
//!
//! Tool activity of the chat agent is an extension, never `tool_calls` a client would
//! think it must run: in streams a chunk whose delta holds `agentmesh_tool`, in full
//! answers a top-level `tool_events` list. `message.tool_calls` is only set when the
//! agent finished with `finish_reason: "tool_calls"` (calls it did not run itself).

use crate::agents::error_from_status;
use crate::error::ApiError;
use crate::limits::Settlement;
use agentmesh_proto::v1::chat_event::Event;
use agentmesh_proto::v1::{ChatEvent, Citations, Final, ToolCallDelta, ToolResult};
use axum::http::StatusCode;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// Identity of one answer, shared by all its chunks.
#[derive(Debug, Clone)]
pub struct Answer {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub agent: String,
}

impl Answer {
    pub fn new(model: &str, agent: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
            model: model.to_string(),
            agent: agent.to_string(),
        }
    }
}

/// Everything a finished agent stream said.
#[derive(Debug, Default)]
pub struct Collected {
    content: String,
    tool_calls: BTreeMap<u32, (String, String, String)>,
    tool_events: Vec<Value>,
    citations: Vec<Value>,
    prompt_tokens: u32,
    completion_tokens: u32,
    cost_usd: f64,
    finish: Option<Final>,
}

/// Reads the whole stream (the agent persists its turn before closing it).
pub async fn collect<S>(
    mut events: S,
    deadline: Instant,
    settlement: &mut Settlement,
    answer: &Answer,
) -> Result<Collected, ApiError>
where
    S: Stream<Item = Result<ChatEvent, tonic::Status>> + Unpin,
{
    let mut collected = Collected::default();
    loop {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        match next {
            Err(_) => return Err(timeout_error(&answer.agent)),
            Ok(None) => break,
            Ok(Some(Err(status))) if collected.finish.is_some() => {
                tracing::debug!(error = %status, "agent error after final event");
                break;
            }
            Ok(Some(Err(status))) => return Err(error_from_status(&answer.agent, &status)),
            Ok(Some(Ok(event))) => collected.add(event, settlement),
        }
    }
    if collected.finish.is_none() {
        return Err(no_final(&answer.agent));
    }
    Ok(collected)
}

impl Collected {
    fn add(&mut self, event: ChatEvent, settlement: &mut Settlement) {
        match event.event {
            Some(Event::Delta(delta)) => self.content.push_str(&delta.text),
            Some(Event::ToolCall(call)) => {
                self.tool_events.push(tool_call_json(&call));
                let entry = self.tool_calls.entry(call.index).or_default();
                if !call.id.is_empty() {
                    entry.0 = call.id;
                }
                if !call.name.is_empty() {
                    entry.1 = call.name;
                }
                entry.2.push_str(&call.arguments);
            }
            Some(Event::ToolResult(result)) => self.tool_events.push(tool_result_json(&result)),
            Some(Event::Usage(usage)) => {
                self.prompt_tokens = self.prompt_tokens.saturating_add(usage.prompt_tokens);
                self.completion_tokens = self
                    .completion_tokens
                    .saturating_add(usage.completion_tokens);
                self.cost_usd += usage.cost_usd;
                settlement.add_usage(usage.prompt_tokens, usage.completion_tokens, usage.cost_usd);
            }
            Some(Event::Citations(citations)) => self.citations.extend(citations_json(&citations)),
            Some(Event::Final(finish)) => {
                settlement.set_model(&finish.model);
                self.finish = Some(finish);
            }
            None => {}
        }
    }

    /// The `chat.completion` object.
    pub fn into_completion(self, answer: &Answer) -> Value {
        let finish = self.finish.unwrap_or_default();
        let finish_reason = finish_reason(&finish);
        let mut message = json!({"role": "assistant", "content": self.content});
        if finish_reason == "tool_calls" && !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .into_values()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function",
                           "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        let mut body = json!({
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage_json(self.prompt_tokens, self.completion_tokens, self.cost_usd),
        });
        extensions(&mut body, &finish, self.citations, self.tool_events);
        body
    }
}

fn extensions(body: &mut Value, finish: &Final, citations: Vec<Value>, tools: Vec<Value>) {
    if !finish.conversation_id.is_empty() {
        body["conversation_id"] = json!(finish.conversation_id);
    }
    if !citations.is_empty() {
        body["citations"] = Value::Array(citations);
    }
    if !tools.is_empty() {
        body["tool_events"] = Value::Array(tools);
    }
}

fn finish_reason(finish: &Final) -> String {
    if finish.finish_reason.is_empty() {
        "stop".to_string()
    } else {
        finish.finish_reason.clone()
    }
}

/// OpenAI's usage object plus the extension `cost_usd`.
fn usage_json(prompt: u32, completion: u32, cost_usd: f64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": u64::from(prompt) + u64::from(completion),
        "cost_usd": cost_usd,
    })
}

fn tool_call_json(call: &ToolCallDelta) -> Value {
    json!({"type": "call", "index": call.index, "id": call.id, "name": call.name,
           "arguments": call.arguments})
}

fn tool_result_json(result: &ToolResult) -> Value {
    json!({"type": "result", "tool_call_id": result.tool_call_id, "name": result.name,
           "content": result.content, "is_error": result.is_error})
}

fn citations_json(citations: &Citations) -> Vec<Value> {
    citations
        .citations
        .iter()
        .map(|c| {
            json!({"document_id": c.document_id, "title": c.title, "source": c.source,
                   "heading": c.heading, "score": c.score})
        })
        .collect()
}

pub fn timeout_error(agent: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!("agent {agent} did not finish in time"),
    )
    .with_code("timeout")
}

pub fn no_address(agent: &str) -> ApiError {
    ApiError::unavailable(format!("agent {agent} has no address left to try"), 1)
        .with_code("agent_unavailable")
}

pub fn no_final(agent: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("agent {agent} ended its answer without a final event"),
    )
    .with_code("incomplete_answer")
}

/// One SSE payload: a JSON chunk, or the closing `[DONE]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    Json(Value),
    Done,
}

/// Builds `chat.completion.chunk` objects while events arrive.
pub struct ChunkBuilder {
    answer: Answer,
    include_usage: bool,
    prompt_tokens: u32,
    completion_tokens: u32,
    cost_usd: f64,
    citations: Vec<Value>,
}

impl ChunkBuilder {
    pub fn new(answer: Answer, include_usage: bool) -> Self {
        Self {
            answer,
            include_usage,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            citations: Vec::new(),
        }
    }

    pub fn agent(&self) -> &str {
        &self.answer.agent
    }

    fn chunk(&self, delta: Value, finish_reason: Option<String>) -> Value {
        let mut chunk = json!({
            "id": self.answer.id,
            "object": "chat.completion.chunk",
            "created": self.answer.created,
            "model": self.answer.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null,
                         "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    pub fn opening(&self) -> Sse {
        Sse::Json(self.chunk(json!({"role": "assistant", "content": ""}), None))
    }

    /// What to send for one event; `true` once the final event was handled.
    pub fn on_event(&mut self, event: ChatEvent, settlement: &mut Settlement) -> (Vec<Sse>, bool) {
        let tool = |value: Value| {
            vec![Sse::Json(
                self.chunk(json!({"agentmesh_tool": value}), None),
            )]
        };
        match event.event {
            Some(Event::Delta(delta)) if !delta.text.is_empty() => (
                vec![Sse::Json(self.chunk(json!({"content": delta.text}), None))],
                false,
            ),
            Some(Event::ToolCall(call)) => (tool(tool_call_json(&call)), false),
            Some(Event::ToolResult(result)) => (tool(tool_result_json(&result)), false),
            Some(Event::Usage(usage)) => {
                self.prompt_tokens = self.prompt_tokens.saturating_add(usage.prompt_tokens);
                self.completion_tokens = self
                    .completion_tokens
                    .saturating_add(usage.completion_tokens);
                self.cost_usd += usage.cost_usd;
                settlement.add_usage(usage.prompt_tokens, usage.completion_tokens, usage.cost_usd);
                (Vec::new(), false)
            }
            Some(Event::Citations(citations)) => {
                self.citations.extend(citations_json(&citations));
                (Vec::new(), false)
            }
            Some(Event::Final(finish)) => {
                settlement.set_model(&finish.model);
                (self.closing(&finish), true)
            }
            _ => (Vec::new(), false),
        }
    }

    fn closing(&mut self, finish: &Final) -> Vec<Sse> {
        let mut last = self.chunk(json!({}), Some(finish_reason(finish)));
        extensions(
            &mut last,
            finish,
            std::mem::take(&mut self.citations),
            Vec::new(),
        );
        let mut out = vec![Sse::Json(last)];
        if self.include_usage {
            let mut usage = self.chunk(json!({}), None);
            usage["choices"] = json!([]);
            usage["usage"] = usage_json(self.prompt_tokens, self.completion_tokens, self.cost_usd);
            out.push(Sse::Json(usage));
        }
        out.push(Sse::Done);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use agentmesh_proto::v1::{ContentDelta, Usage};

    fn event(event: Event) -> ChatEvent {
        ChatEvent { event: Some(event) }
    }

    #[test]
    fn closing_sends_finish_usage_and_done() {
        let answer = Answer::new("chat", "chat");
        let mut builder = ChunkBuilder::new(answer, true);
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_usd: 0.0,
        };
        builder.prompt_tokens = usage.prompt_tokens;
        builder.completion_tokens = usage.completion_tokens;
        let finish = Final {
            finish_reason: "stop".into(),
            ..Default::default()
        };
        let out = builder.closing(&finish);
        assert_eq!(out.len(), 3);
        let Sse::Json(usage_chunk) = &out[1] else {
            panic!("expected json")
        };
        assert_eq!(usage_chunk["usage"]["total_tokens"], 7);
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(out[2], Sse::Done);
        let delta = event(Event::Delta(ContentDelta { text: "x".into() }));
        assert!(delta.event.is_some());
    }
}
