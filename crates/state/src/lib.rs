//! agentmesh storage: what gateways and agents must agree on.
//!
//! Two traits, each with two backends chosen by configuration:
//! - [`Database`]: durable records (keys, conversations, documents, datasets,
//!   usage, idempotency). Postgres in a cluster, SQLite in the embedded mode.
//! - [`Hot`]: shared counters and caches (rate limits, budgets, key and
//!   conversation caches). Redis in a cluster, process memory in the embedded
//!   mode. [`State::connect`] puts the conversation cache in front of the
//!   database, so `db.load_conversation` reads through it.

mod cached;
mod deferred;
mod error;
mod fts;
mod hot;
pub mod metrics;
mod model;
mod pg;
mod sqlerr;
mod sqlite;
pub mod testing;
mod timed;
mod values;
mod vectors;

pub use cached::CONVERSATION_CACHE_TTL;
pub use error::StateError;
pub use hot::memory::MemoryHot;
pub use hot::redis::{RedisHot, DEFAULT_REDIS_TIMEOUT};
pub use hot::KEY_HOLD;
pub use model::*;
pub use timed::CALL_TIMEOUTS;
pub use vectors::{ChunkVector, ChunkVectors};

use async_trait::async_trait;
use chrono::NaiveDate;
use std::sync::Arc;
use std::time::Duration;

/// An idempotency claim still `in_progress` after this many seconds is
/// presumed abandoned (its process died) and may be claimed again.
pub(crate) const STALE_CLAIM_SECS: i64 = 600;

