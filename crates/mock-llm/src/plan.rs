//! Reads a chat completions request and decides what the mock answers.

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::config::{MockConfig, Rule};

const ASKED_MAX_CHARS: usize = 200;
const TOOL_RESULT_MAX_CHARS: usize = 300;

/// The parts of a request the rules look at.
#[derive(Debug, Default)]
pub(crate) struct Prompt {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub has_tools: bool,
    last_user: String,
    system: String,
    all: String,
    /// The content of the last message when it is a tool result.
    tool_result: Option<String>,
    pub prompt_tokens: u32,
}

impl Prompt {
    /// Checks the request's shape; the error names the field.
    pub fn parse(body: &Value, default_model: &str) -> Result<Prompt, String> {
        let obj = body.as_object().ok_or("the body must be a JSON object")?;
        let messages = match obj.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            _ => return Err("messages must be a non-empty array".into()),
        };
        let mut prompt = Prompt {
            model: match obj.get("model") {
                None | Some(Value::Null) => default_model.to_string(),
                Some(Value::String(m)) => m.clone(),
                Some(_) => return Err("model must be a string".into()),
            },
            stream: flag(obj.get("stream"), "stream")?,
            include_usage: flag(
                body.pointer("/stream_options/include_usage"),
                "stream_options",
            )?,
            has_tools: obj
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty()),
            ..Prompt::default()
        };
        for (i, message) in messages.iter().enumerate() {
            prompt
                .add(message)
                .map_err(|e| format!("messages[{i}]: {e}"))?;
        }
        Ok(prompt)
    }

    /// An embeddings request seen as a prompt, so rules match it the same way: its inputs,
    /// joined by newlines, are both the last user message and the whole conversation.
    pub fn for_embeddings(model: &str, inputs: &[String]) -> Prompt {
        let text = inputs.join("\n");
        Prompt {
            model: model.to_string(),
            all: text.to_lowercase(),
            prompt_tokens: count_words(&text),
            last_user: text,
            ..Prompt::default()
        }
    }

    fn add(&mut self, message: &Value) -> Result<(), String> {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or("role must be a string")?;
        let text = content_text(message.get("content"))?;
        self.prompt_tokens = self.prompt_tokens.saturating_add(count_words(&text));
        self.all.push_str(&text.to_lowercase());
        self.all.push('\n');
        self.tool_result = None;
        match role {
            "user" => self.last_user = text,
            "system" | "developer" => self.system.push_str(&text.to_lowercase()),
            "tool" | "function" => self.tool_result = Some(text),
            _ => {}
        }
        Ok(())
    }

    fn matches(&self, rule: &Rule) -> bool {
        let has = |hay: &str, needle: &Option<String>| {
            needle
                .as_ref()
                .is_none_or(|n| hay.contains(&n.to_lowercase()))
        };
        has(&self.last_user.to_lowercase(), &rule.last_user_contains)
            && has(&self.system, &rule.system_contains)
            && has(&self.all, &rule.any_contains)
            && (rule.tool_calls.is_empty() || (self.has_tools && self.tool_result.is_none()))
    }

    /// The reply when no rule says otherwise: plain about being a mock.
    pub fn default_reply(&self) -> String {
        let intro = "This is the mock LLM (no real model is configured).";
        match &self.tool_result {
            Some(result) => {
                format!(
                    "{intro} The tool returned: {}",
                    truncate(result, TOOL_RESULT_MAX_CHARS)
                )
            }
            None => format!(
                "{intro} You asked: {}",
                truncate(&self.last_user, ASKED_MAX_CHARS)
            ),
        }
    }
}

fn flag(value: Option<&Value>, field: &str) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{field} must be a boolean")),
    }
}

/// A message's text: a string, or the `text` of each part of an array.
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" ")),
        Some(_) => Err("content must be a string or an array of parts".into()),
    }
}

pub(crate) fn count_words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The first rule that matches and is not used up; using it counts against `times`.
pub(crate) fn pick<'a>(
    config: &'a MockConfig,
    used: &[AtomicU32],
    prompt: &Prompt,
) -> Option<&'a Rule> {
    config.rules.iter().zip(used).find_map(|(rule, used)| {
        if !prompt.matches(rule) {
            return None;
        }
        let limit = rule.times.unwrap_or(u32::MAX);
        let take = |n: u32| (n < limit).then_some(n.saturating_add(1));
        used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
            .ok()
            .map(|_| rule)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prompt(body: Value) -> Prompt {
        Prompt::parse(&body, "mock").unwrap()
    }

    #[test]
    fn default_reply_quotes_the_question_or_tool_result() {
        let p = prompt(json!({"messages": [{"role": "user", "content": "How many pods?"}]}));
        assert_eq!(
            p.default_reply(),
            "This is the mock LLM (no real model is configured). You asked: How many pods?"
        );
        let p = prompt(json!({"messages": [
            {"role": "user", "content": "sales?"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "c1", "content": "[[\"Chai\", 18]]"}
        ]}));
        assert!(p
            .default_reply()
            .ends_with("The tool returned: [[\"Chai\", 18]]"));
        assert_eq!(p.prompt_tokens, 3);
    }

    #[test]
    fn rules_match_case_insensitively_and_respect_times() {
        let config = MockConfig::new("m")
            .with_rule(Rule::status(429).when_last_user("BUSY").times(1))
            .with_rule(Rule::tool_call("query_data", json!({})))
            .with_rule(Rule::reply("fallback"));
        let used: Vec<AtomicU32> = config.rules.iter().map(|_| AtomicU32::new(0)).collect();
        let busy = prompt(json!({"messages": [{"role": "user", "content": "are you busy"}]}));
        assert_eq!(pick(&config, &used, &busy).unwrap().status, Some(429));
        // Used up: the tool rule does not apply without tools, so the reply rule answers.
        assert_eq!(
            pick(&config, &used, &busy).unwrap().reply.as_deref(),
            Some("fallback")
        );
        let with_tools = prompt(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "query_data"}}]}));
        assert_eq!(
            pick(&config, &used, &with_tools).unwrap().tool_calls.len(),
            1
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = Prompt::parse(&json!({"messages": []}), "m").unwrap_err();
        assert!(err.contains("messages"));
        let err = Prompt::parse(&json!({"messages": [{"content": "x"}]}), "m").unwrap_err();
        assert_eq!(err, "messages[0]: role must be a string");
        let err = Prompt::parse(
            &json!({"messages": [{"role": "user"}], "stream": "yes"}),
            "m",
        );
        assert_eq!(err.unwrap_err(), "stream must be a boolean");
    }
}
