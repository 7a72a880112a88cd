//! Provider list, timeouts, retry policy, circuit breaker and price table of the LLM client.
//!
//! Built in code, or by [`LlmConfig::load`] from the `[llm]` section of a TOML file with
//! `AGENTMESH_LLM_*` overrides (the file format lives in `config_file.rs`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::LlmError;

/// A secret string (an API key). Printing it in any way shows `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The real value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Shown in errors, logs and metrics.
    pub name: String,
    /// Up to and including the version path, e.g. `http://127.0.0.1:9000/v1`.
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Read again when the file changes (size, mtime or inode), so a rotated (re-mounted)
    /// key is used by the next request with no restart.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Models this provider serves; empty means any model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Lower is tried first when several providers serve a model.
    #[serde(default)]
    pub priority: u32,
}

impl ProviderConfig {
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u32, completion_tokens: u32) -> f64 {
        (f64::from(prompt_tokens) * self.input_per_mtok
            + f64::from(completion_tokens) * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Everything the client needs. Build it in code, with [`LlmConfig::single`], or with
/// [`LlmConfig::load`] / [`LlmConfig::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub providers: Vec<ProviderConfig>,
    /// Used when a request names no model.
    pub default_model: String,
    pub connect_timeout: Duration,
    /// Streamed: from sending a request to its first event. Whole answers: from sending
    /// the request to the response headers, so a hung provider fails over early.
    pub first_token_timeout: Duration,
    /// Longest silence between two streamed chunks (or two reads of a whole body).
    pub idle_timeout: Duration,
    /// Bound on a whole call, retries and fallback included. A request's own deadline
    /// shortens it, never lengthens it.
    pub total_timeout: Duration,
    /// Attempts per provider (1 means no retry).
    pub max_attempts: u32,
    /// Wait before retry n is uniform in `[0, min(cap, base * 2^(n-1))]` (full jitter).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Consecutive failed attempts that open a provider's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit skips its provider before one probe may go through.
    pub circuit_cooldown: Duration,
    /// Keyed by model name; a model without a price costs 0.
    pub prices: HashMap<String, Price>,
}

pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

impl LlmConfig {
    /// The `[llm]` section of the file named by `AGENTMESH_CONFIG` (if set), then the
    /// `AGENTMESH_LLM_*` overrides. `Ok(None)` when neither configures a provider.
    ///
    /// The shortcut for one provider: `AGENTMESH_LLM_BASE_URL`, `AGENTMESH_LLM_API_KEY` or
    /// `AGENTMESH_LLM_API_KEY_FILE`, `AGENTMESH_LLM_MODEL` (default `gpt-4o-mini`); an empty
    /// value counts as unset.
    pub fn from_env() -> Result<Option<LlmConfig>, LlmError> {
        Self::load(None)
    }

    /// Like [`LlmConfig::from_env`], reading `path` (a `--config` flag) instead of the
    /// file named by `AGENTMESH_CONFIG` when given.
    pub fn load(path: Option<&Path>) -> Result<Option<LlmConfig>, LlmError> {
        let env = |name: &str| std::env::var(name).ok();
        let from_env = env("AGENTMESH_CONFIG").filter(|p| !p.trim().is_empty());
        let path = path.map(Path::to_path_buf).or(from_env.map(PathBuf::from));
        let Some(path) = path else {
            return crate::config_file::build(None, env);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            LlmError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let origin = path.display().to_string();
        crate::config_file::build(Some((&origin, &text)), env)
    }

    /// One provider at `base_url` (no key) serving `model`; defaults for the rest.
    pub fn single(name: &str, base_url: &str, model: &str) -> LlmConfig {
        let provider = ProviderConfig {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            api_key_file: None,
            models: vec![model.to_string()],
            priority: 0,
        };
        LlmConfig {
            providers: vec![provider],
            default_model: model.to_string(),
            ..LlmConfig::defaults()
        }
    }

    /// No provider, every other setting at its default.
    pub fn defaults() -> LlmConfig {
        LlmConfig {
            providers: Vec::new(),
            default_model: DEFAULT_MODEL.to_string(),
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
            max_attempts: 3,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(5),
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            prices: HashMap::new(),
        }
    }

    /// Checks every value; a message names the bad field as it is spelled in the file.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |msg: &str| Err(LlmError::Config(msg.to_string()));
        if self.providers.is_empty() {
            return bad("llm.providers: no LLM provider is configured");
        }
        if self.default_model.trim().is_empty() {
            return bad("llm.default_model is empty");
        }
        if self.max_attempts == 0 {
            return bad("llm.retry.max_attempts must be at least 1");
        }
        if self.circuit_failures == 0 {
            return bad("llm.circuit.failures must be at least 1");
        }
        let durations = [
            ("llm.timeouts.connect", self.connect_timeout),
            ("llm.timeouts.first_token", self.first_token_timeout),
            ("llm.timeouts.idle", self.idle_timeout),
            ("llm.timeouts.total", self.total_timeout),
            ("llm.retry.backoff_base", self.backoff_base),
            ("llm.retry.backoff_cap", self.backoff_cap),
            ("llm.circuit.cooldown", self.circuit_cooldown),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return bad(&format!("{name} must be more than zero"));
        }
        self.validate_prices()?;
        self.validate_providers()
    }

    fn validate_prices(&self) -> Result<(), LlmError> {
        for (model, price) in &self.prices {
            let fields = [
                ("input_per_mtok", price.input_per_mtok),
                ("output_per_mtok", price.output_per_mtok),
            ];
            if let Some((field, _)) = fields.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
                let msg = format!("llm.prices.{model:?}.{field} must be a number >= 0");
                return Err(LlmError::Config(msg));
            }
        }
        Ok(())
    }

    fn validate_providers(&self) -> Result<(), LlmError> {
        let mut seen = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            validate_provider(i, p)?;
            if !seen.insert(p.name.as_str()) {
                let msg = format!("llm.providers[{i}].name: {:?} is used twice", p.name);
                return Err(LlmError::Config(msg));
            }
        }
        Ok(())
    }
}