/// Rounding slack of budget comparisons (spend sums are floating point).
pub(crate) const BUDGET_EPSILON: f64 = 1e-9;

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Durable storage. Every method is a complete unit: it either stores all it
/// was given or nothing (one transaction), so a failure never half-writes.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// `postgres` or `sqlite`, for logs and `/v1/models`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip used by readiness checks.
    async fn ping(&self) -> Result<()>;

    // API keys. Secrets are never stored: only their SHA-256 hash.
    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey>;
    async fn find_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>>;
    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>>;
    async fn list_keys(&self) -> Result<Vec<ApiKey>>;
    /// Replaces the secret of key `id`; limits, scopes and spend stay. NotFound if absent.
    async fn rotate_key(&self, id: &str, secret_hash: &str, prefix: &str) -> Result<ApiKey>;
    /// Marks the key revoked (idempotent). NotFound if absent.
    async fn revoke_key(&self, id: &str) -> Result<ApiKey>;
    /// Records that the key was used now (best effort, may be coalesced).
    async fn touch_key(&self, id: &str) -> Result<()>;
    /// True when at least one admin-scoped key exists (bootstrap check).
    async fn has_admin_key(&self) -> Result<bool>;

    // Conversations: messages are ordered by position, unique per position.
    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>>;
    /// Appends messages after the last stored one in a single transaction,
    /// creating the conversation if needed. Concurrent appends never share a position.
    async fn append_messages(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()>;
    /// True when something was deleted.
    async fn delete_conversation(&self, id: &str) -> Result<bool>;

    // Documents and chunks (full-text indexed).
    /// Stores the document and its chunks, replacing any document with the same id.
    /// Returns true when a document was replaced.
    async fn upsert_document(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool>;
    async fn delete_document(&self, id: &str) -> Result<bool>;
    async fn list_documents(&self) -> Result<Vec<DocumentInfo>>;
    /// Full-text search over chunks, best first. An empty or stop-word-only
    /// query returns no results, not an error.
    async fn search_chunks(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>>;

    // Chunk vectors (embeddings), stored as bytes; similarity is the caller's to compute.
    /// [`Database::upsert_document`], storing `vectors.vectors[i]` with chunk i in the same
    /// transaction (a replaced document's old vectors go with its old chunks; deleting a
    /// document removes its vectors). Vectors that do not fit the chunks are refused
    /// ([`StateError::Invalid`]). The default refuses: the backend keeps no vectors.
    async fn upsert_document_with_vectors(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: ChunkVectors,
    ) -> Result<bool> {
        let _ = (doc, chunks, vectors);
        Err(StateError::Invalid(format!(
            "the {} backend stores no chunk vectors",
            self.backend()
        )))
    }
    /// The stored vectors of `model`, at most `limit`, in chunk order. The default has none.
    async fn chunk_vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        let _ = (model, limit);
        Ok(Vec::new())
    }
    /// The chunks with these ids (as in [`ChunkVector::chunk_id`]), each with its id and
    /// a score of 0, in no set order; ids no longer stored are left out.
    async fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        let _ = ids;
        Ok(Vec::new())
    }

    // Datasets: CSV tables kept apart from agentmesh's own tables.
    /// Creates (or replaces) table `name` with these columns and rows, atomically.
    async fn create_dataset(&self, table: &TableData) -> Result<DatasetInfo>;
    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>>;
    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>>;
    /// Runs one statement that the caller already checked is a read-only query,
    /// inside a read-only transaction, with a statement timeout and a row cap.
    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult>;

    // Usage ledger: one row per request id (a second insert is ignored).
    async fn record_usage(&self, usage: &UsageRecord) -> Result<()>;
    /// Records several requests at once: all or none (one transaction where the backend
    /// has them), each still at most once per request id.
    async fn record_usage_batch(&self, batch: &[UsageRecord]) -> Result<()> {
        for usage in batch {
            self.record_usage(usage).await?;
        }
        Ok(())
    }
    async fn usage_summary(&self, key_id: Option<&str>) -> Result<Vec<UsageSummary>>;
    /// Usage per key and UTC day for the days `from..until` (`until` excluded),
    /// optionally of one key. Backends answer from the ledger's indexes; this
    /// default filters the full summary.
    async fn usage_between(
        &self,
        key_id: Option<&str>,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<UsageSummary>> {
        let (from, until) = (from.to_string(), until.to_string());
        let rows = self.usage_summary(key_id).await?;
        Ok(rows
            .into_iter()
            .filter(|row| row.day >= from && row.day < until)
            .collect())
    }

    // Idempotency records.
    /// Claims `key` for `key_id`. Returns the stored response when one exists,
    /// `Claimed` when this caller now owns it, `InProgress` when another does.
    async fn claim_idempotency(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim>;
    async fn complete_idempotency(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()>;
    /// Drops a claim whose request failed, so that a retry can run.
    async fn release_idempotency(&self, key_id: &str, key: &str) -> Result<()>;
}

/// Shared, fast, loss-tolerant state. Every call is bounded by a short timeout
/// in the Redis backend.
#[async_trait]
pub trait Hot: Send + Sync + 'static {
    /// `redis` or `memory`.
    fn backend(&self) -> &'static str;

    async fn ping(&self) -> Result<()>;

    /// Atomically checks and consumes one request and `tokens` estimated tokens
    /// against per-minute limits of `key_id`. Nothing is consumed when denied.
    async fn check_rate(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
    ) -> Result<RateDecision>;

    /// Adds tokens actually used after the fact (positive or negative correction).
    async fn add_tokens(&self, key_id: &str, tokens: i64) -> Result<()>;

    /// Adds spend to the key's budget counter and returns the new total.
    async fn add_spend(&self, key_id: &str, usd: f64) -> Result<f64>;
    /// Current spend counter, or None when this backend has no value yet.
    async fn spend(&self, key_id: &str) -> Result<Option<f64>>;
    /// Seeds the spend counter from the database when it is missing.
    async fn seed_spend(&self, key_id: &str, usd: f64) -> Result<()>;

    /// Admits one request: reserves `spend` from the key's budget (when given), then
    /// checks and consumes one request and `tokens` against its per-minute limits. When
    /// either refuses, nothing is consumed. Redis does both in one atomic script (one
    /// round trip); this default runs the two steps and gives the reservation back when
    /// the limits refuse.
    async fn admit(
        &self,
        key_id: &str,
        limits: &RateLimits,
        tokens: u64,
        spend: Option<SpendReservation>,
    ) -> Result<Admitted> {
        let budget = match spend {
            Some(s) => {
                let decision = self.reserve_spend(key_id, s.usd, s.budget, s.seed).await?;
                if !decision.allowed {
                    return Ok(Admitted {
                        budget: Some(decision),
                        rate: hot::unlimited(),
                    });
                }
                Some(decision)
            }
            None => None,
        };
        let rate = self.check_rate(key_id, limits, tokens).await?;
        if let (false, Some(s)) = (rate.allowed, spend) {
            self.add_spend(key_id, -s.usd).await?;
        }
        Ok(Admitted { budget, rate })
    }

    /// Atomically adds `usd` to the key's spend unless the total would pass
    /// `budget` (one check-and-consume, so concurrent requests on any replica
    /// cannot overspend together). A missing counter starts at `seed` (the
    /// spend recorded in the database). Correct the estimate afterwards with
    /// [`Hot::add_spend`] (a negative amount gives back what was not used).
    /// This default is not atomic; both backends override it.
    async fn reserve_spend(
        &self,
        key_id: &str,
        usd: f64,
        budget: f64,
        seed: f64,
    ) -> Result<BudgetDecision> {
        self.seed_spend(key_id, seed).await?;
        let spent = self.spend(key_id).await?.unwrap_or(seed);
        if spent + usd > budget + BUDGET_EPSILON {
            return Ok(BudgetDecision {
                allowed: false,
                spent_usd: spent,
            });
        }
        let spent_usd = self.add_spend(key_id, usd).await?;
        Ok(BudgetDecision {
            allowed: true,
            spent_usd,
        })
    }

    /// Key-lookup cache by secret hash, with a short TTL.
    async fn cache_key(&self, secret_hash: &str, key: &ApiKey, ttl: Duration) -> Result<()>;
    async fn cached_key(&self, secret_hash: &str) -> Result<Option<ApiKey>>;
    /// Removes one cached entry, by the hash it was cached under.
    async fn invalidate_key(&self, secret_hash: &str) -> Result<()>;
    /// Removes every cached entry of key `key_id`, whatever secret it was
    /// cached under, from the shared cache and every replica's memory (revoke,
    /// rotate). For [`KEY_HOLD`] afterwards the key is not cached again, so a
    /// lookup that read the database before the change cannot put it back.
    async fn invalidate_key_id(&self, key_id: &str) -> Result<()>;

    /// Conversation cache in front of the database. The default caches nothing.
    async fn cached_conversation(&self, _id: &str) -> Result<CachedConversation> {
        Ok(CachedConversation::Miss { version: 0 })
    }
    /// Stores a copy read from the database, unless the conversation was
    /// invalidated since `version` was read (see [`CachedConversation::Miss`]).
    async fn cache_conversation(
        &self,
        _conversation: &Conversation,
        _version: u64,
        _ttl: Duration,
    ) -> Result<()> {
        Ok(())
    }
    /// Drops the cached copy and bumps the version (after an append or a delete).
    async fn invalidate_conversation(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    /// True while a shared backend is unreachable and calls are served from
    /// this process's memory instead (for metrics and logs).
    fn degraded(&self) -> bool {
        false
    }
}

/// Both stores, shared by every service of a process.
#[derive(Clone)]
pub struct State {
    pub db: Arc<dyn Database>,
    pub hot: Arc<dyn Hot>,
}

impl State {
    /// Opens the database named by `cfg.database_url` (running migrations)
    /// and Redis when `cfg.redis_url` is set, else process memory.
    pub async fn connect(cfg: &StateConfig) -> Result<State> {
        Self::connect_with(cfg, DEFAULT_REDIS_TIMEOUT).await
    }

    /// [`State::connect`] with a chosen bound on each Redis call.
    pub async fn connect_with(cfg: &StateConfig, redis_timeout: Duration) -> Result<State> {
        Self::connect_tuned(cfg, redis_timeout, &PoolSettings::from_env()?).await
    }

    /// [`State::connect`] with a chosen Redis bound and Postgres pool.
    pub async fn connect_tuned(
        cfg: &StateConfig,
        redis_timeout: Duration,
        pool: &PoolSettings,
    ) -> Result<State> {
        let db = open_database(&cfg.database_url, pool).await?;
        Ok(Self::assemble(db, open_hot(cfg, redis_timeout)?))
    }

    /// [`State::connect`], except that a database that cannot be reached
    /// does not fail the start: the state serves degraded (every database
    /// call answers [`StateError::Unavailable`], the hot store and its key
    /// cache work) while connecting and migrating are retried in the
    /// background, and becomes whole once the database answers. Any other
    /// failure (bad URL, failed migration) is still returned.
    pub async fn start(cfg: &StateConfig) -> Result<State> {
        Self::start_tuned(cfg, DEFAULT_REDIS_TIMEOUT, &PoolSettings::from_env()?).await
    }

    /// [`State::start`] with a chosen Redis bound and Postgres pool.
    pub async fn start_tuned(
        cfg: &StateConfig,
        redis_timeout: Duration,
        pool: &PoolSettings,
    ) -> Result<State> {
        let db = match open_database(&cfg.database_url, pool).await {
            Ok(db) => db,
            Err(StateError::Unavailable { backend, message }) => {
                tracing::warn!(
                    database = backend,
                    error = %message,
                    "database unreachable at start, serving degraded and retrying"
                );
                let deferred =
                    deferred::DeferredDatabase::spawn(&cfg.database_url, backend, pool, message);
                Arc::new(deferred)
            }
            Err(other) => return Err(other),
        };
        Ok(Self::assemble(db, open_hot(cfg, redis_timeout)?))
    }

    /// Opens the database of `cfg` and uses `hot` for counters and caches
    /// (`cfg.redis_url` is ignored): services of one process share one
    /// [`MemoryHot`] this way, so its limits and caches stay whole.
    pub async fn connect_with_hot(cfg: &StateConfig, hot: Arc<dyn Hot>) -> Result<State> {
        let db = open_database(&cfg.database_url, &PoolSettings::from_env()?).await?;
        Ok(Self::assemble(db, hot))
    }

    fn assemble(db: Arc<dyn Database>, hot: Arc<dyn Hot>) -> State {
        let db: Arc<dyn Database> = Arc::new(cached::CachedDatabase::new(db, hot.clone()));
        tracing::info!(
            database = db.backend(),
            hot = hot.backend(),
            "state connected"
        );
        State { db, hot }
    }
}

/// Redis when `cfg.redis_url` is set, else process memory.
fn open_hot(cfg: &StateConfig, redis_timeout: Duration) -> Result<Arc<dyn Hot>> {
    Ok(match &cfg.redis_url {
        Some(redis_url) => Arc::new(RedisHot::connect(
            redis_url,
            &cfg.redis_prefix,
            redis_timeout,
        )?),
        None => Arc::new(MemoryHot::new()),
    })
}

/// The backend named by the URL's scheme, migrated. Postgres calls are each
/// bounded by the pool's call timeouts, connecting and migrating together by
/// the acquire timeout plus the long one.
pub(crate) async fn open_database(url: &str, pool: &PoolSettings) -> Result<Arc<dyn Database>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let limit = pool.acquire_timeout.saturating_add(pool.long_call_timeout);
        let connect = pg::PgDatabase::connect(url, pool);
        let pg = timed::bounded("postgres", limit, "connect and migrate", connect).await?;
        let timeouts = timed::CallTimeouts {
            normal: pool.call_timeout,
            long: pool.long_call_timeout,
        };
        Ok(Arc::new(timed::TimedDatabase::new(Arc::new(pg), timeouts)))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteDatabase::connect(url).await?))
    } else {
        let scheme = url.split(':').next().unwrap_or_default();
        Err(StateError::Invalid(format!(
            "unsupported database url scheme {scheme:?}: \
             use postgres://, postgresql:// or sqlite://"
        )))
    }
}

