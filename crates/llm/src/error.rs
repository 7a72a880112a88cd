//! The one error type of the LLM client, with its HTTP status and a short kind for metrics.

use std::time::Duration;

/// Why a call to a provider failed for good (after retries and fallback).
///
/// Every variant that comes from a provider names it, so an operator knows
/// which endpoint or key to look at. None of them blames the caller's own
/// API key: a provider refusing our key is a 502, never a 401.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("invalid LLM configuration: {0}")]
    Config(String),

    #[error("no configured LLM provider serves model {model:?}")]
    UnknownModel { model: String },

    #[error(
        "provider {provider} rejected our API key (status {status}): the key is invalid or \
         expired; check or rotate it"
    )]
    Auth { provider: String, status: u16 },

    #[error("provider {provider} is rate limiting us{}", retry_hint(.retry_after))]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },

    #[error("provider {provider} timed out: {what} took longer than {}", secs(.limit))]
    Timeout {
        provider: String,
        what: &'static str,
        limit: Duration,
    },

    #[error("provider {provider} failed with status {status}: {message}")]
    Upstream {
        provider: String,
        status: u16,
        message: String,
    },

    #[error("provider {provider} rejected the request: {message}")]
    BadRequest { provider: String, message: String },

    #[error("could not reach provider {provider}: {message}")]
    Connect { provider: String, message: String },

    #[error("stream from provider {provider} broke before it finished: {message}")]
    Stream { provider: String, message: String },

    #[error("provider {provider} sent an answer we cannot read: {message}")]
    InvalidResponse { provider: String, message: String },

    /// Every provider for the model is skipped because its circuit is open; `provider` is
    /// the last one skipped and `retry_in` when the soonest one lets a probe through.
    #[error(
        "provider {provider} is failing and was skipped (circuit open); every provider for \
         this model is unavailable, next try in {}", secs(.retry_in)
    )]
    CircuitOpen {
        provider: String,
        retry_in: Duration,
    },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!(" (it asked to retry after {})", secs(wait)),
        None => String::new(),
    }
}

fn secs(d: &Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl LlmError {
    /// The status a gateway should answer with when this error ends a request.
    pub fn http_status(&self) -> u16 {
        match self {
            LlmError::Config(_) => 500,
            LlmError::UnknownModel { .. } | LlmError::BadRequest { .. } => 400,
            LlmError::Timeout { .. } => 504,
            LlmError::CircuitOpen { .. } => 503,
            LlmError::Auth { .. }
            | LlmError::RateLimited { .. }
            | LlmError::Upstream { .. }
            | LlmError::Connect { .. }
            | LlmError::Stream { .. }
            | LlmError::InvalidResponse { .. } => 502,
        }
    }

    /// A short, stable label (metrics, logs, error `code` fields).
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Config(_) => "config",
            LlmError::UnknownModel { .. } => "unknown_model",
            LlmError::Auth { .. } => "auth",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Timeout { .. } => "timeout",
            LlmError::Upstream { .. } => "upstream",
            LlmError::BadRequest { .. } => "bad_request",
            LlmError::Connect { .. } => "connect",
            LlmError::Stream { .. } => "stream",
            LlmError::InvalidResponse { .. } => "invalid_response",
            LlmError::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// The provider this error came from, when it came from one.
    pub fn provider(&self) -> Option<&str> {
        match self {
            LlmError::Config(_) | LlmError::UnknownModel { .. } => None,
            LlmError::Auth { provider, .. }
            | LlmError::RateLimited { provider, .. }
            | LlmError::Timeout { provider, .. }
            | LlmError::Upstream { provider, .. }
            | LlmError::BadRequest { provider, .. }
            | LlmError::Connect { provider, .. }
            | LlmError::Stream { provider, .. }
            | LlmError::InvalidResponse { provider, .. }
            | LlmError::CircuitOpen { provider, .. } => Some(provider),
        }
    }

    /// The wait the provider asked for, if any (for a `Retry-After` header).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            LlmError::CircuitOpen { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_error_names_provider_and_is_502() {
        let err = LlmError::Auth {
            provider: "openai".into(),
            status: 401,
        };
        assert_eq!(err.http_status(), 502);
        assert_eq!(err.provider(), Some("openai"));
        assert_eq!(
            err.to_string(),
            "provider openai rejected our API key (status 401): the key is invalid or expired; \
             check or rotate it"
        );
    }

    #[test]
    fn timeout_says_what_and_limit() {
        let err = LlmError::Timeout {
            provider: "local".into(),
            what: "first token",
            limit: Duration::from_millis(1500),
        };
        assert_eq!(err.http_status(), 504);
        assert_eq!(err.kind(), "timeout");
        assert_eq!(
            err.to_string(),
            "provider local timed out: first token took longer than 1.5s"
        );
    }
}
