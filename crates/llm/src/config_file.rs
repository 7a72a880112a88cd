//! The `[llm]` section of `agentmesh.toml` and the `AGENTMESH_LLM_*` variables that override it.
//!
//! ```toml
//! [llm]
//! default_model = "gpt-4o-mini"
//! timeouts = { connect = "5s", first_token = "60s", idle = "30s", total = "120s" }
//! retry = { max_attempts = 3, backoff_base = "200ms", backoff_cap = "5s" }
//! circuit = { failures = 5, cooldown = "30s" }
//!
//! [[llm.providers]]
//! name = "primary"
//! base_url = "https://api.example.com/v1"
//! api_key_file = "/run/secrets/llm/key"
//! models = ["gpt-4o-mini"]
//! priority = 0
//!
//! [llm.prices."gpt-4o-mini"]
//! input_per_mtok = 0.15
//! output_per_mtok = 0.6
//! ```
//!
//! Durations are a number of seconds or a string with a unit (`250ms`, `5s`, `2m`). Variables
//! win over the file: `AGENTMESH_LLM_MODEL`, `AGENTMESH_LLM_{CONNECT,FIRST_TOKEN,IDLE,TOTAL}
//! _TIMEOUT`, `AGENTMESH_LLM_MAX_ATTEMPTS`, `AGENTMESH_LLM_CIRCUIT_FAILURES`,
//! `AGENTMESH_LLM_CIRCUIT_COOLDOWN`; `AGENTMESH_LLM_BASE_URL` / `_API_KEY` / `_API_KEY_FILE`
//! set the provider named `default` (added when the file has none of that name); and
//! `AGENTMESH_LLM_PROVIDER_<NAME>_{BASE_URL,API_KEY,API_KEY_FILE}` change a provider of the
//! file, `<NAME>` being its name upper-cased with every other character turned into `_`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{LlmConfig, LlmError, Price, ProviderConfig, Secret};

