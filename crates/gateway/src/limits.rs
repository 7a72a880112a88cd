//! Rate limits and budgets before a request, token and spend accounting after it.

use crate::app::AppState;
use crate::error::ApiError;
use crate::ledger::Settled;
use agentmesh_state::{ApiKey, RateDecision, RateLimits, SpendReservation, UsageRecord};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use std::time::Instant;

/// The outcome of admission: rate headers to add to the answer, and the spend reserved
/// from the key's budget (settled against the real cost when the request ends).
#[derive(Debug, Default)]
pub struct Admission {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub reserved_usd: f64,
}

/// Admits one request in a single atomic step shared by every replica: reserves the
/// key's expected cost from its budget and consumes one request and `estimated_tokens`
/// from its per-minute limits; a refusal by either consumes nothing. A hot-store failure
/// lets the request through: limits are loss-tolerant, availability is not.
pub async fn admit(
    app: &AppState,
    key: &ApiKey,
    estimated_tokens: u64,
) -> Result<Admission, ApiError> {
    let limits = RateLimits {
        rpm: key.rpm_limit,
        tpm: key.tpm_limit,
    };
    let spend = key.budget_usd.map(|budget| SpendReservation {
        usd: app.expected_cost(&key.id),
        budget,
        seed: key.spent_usd,
    });
    if spend.is_none() && limits.rpm.is_none() && limits.tpm.is_none() {
        return Ok(Admission::default());
    }
    let admitted = match app
        .state
        .hot
        .admit(&key.id, &limits, estimated_tokens, spend)
        .await
    {
        Ok(admitted) => admitted,
        Err(error) => {
            tracing::warn!(key_id = %key.id, %error, "admission check failed, allowing");
            return match (spend, key.budget_usd) {
                (Some(_), Some(budget)) if key.spent_usd >= budget => {
                    Err(budget_refusal(app, key, key.spent_usd, budget, 0.0))
                }
                _ => Ok(Admission::default()),
            };
        }
    };

    let mut reserved_usd = 0.0;
    if let (Some(spend), Some(decision)) = (spend, admitted.budget) {
        let before = if decision.allowed {
            decision.spent_usd - spend.usd
        } else {
            decision.spent_usd
        };
        app.metrics
            .budget_used(&key.id, before / spend.budget.max(f64::EPSILON));
        if !decision.allowed {
            return Err(budget_refusal(app, key, before, spend.budget, spend.usd));
        }
        reserved_usd = spend.usd;
    }
    let decision = admitted.rate;
    let headers = if limits.rpm.is_none() && limits.tpm.is_none() {
        Vec::new()
    } else {
        rate_headers(&limits, &decision)
    };
    if decision.allowed {
        return Ok(Admission {
            headers,
            reserved_usd,
        });
    }
    let which = decision.limited_by.unwrap_or("requests");
    app.metrics.rate_limited(if which == "tokens" {
        "tokens"
    } else {
        "requests"
    });
    let limit = match which {
        "tokens" => limits.tpm.map(|t| format!("{t} tokens")),
        _ => limits.rpm.map(|r| format!("{r} requests")),
    };
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "rate limit of {} per minute exceeded for API key {}; retry in {} s",
            limit.unwrap_or_else(|| which.to_string()),
            key.prefix,
            decision.reset_secs.max(1)
        ),
    )
    .with_code("rate_limit_exceeded");
    error.retry_after = Some(decision.reset_secs.max(1));
    error.headers = headers;
    Err(error)
}

/// 429 `budget_exceeded`, saying how much is spent and, when some budget is left, that
/// a request is expected to cost more than that.
fn budget_refusal(
    app: &AppState,
    key: &ApiKey,
    spent: f64,
    budget: f64,
    expected: f64,
) -> ApiError {
    app.metrics.rate_limited("budget");
    let message = if spent < budget {
        format!(
            "API key {} has spent ${spent:.4} of its ${budget:.4} budget; its requests \
             cost about ${expected:.4}, more than what remains",
            key.prefix
        )
    } else {
        format!(
            "API key {} has spent ${spent:.4} of its ${budget:.4} budget",
            key.prefix
        )
    };
    // No Retry-After: a spent budget does not come back by waiting. `x-should-retry`
    // tells the OpenAI SDKs not to retry this 429 on their own.
    let mut error =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).with_code("budget_exceeded");
    error.headers.push((
        HeaderName::from_static("x-should-retry"),
        HeaderValue::from_static("false"),
    ));
    error
}

