//! Redis [`Hot`]: counters and cache shared by every replica.
//!
//! Each call is bounded by a short timeout. When Redis fails or is slow the
//! call is served by an embedded [`MemoryHot`] instead (per-replica limits,
//! per-replica spend), one warning is logged on entering that degraded mode
//! and one info line on leaving it. While degraded, Redis is probed at most
//! once per [`PROBE_INTERVAL`]; other calls go straight to memory, so an
//! outage costs no latency. Spend added while degraded stays in memory and is
//! not replayed to Redis (the database's ledger remains the record).
//!
//! Key invalidations by id are also published on a channel: every replica
//! drops its in-process copies of that key (entries cached in memory while
//! Redis was unreachable), and clears them all when its subscription
//! reconnects, since it may have missed messages. Conversation
//! invalidations that fail are retried once Redis answers again.

use super::memory::MemoryHot;
use super::{decision, unlimited, WindowState, CONVERSATION_VERSION_TTL, KEY_HOLD, WINDOW};
use crate::BUDGET_EPSILON;
use crate::{
    Admitted, ApiKey, BudgetDecision, CachedConversation, Conversation, Hot, RateDecision,
    RateLimits, Result, SpendReservation, StateError,
};
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default bound on one Redis call.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a degraded backend tries Redis again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key read from Redis is served from this process's memory without asking
/// Redis again. Only while the invalidation channel is subscribed, so that a revoke or
/// rotate on another replica still reaches the copy (within the channel's delivery time).
const LOCAL_KEY_TTL: Duration = Duration::from_secs(5);

/// Largest token count passed to Lua (numbers there are doubles).
const MAX_LUA_INT: u64 = 1 << 52;

/// Checks both limits and consumes both or nothing.
/// KEYS[1] window hash; ARGV rpm, tpm (-1 = none), cost, window ms.
/// Returns {allowed, requests, tokens, ttl_ms, refused_by (0 none, 1 requests, 2 tokens)}.
const RATE_SCRIPT: &str = r"
local key = KEYS[1]
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local ttl = redis.call('PTTL', key)
if ttl == -1 then
  redis.call('DEL', key)
end
local used = redis.call('HMGET', key, 'r', 't')
local req = tonumber(used[1]) or 0
local tok = tonumber(used[2]) or 0
if ttl < 0 then ttl = window end
if rpm >= 0 and req + 1 > rpm then return {0, req, tok, ttl, 1} end
if tpm >= 0 and tok + cost > tpm then return {0, req, tok, ttl, 2} end
req = redis.call('HINCRBY', key, 'r', 1)
tok = redis.call('HINCRBY', key, 't', cost)
if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, window) end
return {1, req, tok, ttl, 0}
";

/// Corrects the token count of the current window, never below zero.
const TOKENS_SCRIPT: &str = r"
local v = redis.call('HINCRBY', KEYS[1], 't', ARGV[1])
if v < 0 then redis.call('HSET', KEYS[1], 't', 0) end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
";

/// Caches a key unless it is held after an invalidation, and indexes the
/// entry under the key's id. KEYS: entry, id index, hold. ARGV: json, ttl ms.
const CACHE_KEY_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
";

/// Deletes every entry indexed under a key id, holds the id out of the
/// cache, and tells every replica. KEYS: id index, hold.
/// ARGV: hold ms, channel, key id. The entries' names come from the index,
/// so this script needs a single Redis (not a cluster).
const INVALIDATE_ID_SCRIPT: &str = r"
local entries = redis.call('SMEMBERS', KEYS[1])
for _, entry in ipairs(entries) do redis.call('DEL', entry) end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return #entries
";

/// Stores a conversation only if its version did not move since it was read.
/// KEYS: entry, version. ARGV: json, version read, ttl ms.
const CACHE_CONVERSATION_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
";

/// Drops a cached conversation and bumps its version. KEYS: entry, version.
/// ARGV: version ttl ms.
const BUMP_CONVERSATION_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
local v = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return v
";

