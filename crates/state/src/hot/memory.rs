//! In-process [`Hot`]: per-replica counters and cache, for the embedded mode
//! and as the Redis backend's fallback.

use super::{
    decision, refusal, unlimited, WindowState, CONVERSATION_VERSION_TTL, KEY_HOLD, WINDOW,
};
use crate::BUDGET_EPSILON;
use crate::{
    Admitted, ApiKey, BudgetDecision, CachedConversation, Conversation, Hot, RateDecision,
    RateLimits, Result, SpendReservation,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Entries kept before expired ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// Counters and cache of this process only: replicas do not share them.
#[derive(Default)]
pub struct MemoryHot {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    windows: HashMap<String, Window>,
    spend: HashMap<String, f64>,
    keys: HashMap<String, (ApiKey, Instant)>,
    /// Key id -> until when it may not be cached (see [`KEY_HOLD`]).
    held_keys: HashMap<String, Instant>,
    conversations: HashMap<String, (Conversation, Instant)>,
    /// Conversation id -> (version, when it was last bumped).
    versions: HashMap<String, (u64, Instant)>,
}

struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

impl Window {
    fn fresh(now: Instant) -> Self {
        Self {
            start: now,
            requests: 0,
            tokens: 0,
        }
    }

    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.start) < WINDOW
    }
}

impl MemoryHot {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave counters inconsistent
        // beyond one request, so a poisoned lock is still used.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn check(&self, key_id: &str, limits: &RateLimits, cost: u64) -> RateDecision {
        if limits.rpm.is_none() && limits.tpm.is_none() {
            return unlimited();
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.windows.len() > SWEEP_ABOVE {
            inner.windows.retain(|_, w| w.live(now));
        }
        let w = inner
            .windows
            .entry(key_id.to_owned())
            .or_insert_with(|| Window::fresh(now));
        if !w.live(now) {
            *w = Window::fresh(now);
        }
        let limited_by = refusal(limits, w.requests, w.tokens, cost);
        if limited_by.is_none() {
            w.requests += 1;
            w.tokens = w.tokens.saturating_add(cost);
        }
        let left = WINDOW.saturating_sub(now.duration_since(w.start));
        let state = WindowState {
            allowed: limited_by.is_none(),
            requests: w.requests,
            tokens: w.tokens,
            reset_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            limited_by,
        };
        decision(limits, &state)
    }

    pub(crate) fn adjust_tokens(&self, key_id: &str, delta: i64) {
        let now = Instant::now();
        let mut inner = self.lock();
        let w = inner
            .windows
            .entry(key_id.to_owned())
            .or_insert_with(|| Window::fresh(now));
        if !w.live(now) {
            *w = Window::fresh(now);
        }
        w.tokens = w.tokens.saturating_add_signed(delta);
    }

    pub(crate) fn add(&self, key_id: &str, usd: f64) -> f64 {
        let mut inner = self.lock();
        let total = inner.spend.entry(key_id.to_owned()).or_insert(0.0);
        *total += usd;
        *total
    }

    /// [`crate::Hot::admit`] in this process: reserve, check, give back on refusal.
    pub(crate) fn admit_locally(
        &self,
        key_id: &str,
        limits: &RateLimits,
        cost: u64,
        spend: Option<SpendReservation>,
    ) -> Admitted {
        let budget = spend.map(|s| self.reserve(key_id, s.usd, s.budget, s.seed));
        if budget.is_some_and(|b| !b.allowed) {
            return Admitted {
                budget,
                rate: unlimited(),
            };
        }
        let rate = if limits.rpm.is_none() && limits.tpm.is_none() {
            unlimited()
        } else {
            self.check(key_id, limits, cost)
        };
        if let (false, Some(s)) = (rate.allowed, spend) {
            self.add(key_id, -s.usd);
        }
        Admitted { budget, rate }
    }

    pub(crate) fn reserve(&self, key_id: &str, usd: f64, budget: f64, seed: f64) -> BudgetDecision {
        let mut inner = self.lock();
        let total = inner.spend.entry(key_id.to_owned()).or_insert(seed);
        let allowed = *total + usd <= budget + BUDGET_EPSILON;
        if allowed {
            *total += usd;
        }
        BudgetDecision {
            allowed,
            spent_usd: *total,
        }
    }

    pub(crate) fn get_spend(&self, key_id: &str) -> Option<f64> {
        self.lock().spend.get(key_id).copied()
    }

    pub(crate) fn seed(&self, key_id: &str, usd: f64) {
        self.lock().spend.entry(key_id.to_owned()).or_insert(usd);
    }