/// Where state lives. Built from `AGENTMESH_DATABASE_URL` and `AGENTMESH_REDIS_URL`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// `postgres://…` or `sqlite://…`.
    pub database_url: String,
    /// None: in-process memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so tests and tenants do not collide.
    pub redis_prefix: String,
}

impl StateConfig {
    /// Embedded defaults: SQLite in `data_dir`, no Redis.
    pub fn embedded(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("agentmesh.db");
        Self {
            database_url: format!("sqlite://{}?mode=rwc", path.display()),
            redis_url: None,
            redis_prefix: "agentmesh:".into(),
        }
    }
}

/// The Postgres connection pool of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// Connections per process; replicas x this must stay under the server's
    /// `max_connections`.
    pub max_connections: u32,
    /// How long a request waits for a connection before it gets
    /// [`StateError::Unavailable`]: an exhausted pool or a database that does
    /// not answer must fail fast (503), not hang.
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Connections are replaced after this long, so that a failover or a
    /// load balancer's change reaches every connection.
    pub max_lifetime: Duration,
    /// Bound on each ordinary call (key lookup, conversation, ledger row),
    /// connection wait included: a database that accepts connections but
    /// does not answer gives [`StateError::Unavailable`] after this long.
    pub call_timeout: Duration,
    /// Bound on ingestion (documents, datasets), whole-ledger reports and
    /// migrations at start.
    pub long_call_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            call_timeout: Duration::from_secs(5),
            long_call_timeout: Duration::from_secs(120),
        }
    }
}

