//! Folds streamed [`LlmEvent`]s back into one [`Completion`] (tool calls joined by index).

use std::collections::BTreeMap;

use crate::{Completion, LlmEvent, ToolCall, Usage};

/// Collects events as they arrive; `finish` gives the whole answer so far.
#[derive(Debug, Default, Clone)]
pub struct CompletionBuilder {
    content: String,
    calls: BTreeMap<u32, ToolCall>,
    usage: Usage,
    finish_reason: String,
    model: String,
}

impl CompletionBuilder {
    pub fn new() -> CompletionBuilder {
        CompletionBuilder::default()
    }

    pub fn push(&mut self, event: &LlmEvent) {
        match event {
            LlmEvent::Delta(text) => self.content.push_str(text),
            LlmEvent::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let call = self.calls.entry(*index).or_default();
                if let Some(id) = id {
                    call.id.clone_from(id);
                }
                if let Some(name) = name {
                    call.name.clone_from(name);
                }
                call.arguments.push_str(arguments);
            }
            LlmEvent::Usage(usage) => self.usage = *usage,
            LlmEvent::Done {
                finish_reason,
                model,
            } => {
                self.finish_reason.clone_from(finish_reason);
                self.model.clone_from(model);
            }
        }
    }

    /// The answer so far; tool calls ordered by their stream index.
    pub fn finish(self) -> Completion {
        Completion {
            content: self.content,
            tool_calls: self.calls.into_values().collect(),
            finish_reason: self.finish_reason,
            model: self.model,
            usage: self.usage,
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a LlmEvent>) -> Completion {
        let mut builder = CompletionBuilder::new();
        events.into_iter().for_each(|e| builder.push(e));
        builder.finish()
    }
}
