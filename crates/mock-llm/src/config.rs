//! The mock's script: a model name and rules that pick canned answers or faults.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

/// What the mock serves. The default has no rules: every answer is the honest default reply.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Listed by `/v1/models` and used when a request names no model.
    pub model: String,
    /// Tried in order; the first that matches (and is not used up) answers.
    pub rules: Vec<Rule>,
    /// Pause before each streamed chunk unless a rule sets `delay_ms`.
    pub chunk_delay: Duration,
    /// When not empty, a request must send `Authorization: Bearer <one of these>` or it
    /// gets a 401. Changed at run time with `MockLlm::set_api_keys` (key rotation tests).
    pub api_keys: Vec<String>,
    /// Length of `/v1/embeddings` vectors unless a request asks for `dimensions`.
    pub embedding_dim: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            model: "mock".into(),
            rules: Vec::new(),
            chunk_delay: Duration::ZERO,
            api_keys: Vec::new(),
            embedding_dim: crate::embed::DEFAULT_DIM,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: Option<String>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    chunk_delay_ms: u64,
    #[serde(default)]
    api_keys: Vec<String>,
    embedding_dim: Option<usize>,
}

impl MockConfig {
    pub fn new(model: &str) -> MockConfig {
        MockConfig {
            model: model.into(),
            ..MockConfig::default()
        }
    }

    pub fn with_rule(mut self, rule: Rule) -> MockConfig {
        self.rules.push(rule);
        self
    }

    /// Reads a JSON script `{"model": "...", "rules": [...], "chunk_delay_ms": 0,
    /// "api_keys": [...], "embedding_dim": 256}`.
    pub fn from_file(path: &Path) -> anyhow::Result<MockConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read mock script {}", path.display()))?;
        MockConfig::from_json(&text).with_context(|| format!("bad mock script {}", path.display()))
    }

    pub fn from_json(text: &str) -> anyhow::Result<MockConfig> {
        let raw: RawConfig = serde_json::from_str(text)?;
        let config = MockConfig {
            model: raw.model.unwrap_or_else(|| MockConfig::default().model),
            rules: raw.rules,
            chunk_delay: Duration::from_millis(raw.chunk_delay_ms),
            api_keys: raw.api_keys,
            embedding_dim: raw.embedding_dim.unwrap_or(crate::embed::DEFAULT_DIM),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.model.trim().is_empty() {
            bail!("model is empty");
        }
        if !(1..=crate::embed::MAX_DIM).contains(&self.embedding_dim) {
            bail!(
                "embedding_dim must be from 1 to {}, not {}",
                crate::embed::MAX_DIM,
                self.embedding_dim
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate().with_context(|| format!("rule {i}"))?;
        }
        Ok(())
    }
}

/// One scripted behaviour. Matchers are case-insensitive substrings; a rule without
/// matchers matches every request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub last_user_contains: Option<String>,
    pub system_contains: Option<String>,
    /// Searched in every message, whatever its role.
    pub any_contains: Option<String>,
    /// Only the first N matching requests use this rule.
    pub times: Option<u32>,

    pub reply: Option<String>,
    /// Used only when the request offers tools and its last message is not a tool result.
    #[serde(default)]
    pub tool_calls: Vec<MockToolCall>,

    /// Answer with this HTTP status (4xx or 5xx) and an OpenAI error body.
    pub status: Option<u16>,
    pub retry_after: Option<RetryAfter>,
    pub message: Option<String>,
    /// Never answer (until the server shuts down).
    #[serde(default)]
    pub hang: bool,
    /// Streamed answers end after this many content chunks, without finish or `[DONE]`.
    pub cut_after_chunks: Option<usize>,
    /// Streamed answers go silent after this many content chunks.
    pub hang_after_chunks: Option<usize>,
    /// Each streamed chunk is written in two pieces cut inside a multi-byte character.
    #[serde(default)]
    pub split_utf8: bool,
    /// Pause before each streamed chunk (and before a whole answer).
    pub delay_ms: Option<u64>,
    /// Pause before the response headers (the first byte), streamed or not.
    pub first_byte_delay_ms: Option<u64>,
    /// Streamed answers leave out the usage chunk even when the request asks for it.
    #[serde(default)]
    pub omit_usage: bool,
    /// The model named in the answer (default: the model asked for).
    pub response_model: Option<String>,
    /// How streamed tool calls are cut into deltas.
    #[serde(default)]
    pub tool_deltas: ToolDeltas,
    /// Embeddings answers leave out this many vectors at the end (a broken provider).
    pub embeddings_short_by: Option<usize>,
}

/// How a streamed tool call is cut into deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolDeltas {
    /// A head delta with id and name, then the arguments in two halves; calls one by one.
    #[default]
    Split,
    /// Each call whole (id, name and arguments) in one delta.
    Single,
    /// Id, then name, then arguments a few characters at a time, parallel calls
    /// interleaved delta by delta.
    Interleaved,
}

/// A tool call the mock makes; `arguments` is sent as JSON text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// The `Retry-After` header value: seconds or an HTTP date, sent as given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RetryAfter {
    Seconds(u64),
    Text(String),
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryAfter::Seconds(s) => write!(f, "{s}"),
            RetryAfter::Text(t) => f.write_str(t),
        }
    }
}

impl Rule {
    /// Always answer with `text`.
    pub fn reply(text: &str) -> Rule {
        Rule {
            reply: Some(text.into()),
            ..Rule::default()
        }
    }

    /// Always fail with `status`.
    pub fn status(status: u16) -> Rule {
        Rule {
            status: Some(status),
            ..Rule::default()
        }
    }

    pub fn tool_call(name: &str, arguments: Value) -> Rule {
        let call = MockToolCall {
            name: name.into(),
            arguments,
        };
        Rule {
            tool_calls: vec![call],
            ..Rule::default()
        }
    }

    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }

    pub fn when_last_user(mut self, text: &str) -> Rule {
        self.last_user_contains = Some(text.into());
        self
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(status) = self.status {
            if !(400..=599).contains(&status) {
                bail!("status {status} is not an error status (400-599)");
            }
        }
        if self.reply.is_some() && !self.tool_calls.is_empty() {
            bail!("a rule gives either reply or tool_calls, not both");
        }
        if self.tool_calls.iter().any(|c| c.name.trim().is_empty()) {
            bail!("a tool call has an empty name");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_parses_and_rejects_mistakes() {
        let text = r#"{"model": "m", "chunk_delay_ms": 5, "rules": [
            {"last_user_contains": "busy", "status": 429, "retry_after": 1, "times": 2},
            {"any_contains": "sales", "tool_calls": [{"name": "query_data",
                "arguments": {"sql": "select 1"}}]},
            {"reply": "héllo", "split_utf8": true, "retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}
        ]}"#;
        let config = MockConfig::from_json(text).unwrap();
        assert_eq!(config.chunk_delay, Duration::from_millis(5));
        assert_eq!(
            config.rules[0].retry_after.as_ref().unwrap().to_string(),
            "1"
        );
        assert_eq!(config.rules[1].tool_calls[0].arguments["sql"], "select 1");

        let typo = MockConfig::from_json(r#"{"rules": [{"replly": "x"}]}"#).unwrap_err();
        assert!(format!("{typo:#}").contains("replly"), "{typo:#}");
        let status = MockConfig::from_json(r#"{"rules": [{"status": 200}]}"#).unwrap_err();
        assert!(format!("{status:#}").contains("rule 0"), "{status:#}");
    }
}