impl PoolSettings {
    /// Defaults, overridden by `AGENTMESH_DATABASE_MAX_CONNECTIONS`,
    /// `AGENTMESH_DATABASE_ACQUIRE_TIMEOUT_MS`, `AGENTMESH_DATABASE_CALL_TIMEOUT_MS`
    /// and `AGENTMESH_DATABASE_LONG_CALL_TIMEOUT_MS` when set.
    pub fn from_env() -> Result<Self> {
        let mut settings = Self::default();
        if let Some(n) = env_number("AGENTMESH_DATABASE_MAX_CONNECTIONS")? {
            settings.max_connections =
                u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    StateError::Invalid(
                        "AGENTMESH_DATABASE_MAX_CONNECTIONS must be between 1 and 4294967295"
                            .into(),
                    )
                })?;
        }
        if let Some(ms) = env_number("AGENTMESH_DATABASE_ACQUIRE_TIMEOUT_MS")? {
            settings.acquire_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = env_number("AGENTMESH_DATABASE_CALL_TIMEOUT_MS")? {
            settings.call_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = env_number("AGENTMESH_DATABASE_LONG_CALL_TIMEOUT_MS")? {
            settings.long_call_timeout = Duration::from_millis(ms.max(1));
        }
        Ok(settings)
    }
}

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(raw) => raw.trim().parse().map(Some).map_err(|_| {
            StateError::Invalid(format!("{name} must be a whole number, got {raw:?}"))
        }),
        Err(_) => Ok(None),
    }
}

/// Midnight UTC of `day`, the start of a ledger day.
pub(crate) fn day_start(day: NaiveDate) -> chrono::DateTime<chrono::Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// SHA-256 of an API key secret, hex encoded: the only form that is stored.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