fn validate_provider(i: usize, p: &ProviderConfig) -> Result<(), LlmError> {
    let field = |name: &str| format!("llm.providers[{i}].{name}");
    let bad = |msg: String| Err(LlmError::Config(msg));
    if p.name.trim().is_empty() {
        return bad(format!("{} is empty", field("name")));
    }
    let url = match url::Url::parse(&p.base_url) {
        Ok(url) => url,
        Err(e) => {
            let msg = format!("{} {:?} is not a URL: {e}", field("base_url"), p.base_url);
            return bad(msg);
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        let msg = format!("{} must start with http:// or https://", field("base_url"));
        return bad(msg);
    }
    if p.api_key.is_some() && p.api_key_file.is_some() {
        return bad(format!(
            "{} and {}: set either an API key or a key file, not both (provider {})",
            field("api_key"),
            field("api_key_file"),
            p.name
        ));
    }
    if p.models.iter().any(|m| m.trim().is_empty()) {
        return bad(format!("{} has an empty model name", field("models")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "sk-live-123");
        let p = ProviderConfig {
            api_key: Some(s),
            ..LlmConfig::single("a", "http://x", "m").providers[0].clone()
        };
        assert!(!format!("{p:?}").contains("sk-live"));
    }

    #[test]
    fn validation_names_the_field() {
        let base = LlmConfig::single("a", "http://x/v1", "m");
        let check = |edit: &dyn Fn(&mut LlmConfig)| {
            let mut config = base.clone();
            edit(&mut config);
            config.validate().unwrap_err().to_string()
        };
        assert!(check(&|c| c.max_attempts = 0).contains("llm.retry.max_attempts"));
        assert!(check(&|c| c.circuit_cooldown = Duration::ZERO).contains("llm.circuit.cooldown"));
        let err = check(&|c| c.providers[0].base_url = "ftp://x".into());
        assert!(err.contains("llm.providers[0].base_url"), "{err}");
        let err = check(&|c| c.providers.push(c.providers[0].clone()));
        assert!(err.contains("llm.providers[1].name"), "{err}");
        let err = check(&|c| {
            let price = Price {
                input_per_mtok: -1.0,
                output_per_mtok: 0.0,
            };
            c.prices.insert("m".into(), price);
        });
        assert!(err.contains("llm.prices.\"m\".input_per_mtok"), "{err}");
        assert!(base.validate().is_ok());
    }

    #[test]
    fn price_per_million() {
        let p = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
        };
        assert!((p.cost(1_000_000, 500_000) - 0.45).abs() < 1e-9);
    }
}
