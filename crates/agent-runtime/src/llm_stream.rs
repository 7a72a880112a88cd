//! Streams an LLM answer to the client while keeping what it said.

use crate::request::delta_event;
use crate::sink::EventSink;
use crate::status::status_from_llm;
use agentmesh_llm::{CompletionRequest, LlmClient, LlmEvent, ToolCall, Usage};
use agentmesh_proto::v1::{chat_event, ChatEvent, ToolCallDelta};
use futures::StreamExt;
use tonic::Status;

/// What one streamed LLM call produced.
#[derive(Debug, Clone, Default)]
pub struct StreamOutcome {
    pub text: String,
    /// Complete calls, in index order.
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: String,
    pub model: String,
}

/// Calls the LLM and forwards text deltas (and tool-call pieces when `show_tool_calls`)
/// to `sink` as they arrive.
pub async fn forward_llm_stream(
    llm: &LlmClient,
    req: CompletionRequest,
    sink: &EventSink,
    show_tool_calls: bool,
) -> Result<StreamOutcome, Status> {
    let mut stream = llm.stream(req).await.map_err(|e| status_from_llm(&e))?;
    let mut out = StreamOutcome::default();
    while let Some(event) = stream.next().await {
        match event.map_err(|e| status_from_llm(&e))? {
            LlmEvent::Delta(text) => {
                out.text.push_str(&text);
                sink.send(delta_event(text)).await?;
            }
            LlmEvent::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let piece = ToolCallDelta {
                    index,
                    id: id.clone().unwrap_or_default(),
                    name: name.clone().unwrap_or_default(),
                    arguments: arguments.clone(),
                };
                merge_tool_call(&mut out.tool_calls, index, id, name, &arguments);
                if show_tool_calls {
                    let event = chat_event::Event::ToolCall(piece);
                    sink.send(ChatEvent { event: Some(event) }).await?;
                }
            }
            LlmEvent::Usage(usage) => add_usage(&mut out.usage, &usage),
            LlmEvent::Done {
                finish_reason,
                model,
            } => {
                tracing::Span::current().record("model", model.as_str());
                out.finish_reason = finish_reason;
                out.model = model;
            }
        }
    }
    Ok(out)
}

fn merge_tool_call(
    calls: &mut Vec<ToolCall>,
    index: u32,
    id: Option<String>,
    name: Option<String>,
    arguments: &str,
) {
    let i = index as usize;
    if calls.len() <= i {
        calls.resize_with(i + 1, ToolCall::default);
    }
    let call = &mut calls[i];
    if let Some(id) = id.filter(|s| !s.is_empty()) {
        call.id = id;
    }
    if let Some(name) = name.filter(|s| !s.is_empty()) {
        call.name = name;
    }
    call.arguments.push_str(arguments);
}

/// Adds `more` to `total` (several LLM calls in one request).
pub fn add_usage(total: &mut Usage, more: &Usage) {
    total.prompt_tokens += more.prompt_tokens;
    total.completion_tokens += more.completion_tokens;
    total.cost_usd += more.cost_usd;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_pieces_merge_by_index() {
        let mut calls = Vec::new();
        merge_tool_call(
            &mut calls,
            0,
            Some("c1".into()),
            Some("search".into()),
            "{\"q\":",
        );
        merge_tool_call(&mut calls, 1, Some("c2".into()), Some("data".into()), "{}");
        merge_tool_call(&mut calls, 0, None, None, "\"oom\"}");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "c1");
        assert_eq!(calls[0].arguments, "{\"q\":\"oom\"}");
        assert_eq!(calls[1].name, "data");
    }
}
