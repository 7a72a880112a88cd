//! What the state layer does when Redis or Postgres fails mid-run, and how it
//! comes back: each test puts a [`Proxy`] between the code and the server.

use super::new_key;
use agentmesh_state::testing;
use agentmesh_state::testing::proxy::Proxy;
use agentmesh_state::{
    hash_secret, CachedConversation, Conversation, Hot, PoolSettings, RateLimits, RedisHot, State,
    StateConfig, StateError, DEFAULT_REDIS_TIMEOUT,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Log lines written by every test of this binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Lines inside span `span` that contain `needle`.
    fn count(&self, span: &str, needle: &str) -> usize {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(span) && line.contains(needle))
            .count()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber for the binary: a thread-local one misses events
/// whose callsite another test's thread registered first.
fn captured_logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
    .clone()
}

fn redis_target() -> String {
    testing::redis_target()
}

/// A frozen Redis (connections accepted, nothing answered): every call
/// returns within its timeout from process memory, degraded mode is entered
/// and logged once, and left by itself (logged once) when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_degrades_once_and_recovers() {
    let logs = captured_logs();
    let span = tracing::info_span!("frozen_redis_test");
    frozen_redis(&logs).instrument(span).await;
}

async fn frozen_redis(logs: &Captured) {
    let proxy = Proxy::start(&redis_target());
    let prefix = testing::fresh_redis_prefix();
    let timeout = Duration::from_millis(200);
    let hot = RedisHot::connect(&format!("redis://{}", proxy.addr), &prefix, timeout).unwrap();
    let limits = RateLimits {
        rpm: Some(1000),
        tpm: None,
    };
    assert!(hot.check_rate("k", &limits, 0).await.unwrap().allowed);
    assert!(!hot.degraded());

    proxy.freeze();
    let outage = Instant::now();
    let mut calls = 0;
    while outage.elapsed() < Duration::from_millis(2500) {
        let started = Instant::now();
        assert!(hot.check_rate("k", &limits, 0).await.unwrap().allowed);
        hot.add_spend("k", 0.01).await.unwrap();
        assert!(
            started.elapsed() < timeout * 3,
            "a call took {:?} while Redis was frozen",
            started.elapsed()
        );
        assert!(hot.degraded());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hot.ping().await.is_err(), "readiness must see the outage");

    proxy.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hot.degraded() {
        assert!(Instant::now() < deadline, "never left degraded mode");
        hot.check_rate("k", &limits, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls > 20, "{calls}");
    assert_eq!(
        logs.count(
            "frozen_redis_test",
            "redis unavailable, using process memory"
        ),
        1
    );
    assert_eq!(
        logs.count(
            "frozen_redis_test",
            "redis recovered, leaving degraded mode"
        ),
        1
    );

    // Back on shared counters: another replica, straight to Redis, sees this one's request.
    let other = RedisHot::connect(&testing::redis_url(), &prefix, timeout).unwrap();
    let one = RateLimits {
        rpm: Some(1),
        tpm: None,
    };
    assert!(hot.check_rate("after", &one, 0).await.unwrap().allowed);
    assert!(!other.check_rate("after", &one, 0).await.unwrap().allowed);
    testing::cleanup_redis(&prefix).await;
}

/// While Redis is gone each replica limits on its own; once it is back the
/// replicas share one limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_means_per_replica_limits_until_it_returns() {
    let mut proxy = Proxy::start(&redis_target());
    let prefix = testing::fresh_redis_prefix();
    let url = format!("redis://{}", proxy.addr);
    let a = RedisHot::connect(&url, &prefix, Duration::from_millis(200)).unwrap();
    let b = RedisHot::connect(&url, &prefix, Duration::from_millis(200)).unwrap();
    let limits = RateLimits {
        rpm: Some(3),
        tpm: None,
    };
    proxy.stop().await;
    let mut allowed = 0;
    for _ in 0..5 {
        allowed += usize::from(a.check_rate("k", &limits, 0).await.unwrap().allowed);
        allowed += usize::from(b.check_rate("k", &limits, 0).await.unwrap().allowed);
    }
    assert_eq!(allowed, 6, "each replica allows its own 3");
    assert!(a.degraded() && b.degraded());

    proxy.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.degraded() || b.degraded() {
        assert!(Instant::now() < deadline, "never left degraded mode");
        let _ = a.ping().await;
        let _ = b.ping().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut allowed = 0;
    for _ in 0..5 {
        allowed += usize::from(a.check_rate("fresh", &limits, 0).await.unwrap().allowed);
        allowed += usize::from(b.check_rate("fresh", &limits, 0).await.unwrap().allowed);
    }
    assert_eq!(allowed, 3, "one shared limit again");
    testing::cleanup_redis(&prefix).await;
}

fn through(proxy: &Proxy, db_url: &str) -> String {
    proxy.url_through(db_url)
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, StateError>) -> bool {
    matches!(result, Err(StateError::Unavailable { .. }))
}

/// Postgres going away mid-run: calls that need it fail fast with
/// `Unavailable` (503 upstream, never 401), cached keys still answer, and
/// service resumes without a restart when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_and_recovers() {
    let db = testing::fresh_postgres().await;
    let mut proxy = Proxy::start(&testing::postgres_target());
    let cfg = StateConfig {
        database_url: through(&proxy, db.url()),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let pool = PoolSettings {
        acquire_timeout: Duration::from_secs(2),
        ..PoolSettings::default()
    };
    let state = State::connect_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool)
        .await
        .unwrap();
    let key = state
        .db
        .create_key(new_key("k1", "am-secret-one", &[]))
        .await
        .unwrap();
    let hash = hash_secret("am-secret-one");
    state
        .hot
        .cache_key(&hash, &key, Duration::from_secs(30))
        .await
        .unwrap();

    proxy.stop().await;
    for _ in 0..2 {
        let started = Instant::now();
        let found = state.db.find_key_by_hash(&hash).await;
        assert!(is_unavailable(&found), "{found:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(is_unavailable(&state.db.ping().await));
    assert_eq!(
        state.hot.cached_key(&hash).await.unwrap(),
        Some(key.clone())
    );

    proxy.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.db.ping().await.is_err() {
        assert!(Instant::now() < deadline, "postgres never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = state.db.find_key_by_hash(&hash).await.unwrap();
    assert_eq!(found.map(|k| k.id), Some(key.id));
    drop(state);
    db.cleanup().await;
}

/// A Postgres that accepts connections and reads queries but never answers
/// (a paused server, a half-open link): every call, those holding a
/// connection and those queued for one, fails with `Unavailable` within its
/// bound, and calls succeed again once it answers, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_postgres_fails_fast_and_recovers() {
    let db = testing::fresh_postgres().await;
    let proxy = Proxy::start(&testing::postgres_target());
    let cfg = StateConfig {
        database_url: proxy.url_through(db.url()),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let pool = PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_millis(800),
        ..PoolSettings::default()
    };
    let state = State::connect_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool)
        .await
        .unwrap();
    state
        .db
        .create_key(new_key("k1", "am-secret-frozen", &[]))
        .await
        .unwrap();

    proxy.freeze();
    let started = Instant::now();
    let calls = (0..10).map(|i| {
        let db = state.db.clone();
        async move {
            match i % 3 {
                0 => db.get_key("k1").await.map(|_| ()),
                1 => db.find_key_by_hash(&hash_secret("x")).await.map(|_| ()),
                _ => db.ping().await,
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let elapsed = started.elapsed();
    for result in &results {
        assert!(is_unavailable(result), "{result:?}");
    }
    assert!(
        elapsed < Duration::from_secs(3),
        "frozen calls took {elapsed:?}"
    );

    proxy.thaw();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match state.db.get_key("k1").await {
            Ok(Some(key)) => {
                assert_eq!(key.id, "k1");
                break;
            }
            other => assert!(Instant::now() < deadline, "never recovered: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(state);
    db.cleanup().await;
}

/// A statement the server accepts but does not answer (here: waiting on a
/// lock another session holds) is cut by the per-call timeout, even though
/// its connection was acquired without trouble; the next call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_statement_is_cut_by_call_timeout() {
    use sqlx::{Connection, Executor};
    let db = testing::fresh_postgres().await;
    let cfg = StateConfig {
        redis_url: None,
        ..db.state_config()
    };
    let pool = PoolSettings {
        call_timeout: Duration::from_millis(700),
        ..PoolSettings::default()
    };
    let state = State::connect_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool)
        .await
        .unwrap();
    state
        .db
        .create_key(new_key("k1", "am-secret-locked", &[]))
        .await
        .unwrap();

    let mut blocker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let blocked = state.db.get_key("k1").await;
    let elapsed = started.elapsed();
    assert!(is_unavailable(&blocked), "{blocked:?}");
    assert!(blocked
        .unwrap_err()
        .to_string()
        .contains("no answer within"));
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    blocker.execute("ROLLBACK").await.unwrap();
    let found = state.db.get_key("k1").await.unwrap();
    assert_eq!(found.map(|k| k.id).as_deref(), Some("k1"));
    blocker.close().await.unwrap();
    drop(state);
    db.cleanup().await;
}

/// A replica started while Postgres is down starts anyway: database calls
/// answer `Unavailable` at once, the shared key cache still answers, and the
/// database is connected and migrated in the background once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_postgres_down_connects_later() {
    let db = testing::fresh_postgres().await;
    let mut proxy = Proxy::closed(&testing::postgres_target());
    let cfg = StateConfig {
        database_url: proxy.url_through(db.url()),
        ..db.state_config()
    };
    let pool = PoolSettings {
        acquire_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let strict = State::connect_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool).await;
    assert!(is_unavailable(&strict.map(|_| ())));

    let started = Instant::now();
    let state = State::start_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let down = state.db.ping().await;
    assert!(is_unavailable(&down), "{down:?}");
    assert!(down
        .unwrap_err()
        .to_string()
        .starts_with("postgres unavailable"));
    let key = agentmesh_state::ApiKey {
        id: "cached".into(),
        name: "cached".into(),
        prefix: "am-cached".into(),
        scopes: vec![],
        rpm_limit: None,
        tpm_limit: None,
        budget_usd: None,
        spent_usd: 0.0,
        expires_at: None,
        revoked_at: None,
        created_at: chrono::Utc::now(),
        last_used_at: None,
    };
    let hash = hash_secret("am-cached-secret");
    state
        .hot
        .cache_key(&hash, &key, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(state.hot.cached_key(&hash).await.unwrap(), Some(key));

    proxy.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.db.ping().await.is_err() {
        assert!(Instant::now() < deadline, "postgres never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = state
        .db
        .create_key(new_key("k1", "am-secret-late", &[]))
        .await
        .unwrap();
    assert_eq!(created.id, "k1", "migrations ran in the background");
    drop(state);
    testing::cleanup_redis(&cfg.redis_prefix).await;
    db.cleanup().await;
}

/// Every connection busy: the next call gets `Unavailable` after the acquire
/// timeout instead of waiting for a connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_fails_fast() {
    let db = testing::fresh_postgres().await;
    let cfg = StateConfig {
        redis_url: None,
        ..db.state_config()
    };
    let pool = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let state = State::connect_tuned(&cfg, DEFAULT_REDIS_TIMEOUT, &pool)
        .await
        .unwrap();
    let busy = {
        let db = state.db.clone();
        tokio::spawn(async move {
            db.query_dataset("SELECT pg_sleep(3)", 1, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let waited = state.db.get_key("k1").await;
    assert!(is_unavailable(&waited), "{waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    busy.await.unwrap().unwrap();
    assert_eq!(state.db.get_key("k1").await.unwrap(), None);
    drop(state);
    db.cleanup().await;
}

/// A conversation invalidation that cannot reach Redis is retried once Redis
/// answers again, so the stale copy is not served until its TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_conversation_invalidation_is_retried() {
    let mut proxy = Proxy::start(&redis_target());
    let prefix = testing::fresh_redis_prefix();
    let url = format!("redis://{}", proxy.addr);
    let hot = RedisHot::connect(&url, &prefix, Duration::from_millis(200)).unwrap();
    let conversation = Conversation {
        id: "c1".into(),
        key_id: "k1".into(),
        created_at: chrono::Utc::now(),
        messages: vec![],
    };
    let ttl = Duration::from_secs(60);
    hot.cache_conversation(&conversation, 0, ttl).await.unwrap();
    assert!(matches!(
        hot.cached_conversation("c1").await.unwrap(),
        CachedConversation::Hit(_)
    ));

    proxy.stop().await;
    hot.invalidate_conversation("c1").await.unwrap();
    assert!(hot.degraded());
    proxy.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hot.degraded() {
        assert!(Instant::now() < deadline, "never left degraded mode");
        let _ = hot.ping().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        hot.cached_conversation("c1").await.unwrap(),
        CachedConversation::Miss { .. }
    ));
    testing::cleanup_redis(&prefix).await;
}