/// `x-ratelimit-*` headers in the OpenAI format (`reset` as a duration like `12s`).
fn rate_headers(limits: &RateLimits, decision: &RateDecision) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    let reset = HeaderValue::from_str(&format!("{}s", decision.reset_secs)).ok();
    let mut push = |name: &'static str, value: Option<HeaderValue>| {
        if let Some(value) = value {
            headers.push((HeaderName::from_static(name), value));
        }
    };
    if let Some(rpm) = limits.rpm {
        push("x-ratelimit-limit-requests", Some(HeaderValue::from(rpm)));
        push(
            "x-ratelimit-remaining-requests",
            decision.remaining_requests.map(HeaderValue::from),
        );
        push("x-ratelimit-reset-requests", reset.clone());
    }
    if let Some(tpm) = limits.tpm {
        push("x-ratelimit-limit-tokens", Some(HeaderValue::from(tpm)));
        push(
            "x-ratelimit-remaining-tokens",
            decision.remaining_tokens.map(HeaderValue::from),
        );
        push("x-ratelimit-reset-tokens", reset);
    }
    headers
}

/// Accounting of one agent request: queued for the ledger exactly once, when the answer
/// is complete or, if the client goes away first, when this value is dropped (499).
pub struct Settlement {
    app: AppState,
    record: Option<UsageRecord>,
    estimated_tokens: u64,
    reserved_usd: f64,
    started: Instant,
    limited: bool,
    budgeted: bool,
}

impl Settlement {
    pub fn new(
        app: &AppState,
        request_id: &str,
        key: &ApiKey,
        agent: &str,
        estimated: u64,
        reserved_usd: f64,
    ) -> Self {
        let record = UsageRecord {
            request_id: request_id.to_string(),
            key_id: key.id.clone(),
            agent: agent.to_string(),
            model: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            latency_ms: 0,
            status: 499,
            created_at: chrono::Utc::now(),
        };
        Self {
            app: app.clone(),
            record: Some(record),
            estimated_tokens: estimated,
            reserved_usd,
            started: Instant::now(),
            limited: key.tpm_limit.is_some(),
            budgeted: key.budget_usd.is_some(),
        }
    }

    /// Adds usage reported by the agent (several reports add up).
    pub fn add_usage(&mut self, prompt: u32, completion: u32, cost: f64) {
        if let Some(record) = self.record.as_mut() {
            record.prompt_tokens = record.prompt_tokens.saturating_add(prompt);
            record.completion_tokens = record.completion_tokens.saturating_add(completion);
            record.cost_usd += cost;
        }
    }

    pub fn set_model(&mut self, model: &str) {
        if let Some(record) = self.record.as_mut() {
            record.model = model.to_string();
        }
    }

    /// Records the request with the HTTP status the client saw.
    pub fn finish(mut self, status: u16) {
        self.write(status);
    }

    fn write(&mut self, status: u16) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.status = status;
        record.latency_ms = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let token_correction = self.limited.then(|| {
            let used = u64::from(record.prompt_tokens) + u64::from(record.completion_tokens);
            i64::try_from(used).unwrap_or(i64::MAX)
                - i64::try_from(self.estimated_tokens).unwrap_or(i64::MAX)
        });
        let spend_correction = self.budgeted.then_some(record.cost_usd - self.reserved_usd);
        if self.budgeted && status == 200 {
            self.app.observe_cost(&record.key_id, record.cost_usd);
        }
        self.app.ledger.submit(Settled {
            record,
            token_correction,
            spend_correction,
        });
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.record.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            self.write(499);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_openai_names() {
        let limits = RateLimits {
            rpm: Some(10),
            tpm: Some(1000),
        };
        let decision = RateDecision {
            allowed: false,
            remaining_requests: Some(0),
            remaining_tokens: Some(500),
            reset_secs: 12,
            limited_by: Some("requests"),
        };
        let headers = rate_headers(&limits, &decision);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("10"));
        assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("0"));
        assert_eq!(get("x-ratelimit-reset-requests").as_deref(), Some("12s"));
        assert_eq!(get("x-ratelimit-remaining-tokens").as_deref(), Some("500"));
    }
}