/// The whole file: only `[llm]` is ours, other sections belong to other services.
#[derive(Deserialize)]
struct Root {
    llm: Option<RawLlm>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLlm {
    default_model: Option<String>,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    circuit: RawCircuit,
    #[serde(default)]
    prices: HashMap<String, Price>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<RawDuration>,
    first_token: Option<RawDuration>,
    idle: Option<RawDuration>,
    total: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    backoff_base: Option<RawDuration>,
    backoff_cap: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCircuit {
    failures: Option<u32>,
    cooldown: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// The configuration from an optional file (origin for messages, text) and variables.
/// `Ok(None)` when neither names a provider.
pub(crate) fn build(
    file: Option<(&str, &str)>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<LlmConfig>, LlmError> {
    let env = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let raw = match file {
        Some((origin, text)) => parse(origin, text)?,
        None => None,
    };
    let has_file_section = raw.is_some();
    let mut config = apply_file(raw.unwrap_or_default())?;
    apply_env(&mut config, &env)?;
    if config.providers.is_empty() && !has_file_section {
        return Ok(None);
    }
    config.validate()?;
    Ok(Some(config))
}

fn parse(origin: &str, text: &str) -> Result<Option<RawLlm>, LlmError> {
    let root: Root = toml::from_str(text)
        .map_err(|e| LlmError::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
    Ok(root.llm)
}

fn apply_file(raw: RawLlm) -> Result<LlmConfig, LlmError> {
    let mut config = LlmConfig::defaults();
    let duration = |field: &str, value: Option<RawDuration>, into: &mut Duration| {
        if let Some(value) = value {
            *into = to_duration(&value).map_err(|e| LlmError::Config(format!("{field}: {e}")))?;
        }
        Ok::<(), LlmError>(())
    };
    if let Some(model) = raw.default_model {
        config.default_model = model;
    }
    let t = raw.timeouts;
    duration(
        "llm.timeouts.connect",
        t.connect,
        &mut config.connect_timeout,
    )?;
    duration(
        "llm.timeouts.first_token",
        t.first_token,
        &mut config.first_token_timeout,
    )?;
    duration("llm.timeouts.idle", t.idle, &mut config.idle_timeout)?;
    duration("llm.timeouts.total", t.total, &mut config.total_timeout)?;
    let r = raw.retry;
    config.max_attempts = r.max_attempts.unwrap_or(config.max_attempts);
    duration(
        "llm.retry.backoff_base",
        r.backoff_base,
        &mut config.backoff_base,
    )?;
    duration(
        "llm.retry.backoff_cap",
        r.backoff_cap,
        &mut config.backoff_cap,
    )?;
    config.circuit_failures = raw.circuit.failures.unwrap_or(config.circuit_failures);
    duration(
        "llm.circuit.cooldown",
        raw.circuit.cooldown,
        &mut config.circuit_cooldown,
    )?;
    config.providers = raw.providers;
    for provider in &mut config.providers {
        provider.base_url = provider.base_url.trim_end_matches('/').to_string();
    }
    config.prices = raw.prices;
    Ok(config)
}

fn apply_env(
    config: &mut LlmConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), LlmError> {
    if let Some(model) = env("AGENTMESH_LLM_MODEL") {
        config.default_model = model;
    }
    let durations = [
        ("AGENTMESH_LLM_CONNECT_TIMEOUT", &mut config.connect_timeout),
        (
            "AGENTMESH_LLM_FIRST_TOKEN_TIMEOUT",
            &mut config.first_token_timeout,
        ),
        ("AGENTMESH_LLM_IDLE_TIMEOUT", &mut config.idle_timeout),
        ("AGENTMESH_LLM_TOTAL_TIMEOUT", &mut config.total_timeout),
        (
            "AGENTMESH_LLM_CIRCUIT_COOLDOWN",
            &mut config.circuit_cooldown,
        ),
    ];
    for (name, into) in durations {
        if let Some(value) = env(name) {
            *into = to_duration(&RawDuration::Text(value))
                .map_err(|e| LlmError::Config(format!("{name}: {e}")))?;
        }
    }
    let counts = [
        ("AGENTMESH_LLM_MAX_ATTEMPTS", &mut config.max_attempts),
        (
            "AGENTMESH_LLM_CIRCUIT_FAILURES",
            &mut config.circuit_failures,
        ),
    ];
    for (name, into) in counts {
        if let Some(value) = env(name) {
            *into = value.parse().map_err(|_| {
                LlmError::Config(format!("{name}: {value:?} is not a whole number"))
            })?;
        }
    }
    apply_shortcut(config, env);
    apply_provider_env(config, env);
    Ok(())
}

/// `AGENTMESH_LLM_BASE_URL` and its key: the provider named `default`, serving every model.
fn apply_shortcut(config: &mut LlmConfig, env: &impl Fn(&str) -> Option<String>) {
    let base_url = env("AGENTMESH_LLM_BASE_URL");
    let existing = config.providers.iter().position(|p| p.name == "default");
    let index = match (existing, base_url) {
        (Some(i), _) => i,
        (None, Some(url)) => {
            config.providers.insert(0, default_provider(&url));
            0
        }
        (None, None) => return,
    };
    set_provider_fields(&mut config.providers[index], "AGENTMESH_LLM_", env);
}

fn default_provider(base_url: &str) -> ProviderConfig {
    ProviderConfig {
        name: "default".into(),
        base_url: base_url.to_string(),
        api_key: None,
        api_key_file: None,
        models: Vec::new(),
        priority: 0,
    }
}

fn apply_provider_env(config: &mut LlmConfig, env: &impl Fn(&str) -> Option<String>) {
    for provider in &mut config.providers {
        let prefix = format!("AGENTMESH_LLM_PROVIDER_{}_", env_name(&provider.name));
        set_provider_fields(provider, &prefix, env);
    }
}

/// `<prefix>BASE_URL`, `<prefix>API_KEY`, `<prefix>API_KEY_FILE`; a key replaces a key file
/// and the other way round, so a variable can switch how the key is given.
fn set_provider_fields(
    provider: &mut ProviderConfig,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) {
    if let Some(url) = env(&format!("{prefix}BASE_URL")) {
        provider.base_url = url.trim_end_matches('/').to_string();
    }
    let key = env(&format!("{prefix}API_KEY"));
    let key_file = env(&format!("{prefix}API_KEY_FILE"));
    if key.is_some() || key_file.is_some() {
        provider.api_key = key.map(Secret::new);
        provider.api_key_file = key_file.map(PathBuf::from);
    }
}

/// `openai-eu.2` becomes `OPENAI_EU_2`.
fn env_name(provider: &str) -> String {
    provider
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn to_duration(value: &RawDuration) -> Result<Duration, String> {
    let (number, unit) = match value {
        RawDuration::Seconds(secs) => (*secs, "s"),
        RawDuration::Text(text) => split_unit(text.trim())?,
    };
    let secs = match unit {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{secs} seconds is not a duration (negative or too large)"))
}

fn split_unit(text: &str) -> Result<(f64, &str), String> {
    let at = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(at);
    let number = number
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not a duration such as \"500ms\" or \"30s\""))?;
    Ok((number, unit.trim()))
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

    const FILE: &str = r#"
[gateway]
listen = "0.0.0.0:8080"

[llm]
default_model = "m1"
timeouts = { connect = 2, first_token = "1.5s", idle = "500ms", total = "2m" }
retry = { max_attempts = 4, backoff_base = "50ms", backoff_cap = "1s" }
circuit = { failures = 3, cooldown = "10s" }

[[llm.providers]]
name = "openai-eu"
base_url = "https://eu.example.com/v1/"
api_key_file = "/run/secrets/key"
models = ["m1", "m2"]

[[llm.providers]]
name = "backup"
base_url = "http://127.0.0.1:9000/v1"
api_key = "sk-backup"
priority = 5

[llm.prices.m1]
input_per_mtok = 0.15
output_per_mtok = 0.6
"#;

    #[test]
    fn file_is_read_with_units_and_other_sections_ignored() {
        let config = build(Some(("agentmesh.toml", FILE)), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(config.default_model, "m1");
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.first_token_timeout, Duration::from_millis(1500));
        assert_eq!(config.idle_timeout, Duration::from_millis(500));
        assert_eq!(config.total_timeout, Duration::from_secs(120));
        assert_eq!((config.max_attempts, config.circuit_failures), (4, 3));
        assert_eq!(config.backoff_base, Duration::from_millis(50));
        assert_eq!(config.circuit_cooldown, Duration::from_secs(10));
        assert_eq!(config.providers[0].base_url, "https://eu.example.com/v1");
        assert_eq!(config.providers[0].models, ["m1", "m2"]);
        assert_eq!(
            config.providers[1].api_key.as_ref().unwrap().expose(),
            "sk-backup"
        );
        assert_eq!(config.providers[1].priority, 5);
        assert!((config.prices["m1"].output_per_mtok - 0.6).abs() < 1e-12);
    }

    #[test]
    fn variables_override_the_file() {
        let vars = env(&[
            ("AGENTMESH_LLM_MODEL", "m2"),
            ("AGENTMESH_LLM_TOTAL_TIMEOUT", "30s"),
            ("AGENTMESH_LLM_MAX_ATTEMPTS", "2"),
            ("AGENTMESH_LLM_PROVIDER_OPENAI_EU_API_KEY", "sk-from-env"),
            (
                "AGENTMESH_LLM_PROVIDER_BACKUP_BASE_URL",
                "http://127.0.0.2:9000/v1",
            ),
        ]);
        let config = build(Some(("f", FILE)), vars).unwrap().unwrap();
        assert_eq!(config.default_model, "m2");
        assert_eq!(config.total_timeout, Duration::from_secs(30));
        assert_eq!(config.max_attempts, 2);
        let eu = &config.providers[0];
        assert_eq!(eu.api_key.as_ref().unwrap().expose(), "sk-from-env");
        assert_eq!(
            eu.api_key_file, None,
            "a key variable replaces the key file"
        );
        assert_eq!(config.providers[1].base_url, "http://127.0.0.2:9000/v1");
    }

    #[test]
    fn shortcut_alone_builds_one_provider() {
        assert_eq!(build(None, env(&[])).unwrap(), None);
        assert_eq!(
            build(None, env(&[("AGENTMESH_LLM_BASE_URL", " ")])).unwrap(),
            None
        );
        let vars = env(&[
            ("AGENTMESH_LLM_BASE_URL", "http://127.0.0.1:9000/v1/"),
            ("AGENTMESH_LLM_API_KEY", "sk-1"),
        ]);
        let config = build(None, vars).unwrap().unwrap();
        assert_eq!(config.default_model, "gpt-4o-mini");
        assert_eq!(config.providers.len(), 1);
        assert_eq!(config.providers[0].name, "default");
        assert_eq!(config.providers[0].base_url, "http://127.0.0.1:9000/v1");
        assert_eq!(
            config.providers[0].api_key.as_ref().unwrap().expose(),
            "sk-1"
        );
        assert!(config.providers[0].serves("anything"));
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = |file: &str, vars: &[(&str, &str)]| {
            build(Some(("agentmesh.toml", file)), env(vars))
                .unwrap_err()
                .to_string()
        };
        let typo = err(
            "[llm]\n[[llm.providers]]\nname = \"a\"\nbse_url = \"http://x\"\n",
            &[],
        );
        assert!(
            typo.contains("bse_url") && typo.contains("agentmesh.toml"),
            "{typo}"
        );
        let unit = err("[llm.timeouts]\ntotal = \"5 parsecs\"\n", &[]);
        assert!(unit.contains("llm.timeouts.total"), "{unit}");
        let none = err("[llm]\ndefault_model = \"m\"\n", &[]);
        assert!(none.contains("llm.providers"), "{none}");
        let url = err(
            FILE,
            &[("AGENTMESH_LLM_PROVIDER_BACKUP_BASE_URL", "localhost:9000")],
        );
        assert!(url.contains("llm.providers[1].base_url"), "{url}");
        let count = err(FILE, &[("AGENTMESH_LLM_MAX_ATTEMPTS", "three")]);
        assert!(count.contains("AGENTMESH_LLM_MAX_ATTEMPTS"), "{count}");
        let both = err(
            FILE,
            &[
                ("AGENTMESH_LLM_BASE_URL", "http://x/v1"),
                ("AGENTMESH_LLM_API_KEY", "k"),
                ("AGENTMESH_LLM_API_KEY_FILE", "/run/key"),
            ],
        );
        assert!(both.contains("not both"), "{both}");
    }

    #[test]
    fn durations_take_units() {
        let d = |s: &str| to_duration(&RawDuration::Text(s.into()));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("7"), Ok(Duration::from_secs(7)));
        assert!(d("-1s").is_err());
        assert!(d("soon").is_err());
    }
}
