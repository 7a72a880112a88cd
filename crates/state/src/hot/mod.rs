//! Backends of [`crate::Hot`]: process memory, and Redis with a memory fallback.

pub(crate) mod memory;
pub(crate) mod redis;

use crate::{RateDecision, RateLimits};
use std::time::Duration;

/// Length of a rate-limit window. A window opens at a key's first request
/// and closes one minute later (a fixed window anchored per key, the same in
/// both backends); the next request after that opens a fresh one.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// After a key is invalidated by id, how long it is refused by the key cache:
/// longer than any database lookup that may have started before the change.
pub const KEY_HOLD: Duration = Duration::from_secs(10);

/// How long a conversation's version outlives its last bump: longer than any
/// load that read the version before it.
pub(crate) const CONVERSATION_VERSION_TTL: Duration = Duration::from_secs(600);

/// Counts of one window after a check, and whether the check passed.
pub(crate) struct WindowState {
    pub allowed: bool,
    pub requests: u64,
    pub tokens: u64,
    pub reset_ms: u64,
    pub limited_by: Option<&'static str>,
}

/// Which limit, if any, refuses one more request of `cost` tokens.
pub(crate) fn refusal(
    limits: &RateLimits,
    requests: u64,
    tokens: u64,
    cost: u64,
) -> Option<&'static str> {
    if limits.rpm.is_some_and(|rpm| requests + 1 > u64::from(rpm)) {
        return Some("requests");
    }
    if limits
        .tpm
        .is_some_and(|tpm| tokens.saturating_add(cost) > u64::from(tpm))
    {
        return Some("tokens");
    }
    None
}

pub(crate) fn decision(limits: &RateLimits, w: &WindowState) -> RateDecision {
    RateDecision {
        allowed: w.allowed,
        remaining_requests: limits
            .rpm
            .map(|l| u32::try_from(u64::from(l).saturating_sub(w.requests)).unwrap_or(0)),
        remaining_tokens: limits.tpm.map(|l| u64::from(l).saturating_sub(w.tokens)),
        reset_secs: w.reset_ms.div_ceil(1000),
        limited_by: w.limited_by,
    }
}

/// The answer for a key without limits: nothing to count.
pub(crate) fn unlimited() -> RateDecision {
    RateDecision {
        allowed: true,
        remaining_requests: None,
        remaining_tokens: None,
        reset_secs: 0,
        limited_by: None,
    }
}