/// One request's admission: the budget reservation, then both rate limits; consumes all
/// or nothing. KEYS: window hash, spend counter. ARGV: rpm, tpm (-1 = none), cost,
/// window ms, has budget (0/1), usd, budget, seed, epsilon.
/// Returns {allowed, requests, tokens, ttl_ms, refused_by (0 none, 1 requests,
/// 2 tokens, 3 budget), spent as a string}.
const ADMIT_SCRIPT: &str = r"
local spent = nil
local usd = tonumber(ARGV[6])
if ARGV[5] == '1' then
  spent = tonumber(redis.call('GET', KEYS[2]) or ARGV[8])
  redis.call('SET', KEYS[2], spent, 'NX')
  if spent + usd > tonumber(ARGV[7]) + tonumber(ARGV[9]) then
    return {0, 0, 0, 0, 3, tostring(spent)}
  end
end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local req = 0
local tok = 0
local ttl = 0
if rpm >= 0 or tpm >= 0 then
  local key = KEYS[1]
  local cost = tonumber(ARGV[3])
  local window = tonumber(ARGV[4])
  ttl = redis.call('PTTL', key)
  if ttl == -1 then
    redis.call('DEL', key)
  end
  local used = redis.call('HMGET', key, 'r', 't')
  req = tonumber(used[1]) or 0
  tok = tonumber(used[2]) or 0
  if ttl < 0 then ttl = window end
  local refused = '0'
  if spent then refused = tostring(spent) end
  if rpm >= 0 and req + 1 > rpm then return {0, req, tok, ttl, 1, refused} end
  if tpm >= 0 and tok + cost > tpm then return {0, req, tok, ttl, 2, refused} end
  req = redis.call('HINCRBY', key, 'r', 1)
  tok = redis.call('HINCRBY', key, 't', cost)
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, window) end
end
local total = '0'
if spent then total = redis.call('INCRBYFLOAT', KEYS[2], usd) end
return {1, req, tok, ttl, 0, total}
";

/// Adds spend unless it would pass the budget; a missing counter starts at
/// the seed. KEYS: spend counter. ARGV: usd, budget, seed, epsilon.
/// Returns {allowed, total as a string}.
const RESERVE_SCRIPT: &str = r"
local usd = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or ARGV[3])
if current + usd > tonumber(ARGV[2]) + tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], current, 'NX')
  return {0, tostring(current)}
end
redis.call('SET', KEYS[1], current, 'NX')
local total = redis.call('INCRBYFLOAT', KEYS[1], usd)
return {1, total}
";

/// Conversation ids whose invalidation failed, kept for a retry; beyond this
/// many the oldest state is only bounded by the cache TTL.
const MAX_PENDING: usize = 10_000;

pub struct RedisHot {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    fallback: Arc<MemoryHot>,
    degraded: AtomicBool,
    /// While degraded: no Redis call before this instant.
    next_probe: Mutex<Instant>,
    /// Conversations whose invalidation did not reach Redis.
    pending: Mutex<HashSet<String>>,
    /// Drops in-process key copies when another replica invalidates a key.
    listener: Option<tokio::task::AbortHandle>,
    /// True while the listener is subscribed: only then may keys be served locally.
    listening: Arc<AtomicBool>,
    rate_script: redis::Script,
    tokens_script: redis::Script,
    cache_key_script: redis::Script,
    invalidate_id_script: redis::Script,
    cache_conversation_script: redis::Script,
    bump_conversation_script: redis::Script,
    reserve_script: redis::Script,
    admit_script: redis::Script,
}

