//! Provider list, timeouts, retry budget and price table of the LLM client.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
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
    /// Read again on every request, so a rotated (re-mounted) key needs no restart.
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

/// Everything the client needs. Build it in code or with [`LlmConfig::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub providers: Vec<ProviderConfig>,
    /// Used when a request names no model.
    pub default_model: String,
    pub connect_timeout: Duration,
    /// From sending a request to its first streamed event (headers included).
    pub first_token_timeout: Duration,
    /// Longest silence between two streamed chunks.
    pub idle_timeout: Duration,
    /// Bound on a whole call, retries and fallback included.
    pub total_timeout: Duration,
    /// Attempts per provider (1 means no retry).
    pub max_attempts: u32,
    /// Keyed by model name; a model without a price costs 0.
    pub prices: HashMap<String, Price>,
}

pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

impl LlmConfig {
    /// From `AGENTMESH_LLM_BASE_URL`, `AGENTMESH_LLM_API_KEY` or `AGENTMESH_LLM_API_KEY_FILE`,
    /// `AGENTMESH_LLM_MODEL` (default `gpt-4o-mini`). `Ok(None)` when no base URL is set
    /// (an empty value counts as unset).
    pub fn from_env() -> Result<Option<LlmConfig>, LlmError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<LlmConfig>, LlmError> {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(base_url) = get("AGENTMESH_LLM_BASE_URL") else {
            return Ok(None);
        };
        let model = get("AGENTMESH_LLM_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let mut config = LlmConfig::single("default", &base_url, &model);
        let provider = &mut config.providers[0];
        provider.api_key = get("AGENTMESH_LLM_API_KEY").map(Secret::new);
        provider.api_key_file = get("AGENTMESH_LLM_API_KEY_FILE").map(PathBuf::from);
        provider.models = Vec::new();
        config.validate()?;
        Ok(Some(config))
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
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
            max_attempts: 3,
            prices: HashMap::new(),
        }
    }

    /// Checks every value and says which one is wrong.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |msg: String| Err(LlmError::Config(msg));
        if self.providers.is_empty() {
            return bad("no LLM provider is configured".into());
        }
        if self.default_model.trim().is_empty() {
            return bad("default_model is empty".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        let timeouts = [
            ("connect_timeout", self.connect_timeout),
            ("first_token_timeout", self.first_token_timeout),
            ("idle_timeout", self.idle_timeout),
            ("total_timeout", self.total_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return bad(format!("{name} must be more than zero"));
        }
        self.providers.iter().try_for_each(validate_provider)
    }
}

fn validate_provider(p: &ProviderConfig) -> Result<(), LlmError> {
    if p.name.trim().is_empty() {
        return Err(LlmError::Config("a provider has an empty name".into()));
    }
    let url = url::Url::parse(&p.base_url).map_err(|e| {
        LlmError::Config(format!(
            "provider {}: base_url {:?} is not a URL: {e}",
            p.name, p.base_url
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        let msg = format!(
            "provider {}: base_url must start with http:// or https://",
            p.name
        );
        return Err(LlmError::Config(msg));
    }
    if p.api_key.is_some() && p.api_key_file.is_some() {
        let msg = format!(
            "provider {}: set either an API key or a key file, not both",
            p.name
        );
        return Err(LlmError::Config(msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

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
    fn env_unset_or_empty_is_none() {
        assert_eq!(LlmConfig::from_lookup(env(&[])).unwrap(), None);
        assert_eq!(
            LlmConfig::from_lookup(env(&[("AGENTMESH_LLM_BASE_URL", " ")])).unwrap(),
            None
        );
    }

    #[test]
    fn env_builds_one_provider() {
        let vars = env(&[
            ("AGENTMESH_LLM_BASE_URL", "http://127.0.0.1:9000/v1/"),
            ("AGENTMESH_LLM_API_KEY", "sk-1"),
        ]);
        let config = LlmConfig::from_lookup(vars).unwrap().unwrap();
        assert_eq!(config.default_model, "gpt-4o-mini");
        assert_eq!(config.providers[0].base_url, "http://127.0.0.1:9000/v1");
        assert_eq!(
            config.providers[0].api_key.as_ref().unwrap().expose(),
            "sk-1"
        );
    }

    #[test]
    fn env_rejects_bad_url_and_two_keys() {
        let vars = env(&[("AGENTMESH_LLM_BASE_URL", "localhost:9000")]);
        let err = LlmConfig::from_lookup(vars).unwrap_err();
        assert!(err.to_string().contains("base_url"), "{err}");
        let vars = env(&[
            ("AGENTMESH_LLM_BASE_URL", "http://x/v1"),
            ("AGENTMESH_LLM_API_KEY", "k"),
            ("AGENTMESH_LLM_API_KEY_FILE", "/run/key"),
        ]);
        let err = LlmConfig::from_lookup(vars).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
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
