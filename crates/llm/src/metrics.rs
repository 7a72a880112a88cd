//! The LLM client's metrics: calls and their duration, time to first token, tokens, cost,
//! retries, fallbacks and each provider's circuit. Labels are provider names and models
//! from the configuration (a model the configuration does not name counts as `other`).

use crate::circuit::CircuitState;
use crate::usage::UsageReport;
use crate::LlmConfig;

pub const REQUESTS: &str = "agentmesh_llm_requests_total";
pub const DURATION: &str = "agentmesh_llm_request_duration_seconds";
pub const FIRST_TOKEN: &str = "agentmesh_llm_time_to_first_token_seconds";
pub const INPUT_TOKENS: &str = "agentmesh_llm_input_tokens_total";
pub const OUTPUT_TOKENS: &str = "agentmesh_llm_output_tokens_total";
/// Integer micro-dollars: Prometheus counters here count whole units.
pub const COST: &str = "agentmesh_llm_cost_microusd_total";
pub const RETRIES: &str = "agentmesh_llm_retries_total";
pub const FALLBACKS: &str = "agentmesh_llm_fallbacks_total";
pub const CIRCUIT: &str = "agentmesh_llm_circuit_state";

const STATES: [CircuitState; 3] = [
    CircuitState::Closed,
    CircuitState::HalfOpen,
    CircuitState::Open,
];

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "LLM calls, by provider, model and outcome (ok or error kind)."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "LLM call duration, retries and fallbacks included, to the end of the stream."
    );
    describe_histogram!(
        FIRST_TOKEN,
        Unit::Seconds,
        "Time from the call to the first streamed event."
    );
    describe_counter!(
        INPUT_TOKENS,
        "Prompt tokens, by provider and answering model."
    );
    describe_counter!(
        OUTPUT_TOKENS,
        "Completion tokens, by provider and answering model."
    );
    describe_counter!(
        COST,
        "Cost in millionths of a US dollar, from the price table."
    );
    describe_counter!(
        RETRIES,
        "Attempts retried on the same provider, by error kind."
    );
    describe_counter!(
        FALLBACKS,
        "Providers given up for the next one, by error kind."
    );
    describe_gauge!(
        CIRCUIT,
        "1 for each provider's current circuit state (closed, half_open, open), else 0."
    );
}

/// `model` when the configuration names it, else `other` (keeps label sets bounded).
pub fn model_label(config: &LlmConfig, model: &str) -> String {
    let known = config.default_model == model
        || config.prices.contains_key(model)
        || config
            .providers
            .iter()
            .any(|p| p.models.iter().any(|m| m == model));
    if known { model } else { "other" }.to_string()
}

/// Sets provider `provider`'s circuit gauge to `state` (1 for it, 0 for the others).
pub fn set_circuit_state(provider: &str, state: CircuitState) {
    for candidate in STATES {
        let value = if candidate == state { 1.0 } else { 0.0 };
        let labels = [
            ("provider", provider.to_string()),
            ("state", candidate.as_str().to_string()),
        ];
        metrics::gauge!(CIRCUIT, &labels).set(value);
    }
}

/// Tokens and cost of one answered (or dropped) attempt.
pub fn usage(report: &UsageReport) {
    let labels = [
        ("provider", report.provider.clone()),
        ("model", report.model.clone()),
    ];
    let usage = &report.usage;
    metrics::counter!(INPUT_TOKENS, &labels).increment(u64::from(usage.prompt_tokens));
    metrics::counter!(OUTPUT_TOKENS, &labels).increment(u64::from(usage.completion_tokens));
    if usage.cost_usd.is_finite() && usage.cost_usd > 0.0 {
        let micros = (usage.cost_usd * 1e6).round().min(u64::MAX as f64) as u64;
        metrics::counter!(COST, &labels).increment(micros);
    }
}

pub fn retry(provider: &str, kind: &'static str) {
    let labels = [
        ("provider", provider.to_string()),
        ("reason", kind.to_string()),
    ];
    metrics::counter!(RETRIES, &labels).increment(1);
}

pub fn fallback(provider: &str, kind: &'static str) {
    let labels = [
        ("provider", provider.to_string()),
        ("reason", kind.to_string()),
    ];
    metrics::counter!(FALLBACKS, &labels).increment(1);
}

/// One finished call: `outcome` is `ok`, `cancelled` or an error kind.
pub fn finished(provider: &str, model: &str, outcome: &str, seconds: f64) {
    let labels = [
        ("provider", provider.to_string()),
        ("model", model.to_string()),
    ];
    metrics::histogram!(DURATION, &labels).record(seconds);
    let labels = [
        ("provider", provider.to_string()),
        ("model", model.to_string()),
        ("outcome", outcome.to_string()),
    ];
    metrics::counter!(REQUESTS, &labels).increment(1);
}

pub fn first_token(provider: &str, model: &str, seconds: f64) {
    let labels = [
        ("provider", provider.to_string()),
        ("model", model.to_string()),
    ];
    metrics::histogram!(FIRST_TOKEN, &labels).record(seconds);
}
