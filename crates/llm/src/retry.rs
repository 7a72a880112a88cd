//! Retry policy: which failures are worth another try, backoff with full jitter, Retry-After.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::LlmError;

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try the same provider again (after a wait).
    Retry,
    /// This provider cannot serve the request; try the next one.
    Fallback,
    /// No provider will do better (the request itself is wrong).
    Stop,
}

/// Whether a failed attempt counts against the provider's circuit: the provider, not the
/// request or our own configuration, was at fault.
pub(crate) fn blames_provider(err: &LlmError) -> bool {
    !matches!(
        err,
        LlmError::BadRequest { .. }
            | LlmError::Config(_)
            | LlmError::UnknownModel { .. }
            | LlmError::CircuitOpen { .. }
    )
}

/// Errors seen before any byte reached the caller.
pub(crate) fn next_step(err: &LlmError) -> Next {
    match err {
        LlmError::Connect { .. }
        | LlmError::RateLimited { .. }
        | LlmError::Timeout { .. }
        | LlmError::Stream { .. } => Next::Retry,
        LlmError::Upstream { status, .. } if *status >= 500 || *status == 408 => Next::Retry,
        // A refused key or an unknown model is the provider's problem: another may serve.
        LlmError::Auth { .. } | LlmError::Upstream { .. } | LlmError::InvalidResponse { .. } => {
            Next::Fallback
        }
        LlmError::CircuitOpen { .. } => Next::Fallback,
        LlmError::BadRequest { .. } | LlmError::Config(_) | LlmError::UnknownModel { .. } => {
            Next::Stop
        }
    }
}

/// Full jitter: a uniform wait between zero and `base * 2^attempt`, capped.
/// `attempt` counts the failures so far on this provider, from 1.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let ceiling = exp.min(cap);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// A `Retry-After` value: delay seconds or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let later = "Wed, 21 Oct 2015 07:28:30 GMT";
        assert_eq!(parse_retry_after(later, now), Some(Duration::from_secs(30)));
        let earlier = "Wed, 21 Oct 2015 07:27:00 GMT";
        assert_eq!(parse_retry_after(earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_stays_within_exponential_cap() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(5));
        for attempt in 1..12 {
            let limit = (base * 2u32.pow(attempt - 1)).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= limit);
            }
        }
        // Full jitter: over many draws the waits are spread, not constant.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(5, base, cap)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn classification() {
        let p = || "p".to_string();
        let up = |status| LlmError::Upstream {
            provider: p(),
            status,
            message: String::new(),
        };
        assert_eq!(next_step(&up(503)), Next::Retry);
        assert_eq!(next_step(&up(404)), Next::Fallback);
        assert_eq!(
            next_step(&LlmError::Auth {
                provider: p(),
                status: 401
            }),
            Next::Fallback
        );
        let bad = LlmError::BadRequest {
            provider: p(),
            message: String::new(),
        };
        assert_eq!(next_step(&bad), Next::Stop);
        let limited = LlmError::RateLimited {
            provider: p(),
            retry_after: None,
        };
        assert_eq!(next_step(&limited), Next::Retry);
    }
}
