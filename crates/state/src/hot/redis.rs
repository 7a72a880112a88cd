//! Redis [`Hot`]: counters and cache shared by every replica.
//!
//! Each call is bounded by a short timeout. When Redis fails or is slow the
//! call is served by an embedded [`MemoryHot`] instead (per-replica limits,
//! per-replica spend), one warning is logged on entering that degraded mode
//! and one info line on leaving it. While degraded, Redis is probed at most
//! once per [`PROBE_INTERVAL`]; other calls go straight to memory, so an
//! outage costs no latency. Spend added while degraded stays in memory and is
//! not replayed to Redis (the database's ledger remains the record).

use super::memory::MemoryHot;
use super::{decision, unlimited, WindowState, WINDOW};
use crate::{ApiKey, Hot, RateDecision, RateLimits, Result, StateError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default bound on one Redis call.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a degraded backend tries Redis again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

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

pub struct RedisHot {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    fallback: MemoryHot,
    degraded: AtomicBool,
    /// While degraded: no Redis call before this instant.
    next_probe: Mutex<Instant>,
    rate_script: redis::Script,
    tokens_script: redis::Script,
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
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StateError::Invalid(format!("redis client: {e}")))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            fallback: MemoryHot::new(),
            degraded: AtomicBool::new(false),
            next_probe: Mutex::new(Instant::now()),
            rate_script: redis::Script::new(RATE_SCRIPT),
            tokens_script: redis::Script::new(TOKENS_SCRIPT),
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
        let redis_key = self.key("key", secret_hash);
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let done = self
            .call("cache_key", |mut conn| async move {
                redis::cmd("SET")
                    .arg(redis_key)
                    .arg(json)
                    .arg("PX")
                    .arg(millis)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if done.is_none() {
            self.fallback.put_key(secret_hash, key, ttl);
        }
        Ok(())
    }

    async fn cached_key(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
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
            Some(json) => Ok(json.and_then(|j| serde_json::from_str(&j).ok())),
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

    fn degraded(&self) -> bool {
        RedisHot::degraded(self)
    }
}
