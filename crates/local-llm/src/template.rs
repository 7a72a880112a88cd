//! The ChatML prompt SmolLM2 was trained on, built as token ids.
//!
//! Markers are inserted by id and message text is tokenized as plain text, so a message
//! that contains `<|im_start|>` cannot open a turn of its own.

use agentmesh_llm::ChatMessage;

use crate::tokenizer::TextTokenizer;

/// Used when a file's chat template names no default system prompt.
const FALLBACK_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

pub(crate) struct ChatMl {
    start: u32,
    end: u32,
    default_system: String,
}

impl ChatMl {
    /// None when the vocabulary has no ChatML markers.
    pub fn new(tokenizer: &TextTokenizer, template: Option<&str>) -> Option<ChatMl> {
        Some(ChatMl {
            start: tokenizer.id("<|im_start|>")?,
            end: tokenizer.id("<|im_end|>")?,
            default_system: template
                .and_then(default_system)
                .unwrap_or_else(|| FALLBACK_SYSTEM.to_string()),
        })
    }

    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message (the template's system
    /// prompt first when the request has none), then `<|im_start|>assistant\n`.
    pub fn encode(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[ChatMessage],
    ) -> Result<Vec<u32>, String> {
        let mut ids: Vec<u32> = tokenizer.bos().into_iter().collect();
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        if !has_system {
            self.turn(tokenizer, "system", &self.default_system, &mut ids)?;
        }
        for message in messages {
            let content = message.content.as_deref().unwrap_or_default();
            self.turn(tokenizer, &message.role, content, &mut ids)?;
        }
        ids.push(self.start);
        ids.extend(tokenizer.encode("assistant\n")?);
        Ok(ids)
    }

    fn turn(
        &self,
        tokenizer: &TextTokenizer,
        role: &str,
        content: &str,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        ids.push(self.start);
        ids.extend(tokenizer.encode(&format!("{role}\n{content}"))?);
        ids.push(self.end);
        ids.extend(tokenizer.encode("\n")?);
        Ok(())
    }

    pub fn default_system(&self) -> &str {
        &self.default_system
    }
}

/// The system prompt a ChatML Jinja template inserts when the conversation has none:
/// the text between `<|im_start|>system\n` and the next `<|im_end|>`.
fn default_system(template: &str) -> Option<String> {
    let marker = "<|im_start|>system\\n";
    let literal = "<|im_start|>system\n";
    let rest = match template.find(marker) {
        Some(at) => &template[at + marker.len()..],
        None => {
            let at = template.find(literal)?;
            &template[at + literal.len()..]
        }
    };
    let text = &rest[..rest.find("<|im_end|>")?];
    if text.is_empty() || text.contains("{{") || text.contains("{%") || text.contains('\'') {
        return None;
    }
    Some(text.replace("\\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_system_prompt_in_a_chatml_template() {
        let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] \
            != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named \
            SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + \
            message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(
            default_system(template).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
    }

    #[test]
    fn a_template_without_a_default_gives_none() {
        let template = "{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}";
        assert_eq!(default_system(template), None);
    }
}