impl Drop for RedisHot {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl RedisHot {
    /// Prepares a client; the connection is made lazily, so an unreachable
    /// Redis at start-up means degraded mode, not a failed start.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Invalid(format!("invalid redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StateError::Invalid(format!("redis client: {e}")))?;
        let fallback = Arc::new(MemoryHot::new());
        let channel = format!("{prefix}key-invalidations");
        let listening = Arc::new(AtomicBool::new(false));
        let listener = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = listen(
                    client,
                    channel,
                    fallback.clone(),
                    listening.clone(),
                    timeout,
                );
                Some(runtime.spawn(task).abort_handle())
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: key invalidations from other replicas unheard");
                None
            }
        };
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            fallback,
            degraded: AtomicBool::new(false),
            next_probe: Mutex::new(Instant::now()),
            pending: Mutex::new(HashSet::new()),
            listener,
            listening,
            rate_script: redis::Script::new(RATE_SCRIPT),
            tokens_script: redis::Script::new(TOKENS_SCRIPT),
            cache_key_script: redis::Script::new(CACHE_KEY_SCRIPT),
            invalidate_id_script: redis::Script::new(INVALIDATE_ID_SCRIPT),
            cache_conversation_script: redis::Script::new(CACHE_CONVERSATION_SCRIPT),
            bump_conversation_script: redis::Script::new(BUMP_CONVERSATION_SCRIPT),
            reserve_script: redis::Script::new(RESERVE_SCRIPT),
            admit_script: redis::Script::new(ADMIT_SCRIPT),
        })
    }

    /// True while calls are served from process memory because Redis failed.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn probe_time(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.next_probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn should_skip(&self) -> bool {
        self.degraded() && Instant::now() < *self.probe_time()
    }

    fn mark_ok(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = "redis", "redis recovered, leaving degraded mode");
        }
    }

    fn mark_failed(&self, op: &'static str, error: &str) {
        *self.probe_time() = Instant::now() + PROBE_INTERVAL;
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = "redis",
                op,
                error,
                "redis unavailable, using process memory"
            );
        } else {
            tracing::debug!(backend = "redis", op, error, "redis still unavailable");
        }
    }

    /// Runs one Redis call within the timeout; None means "use the fallback".
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.should_skip() {
            return None;
        }
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(value)) => {
                self.mark_ok();
                Some(value)
            }
            Ok(Err(e)) => {
                self.mark_failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.mark_failed(op, "timed out");
                None
            }
        }
    }

    async fn redis_rate(
        &self,
        key_id: &str,
        limits: &RateLimits,
        cost: u64,
    ) -> Option<RateDecision> {
        let key = self.key("rl", key_id);
        let rpm = limits.rpm.map_or(-1, i64::from);
        let tpm = limits.tpm.map_or(-1, i64::from);
        let window_ms = u64::try_from(WINDOW.as_millis()).unwrap_or(60_000);
        let reply: Vec<i64> = self
            .call("check_rate", |mut conn| async move {
                self.rate_script
                    .key(key)
                    .arg(rpm)
                    .arg(tpm)
                    .arg(cost)
                    .arg(window_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        let state = WindowState {
            allowed: at(0) == 1,
            requests: u64::try_from(at(1)).unwrap_or(0),
            tokens: u64::try_from(at(2)).unwrap_or(0),
            reset_ms: u64::try_from(at(3)).unwrap_or(0),
            limited_by: match at(4) {
                1 => Some("requests"),
                2 => Some("tokens"),
                _ => None,
            },
        };
        Some(decision(limits, &state))
    }
}

#[async_trait]
impl Hot for RedisHot {
    fn backend(&self) -> &'static str {
        "redis"
    }

    /// Always asks Redis (even while degraded), so readiness sees the truth.
    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(_)) => {
                self.mark_ok();
                Ok(())
            }
            Ok(Err(e)) => Err(StateError::Unavailable {
                backend: "redis",
                message: e.to_string(),
            }),
            Err(_) => Err(StateError::Unavailable {
                backend: "redis",
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    async fn check_rate(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
    ) -> Result<RateDecision> {
        if limits.rpm.is_none() && limits.tpm.is_none() {
            return Ok(unlimited());
        }
        let cost = tokens.min(MAX_LUA_INT);
        match self.redis_rate(key_id, limits, cost).await {
            Some(decision) => Ok(decision),
            None => Ok(self.fallback.check(key_id, limits, cost)),
        }
    }

    async fn add_tokens(&self, key_id: &str, tokens: i64) -> Result<()> {
        let key = self.key("rl", key_id);
        let window_ms = u64::try_from(WINDOW.as_millis()).unwrap_or(60_000);
        let done = self
            .call("add_tokens", |mut conn| async move {
                self.tokens_script
                    .key(key)
                    .arg(tokens)
                    .arg(window_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if done.is_none() {
            self.fallback.adjust_tokens(key_id, tokens);
        }
        Ok(())
    }

    async fn add_spend(&self, key_id: &str, usd: f64) -> Result<f64> {
        let key = self.key("spend", key_id);
        let total = self
            .call("add_spend", |mut conn| async move {
                redis::cmd("INCRBYFLOAT")
                    .arg(key)
                    .arg(usd)
                    .query_async::<f64>(&mut conn)
                    .await
            })
            .await;
        Ok(total.unwrap_or_else(|| self.fallback.add(key_id, usd)))
    }

    async fn spend(&self, key_id: &str) -> Result<Option<f64>> {
        let key = self.key("spend", key_id);
        let value = self
            .call("spend", |mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<f64>>(&mut conn)
                    .await
            })
            .await;
        Ok(value.unwrap_or_else(|| self.fallback.get_spend(key_id)))
    }

    async fn admit(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
        spend: Option<SpendReservation>,
    ) -> Result<Admitted> {
        let keys = [self.key("rl", key_id), self.key("spend", key_id)];
        let cost = tokens.min(MAX_LUA_INT);
        let window_ms = u64::try_from(WINDOW.as_millis()).unwrap_or(60_000);
        let reservation = spend.unwrap_or(SpendReservation {
            usd: 0.0,
            budget: 0.0,
            seed: 0.0,
        });
        let reply = self
            .call("admit", |mut conn| async move {
                self.admit_script
                    .key(&keys[..])
                    .arg(limits.rpm.map_or(-1, i64::from))
                    .arg(limits.tpm.map_or(-1, i64::from))
                    .arg(cost)
                    .arg(window_ms)
                    .arg(u8::from(spend.is_some()))
                    .arg(reservation.usd)
                    .arg(reservation.budget)
                    .arg(reservation.seed)
                    .arg(BUDGET_EPSILON)
                    .invoke_async::<(i64, i64, i64, i64, i64, String)>(&mut conn)
                    .await
            })
            .await;
        let Some((allowed, requests, tokens_used, ttl, refused_by, spent)) = reply else {
            return Ok(self.fallback.admit_locally(key_id, limits, cost, spend));
        };
        let spent_usd = spent.parse().unwrap_or(reservation.seed);
        let budget = spend.map(|_| BudgetDecision {
            allowed: refused_by != 3,
            spent_usd,
        });
        let rate = if refused_by == 3 || (limits.rpm.is_none() && limits.tpm.is_none()) {
            unlimited()
        } else {
            let state = WindowState {
                allowed: allowed == 1,
                requests: u64::try_from(requests).unwrap_or(0),
                tokens: u64::try_from(tokens_used).unwrap_or(0),
                reset_ms: u64::try_from(ttl).unwrap_or(0),
                limited_by: match refused_by {
                    1 => Some("requests"),
                    2 => Some("tokens"),
                    _ => None,
                },
            };
            decision(limits, &state)
        };
        Ok(Admitted { budget, rate })
    }

    async fn reserve_spend(
        &self,
        key_id: &str,
        usd: f64,
        budget: f64,
        seed: f64,
    ) -> Result<BudgetDecision> {
        let key = self.key("spend", key_id);
        let reply = self
            .call("reserve_spend", |mut conn| async move {
                self.reserve_script
                    .key(key)
                    .arg(usd)
                    .arg(budget)
                    .arg(seed)
                    .arg(BUDGET_EPSILON)
                    .invoke_async::<(i64, String)>(&mut conn)
                    .await
            })
            .await;
        match reply {
            Some((allowed, total)) => Ok(BudgetDecision {
                allowed: allowed == 1,
                spent_usd: total.parse().unwrap_or(seed),
            }),
            None => Ok(self.fallback.reserve(key_id, usd, budget, seed)),
        }
    }

    async fn seed_spend(&self, key_id: &str, usd: f64) -> Result<()> {
        let key = self.key("spend", key_id);
        let done = self
            .call("seed_spend", |mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(usd)
                    .arg("NX")
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if done.is_none() {
            self.fallback.seed(key_id, usd);
        }
        Ok(())
    }

    async fn cache_key(&self, secret_hash: &str, key: &ApiKey, ttl: Duration) -> Result<()> {
        let json = serde_json::to_string(key)
            .map_err(|e| StateError::Internal(format!("api key to json: {e}")))?;
        let keys = [
            self.key("key", secret_hash),
            self.key("keyid", &key.id),
            self.key("keyhold", &key.id),
        ];
        let millis = millis(ttl);
        let done = self
            .call("cache_key", |mut conn| async move {
                self.cache_key_script
                    .key(&keys[..])
                    .arg(json)
                    .arg(millis)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match done {
            None => self.fallback.put_key(secret_hash, key, ttl),
            Some(_) if self.listening.load(Ordering::Relaxed) => {
                self.fallback
                    .put_key(secret_hash, key, ttl.min(LOCAL_KEY_TTL));
            }
            Some(_) => {}
        }
        Ok(())
    }

    async fn cached_key(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let local = self.listening.load(Ordering::Relaxed) && !self.degraded();
        if local {
            if let Some(key) = self.fallback.get_key(secret_hash) {
                return Ok(Some(key));
            }
        }
        let redis_key = self.key("key", secret_hash);
        let found = self
            .call("cached_key", |mut conn| async move {
                redis::cmd("GET")
                    .arg(redis_key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        match found {
            // An entry that does not parse (older format) is a miss.
            Some(json) => {
                let key: Option<ApiKey> = json.and_then(|j| serde_json::from_str(&j).ok());
                if let Some(key) = key.as_ref().filter(|_| local) {
                    self.fallback.put_key(secret_hash, key, LOCAL_KEY_TTL);
                }
                Ok(key)
            }
            None => Ok(self.fallback.get_key(secret_hash)),
        }
    }

    async fn invalidate_key(&self, secret_hash: &str) -> Result<()> {
        self.fallback.drop_key(secret_hash);
        let redis_key = self.key("key", secret_hash);
        self.call("invalidate_key", |mut conn| async move {
            redis::cmd("DEL")
                .arg(redis_key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await;
        Ok(())
    }

    async fn invalidate_key_id(&self, key_id: &str) -> Result<()> {
        self.fallback.drop_key_id(key_id);
        let keys = [self.key("keyid", key_id), self.key("keyhold", key_id)];
        let channel = self.channel();
        let done = self
            .call("invalidate_key_id", |mut conn| async move {
                self.invalidate_id_script
                    .key(&keys[..])
                    .arg(millis(KEY_HOLD))
                    .arg(channel)
                    .arg(key_id)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match done {
            Some(_) => Ok(()),
            None => Err(StateError::Unavailable {
                backend: "redis",
                message: format!("key {key_id} not invalidated in other replicas"),
            }),
        }
    }

    async fn cached_conversation(&self, id: &str) -> Result<CachedConversation> {
        self.retry_pending().await;
        let keys = [self.key("conv", id), self.key("convver", id)];
        let found = self
            .call("cached_conversation", |mut conn| async move {
                redis::cmd("MGET")
                    .arg(&keys[..])
                    .query_async::<(Option<String>, Option<u64>)>(&mut conn)
                    .await
            })
            .await;
        // Unreachable: a miss that can never be stored (no version matches u64::MAX).
        let Some((json, version)) = found else {
            return Ok(CachedConversation::Miss { version: u64::MAX });
        };
        let cached = json.and_then(|j| serde_json::from_str::<Conversation>(&j).ok());
        Ok(match cached {
            Some(conversation) => CachedConversation::Hit(conversation),
            None => CachedConversation::Miss {
                version: version.unwrap_or(0),
            },
        })
    }

    async fn cache_conversation(
        &self,
        conversation: &Conversation,
        version: u64,
        ttl: Duration,
    ) -> Result<()> {
        if version == u64::MAX {
            return Ok(());
        }
        let json = serde_json::to_string(conversation)
            .map_err(|e| StateError::Internal(format!("conversation to json: {e}")))?;
        let keys = [
            self.key("conv", &conversation.id),
            self.key("convver", &conversation.id),
        ];
        self.call("cache_conversation", |mut conn| async move {
            self.cache_conversation_script
                .key(&keys[..])
                .arg(json)
                .arg(version.to_string())
                .arg(millis(ttl))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await;
        Ok(())
    }

    async fn invalidate_conversation(&self, id: &str) -> Result<()> {
        if !self.bump_conversation(id).await {
            self.remember_pending(id);
        }
        Ok(())
    }

    fn degraded(&self) -> bool {
        RedisHot::degraded(self)
    }
}

impl RedisHot {
    fn channel(&self) -> String {
        format!("{}key-invalidations", self.prefix)
    }

    /// True when Redis dropped the cached copy and bumped the version.
    async fn bump_conversation(&self, id: &str) -> bool {
        let keys = [self.key("conv", id), self.key("convver", id)];
        self.call("invalidate_conversation", |mut conn| async move {
            self.bump_conversation_script
                .key(&keys[..])
                .arg(millis(CONVERSATION_VERSION_TTL))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .is_some()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember_pending(&self, id: &str) {
        let mut pending = self.pending();
        if pending.len() < MAX_PENDING {
            pending.insert(id.to_owned());
        }
    }

    /// Retries invalidations that failed, once Redis answers again.
    async fn retry_pending(&self) {
        if self.should_skip() {
            return;
        }
        let ids: Vec<String> = self.pending().drain().collect();
        for (i, id) in ids.iter().enumerate() {
            if !self.bump_conversation(id).await {
                for id in &ids[i..] {
                    self.remember_pending(id);
                }
                return;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Listens for key invalidations from every replica until aborted,
/// reconnecting after failures; each (re)subscription clears the in-process
/// key copies, since messages sent while disconnected are lost.
async fn listen(
    client: redis::Client,
    channel: String,
    fallback: Arc<MemoryHot>,
    listening: Arc<AtomicBool>,
    timeout: Duration,
) {
    let mut connected = true;
    loop {
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(timeout.max(Duration::from_secs(1)), subscribe).await {
            Ok(Ok(pubsub)) => {
                fallback.clear_keys();
                connected = true;
                listening.store(true, Ordering::Relaxed);
                tracing::debug!(%channel, "listening for key invalidations");
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(key_id) = msg.get_payload::<String>() {
                        fallback.drop_key_id(&key_id);
                    }
                }
                // Invalidations may be missed from here on: no more local copies.
                listening.store(false, Ordering::Relaxed);
                fallback.clear_keys();
            }
            Ok(Err(error)) if connected => {
                tracing::debug!(%error, "key invalidation subscription failed");
                connected = false;
            }
            _ => connected = false,
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testing;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            prefix: "am-xyz".into(),
            scopes: vec![],
            rpm_limit: None,
            tpm_limit: None,
            budget_usd: None,
            spent_usd: 0.0,
            expires_at: None,
            revoked_at: None,
            created_at: chrono::Utc::now(),
            last_used_at: None,
        }
    }

    async fn subscribers(channel: &str) -> i64 {
        let client = redis::Client::open(testing::redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    }

    /// A copy kept in one replica's memory (cached while Redis was away) is
    /// dropped when another replica invalidates the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidation_reaches_other_replicas_memory() {
        let prefix = testing::fresh_redis_prefix();
        let url = testing::redis_url();
        let timeout = Duration::from_millis(500);
        let a = RedisHot::connect(&url, &prefix, timeout).unwrap();
        let b = RedisHot::connect(&url, &prefix, timeout).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = |hot: &RedisHot| hot.listening.load(Ordering::Relaxed);
        while subscribers(&a.channel()).await < 2 || !listening(&a) || !listening(&b) {
            assert!(Instant::now() < deadline, "replicas never subscribed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        a.fallback
            .put_key("hash-1", &key("k1"), Duration::from_secs(30));
        a.fallback
            .put_key("hash-2", &key("k2"), Duration::from_secs(30));
        b.invalidate_key_id("k1").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.fallback.get_key("hash-1").is_some() {
            assert!(Instant::now() < deadline, "invalidation never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(a.fallback.get_key("hash-2").is_some());
        testing::cleanup_redis(&prefix).await;
    }
}