    pub(crate) fn put_key(&self, secret_hash: &str, key: &ApiKey, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner
            .held_keys
            .get(&key.id)
            .is_some_and(|until| *until > now)
        {
            return;
        }
        if inner.keys.len() > SWEEP_ABOVE {
            inner.keys.retain(|_, (_, until)| *until > now);
        }
        if inner.held_keys.len() > SWEEP_ABOVE {
            inner.held_keys.retain(|_, until| *until > now);
        }
        inner
            .keys
            .insert(secret_hash.to_owned(), (key.clone(), now + ttl));
    }

    pub(crate) fn get_key(&self, secret_hash: &str) -> Option<ApiKey> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.keys.get(secret_hash) {
            Some((key, until)) if *until > now => Some(key.clone()),
            Some(_) => {
                inner.keys.remove(secret_hash);
                None
            }
            None => None,
        }
    }

    pub(crate) fn drop_key(&self, secret_hash: &str) {
        self.lock().keys.remove(secret_hash);
    }

    /// Drops every entry of key `key_id` and holds it out of the cache for [`KEY_HOLD`].
    pub(crate) fn drop_key_id(&self, key_id: &str) {
        let mut inner = self.lock();
        inner.keys.retain(|_, (key, _)| key.id != key_id);
        inner
            .held_keys
            .insert(key_id.to_owned(), Instant::now() + KEY_HOLD);
    }

    /// Forgets every cached key (after missing invalidations, for instance).
    pub(crate) fn clear_keys(&self) {
        self.lock().keys.clear();
    }

    pub(crate) fn get_conversation(&self, id: &str) -> CachedConversation {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some((conversation, until)) = inner.conversations.get(id) {
            if *until > now {
                return CachedConversation::Hit(conversation.clone());
            }
            inner.conversations.remove(id);
        }
        let version = inner.versions.get(id).map_or(0, |(v, _)| *v);
        CachedConversation::Miss { version }
    }

    pub(crate) fn put_conversation(
        &self,
        conversation: &Conversation,
        version: u64,
        ttl: Duration,
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        let current = inner.versions.get(&conversation.id).map_or(0, |(v, _)| *v);
        if current != version {
            return;
        }
        if inner.conversations.len() > SWEEP_ABOVE {
            inner.conversations.retain(|_, (_, until)| *until > now);
        }
        inner
            .conversations
            .insert(conversation.id.clone(), (conversation.clone(), now + ttl));
    }

    pub(crate) fn bump_conversation(&self, id: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.conversations.remove(id);
        if inner.versions.len() > SWEEP_ABOVE {
            inner
                .versions
                .retain(|_, (_, at)| now.duration_since(*at) < CONVERSATION_VERSION_TTL);
        }
        let entry = inner.versions.entry(id.to_owned()).or_insert((0, now));
        *entry = (entry.0 + 1, now);
    }
}

#[async_trait]
impl Hot for MemoryHot {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn check_rate(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
    ) -> Result<RateDecision> {
        Ok(self.check(key_id, limits, tokens))
    }

    async fn admit(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
        spend: Option<SpendReservation>,
    ) -> Result<Admitted> {
        Ok(self.admit_locally(key_id, limits, tokens, spend))
    }

    async fn add_tokens(&self, key_id: &str, tokens: i64) -> Result<()> {
        self.adjust_tokens(key_id, tokens);
        Ok(())
    }

    async fn add_spend(&self, key_id: &str, usd: f64) -> Result<f64> {
        Ok(self.add(key_id, usd))
    }

    async fn spend(&self, key_id: &str) -> Result<Option<f64>> {
        Ok(self.get_spend(key_id))
    }

    async fn reserve_spend(
        &self,
        key_id: &str,
        usd: f64,
        budget: f64,
        seed: f64,
    ) -> Result<BudgetDecision> {
        Ok(self.reserve(key_id, usd, budget, seed))
    }

    async fn seed_spend(&self, key_id: &str, usd: f64) -> Result<()> {
        self.seed(key_id, usd);
        Ok(())
    }

    async fn cache_key(&self, secret_hash: &str, key: &ApiKey, ttl: Duration) -> Result<()> {
        self.put_key(secret_hash, key, ttl);
        Ok(())
    }

    async fn cached_key(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        Ok(self.get_key(secret_hash))
    }

    async fn invalidate_key(&self, secret_hash: &str) -> Result<()> {
        self.drop_key(secret_hash);
        Ok(())
    }

    async fn invalidate_key_id(&self, key_id: &str) -> Result<()> {
        self.drop_key_id(key_id);
        Ok(())
    }

    async fn cached_conversation(&self, id: &str) -> Result<CachedConversation> {
        Ok(self.get_conversation(id))
    }

    async fn cache_conversation(
        &self,
        conversation: &Conversation,
        version: u64,
        ttl: Duration,
    ) -> Result<()> {
        self.put_conversation(conversation, version, ttl);
        Ok(())
    }

    async fn invalidate_conversation(&self, id: &str) -> Result<()> {
        self.bump_conversation(id);
        Ok(())
    }
}
