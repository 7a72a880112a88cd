//! The usage ledger at scale: per-key and per-day summaries are answered
//! from its indexes, not by reading the whole table.

use agentmesh_state::{testing, State};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Connection, Executor, PgConnection, Row};
use std::time::{Duration, Instant};

const ROWS: i64 = 200_000;

/// Row `i` belongs to key `k{i % 50}` on day `2025-01-01 + (i % 30)`.
const FILL: &str = "INSERT INTO usage (request_id, key_id, agent, model, prompt_tokens, \
    completion_tokens, cost_usd, latency_ms, status, created_at) \
    SELECT 'req-' || i, 'k' || (i % 50), 'chat', 'm', 10, 5, 0.001, 20, 200, \
    TIMESTAMPTZ '2025-01-01 01:00:00+00' + (i % 30) * INTERVAL '1 day' \
    FROM generate_series(0, $1 - 1) AS i";

/// A parameter of a planned statement.
enum Bind {
    Text(&'static str),
    At(DateTime<Utc>),
}

async fn plan(conn: &mut PgConnection, sql: &str, binds: &[Bind]) -> String {
    let explain = format!("EXPLAIN {sql}");
    let mut query = sqlx::query(&explain);
    for b in binds {
        query = match b {
            Bind::Text(text) => query.bind(*text),
            Bind::At(at) => query.bind(*at),
        };
    }
    let rows = query.fetch_all(&mut *conn).await.unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_summaries_use_indexes_at_scale() {
    let db = testing::fresh_postgres().await;
    let cfg = db.state_config();
    let state = State::connect(&cfg).await.unwrap();
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query(FILL)
        .bind(ROWS)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.execute("ANALYZE usage").await.unwrap();

    // Even the generic plan of the prepared statement (parameters unknown) uses the index.
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let by_key = testing::postgres_usage_summary_sql(true, true);
    let at = |day: u32| {
        let date = NaiveDate::from_ymd_opt(2025, 1, day).unwrap();
        Bind::At(date.and_hms_opt(0, 0, 0).unwrap().and_utc())
    };
    let key_plan = plan(&mut conn, &by_key, &[Bind::Text("k0"), at(1), at(2)]).await;
    assert!(key_plan.contains("usage_key_created_idx"), "{key_plan}");
    let per_day = testing::postgres_usage_summary_sql(false, true);
    let day_plan = plan(&mut conn, &per_day, &[at(1), at(2)]).await;
    assert!(day_plan.contains("usage_created_idx"), "{day_plan}");
    let all_of_key = testing::postgres_usage_summary_sql(true, false);
    let key_only_plan = plan(&mut conn, &all_of_key, &[Bind::Text("k0")]).await;
    assert!(
        key_only_plan.contains("usage_key_created_idx"),
        "{key_only_plan}"
    );

    // Key k0 has rows on days 0, 10 and 20: 1334 on day 0 (i % 150 == 0).
    let day = |n: u32| NaiveDate::from_ymd_opt(2025, 1, n).unwrap();
    let started = Instant::now();
    let rows = state
        .db
        .usage_between(Some("k0"), day(1), day(2))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].day.as_str(), rows[0].requests),
        ("2025-01-01", 1334)
    );
    assert_eq!(rows[0].prompt_tokens, 13_340);
    assert!(
        took < Duration::from_millis(500),
        "per-key day took {took:?}"
    );

    let started = Instant::now();
    let rows = state
        .db
        .usage_between(None, day(11), day(12))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        rows.len(),
        5,
        "day 10 holds the keys k0, k10, k20, k30, k40"
    );
    let total: u64 = rows.iter().map(|r| r.requests).sum();
    assert_eq!(total, 6667, "day 10 has 2 x 1334 + 3 x 1333 rows");
    assert!(
        took < Duration::from_secs(2),
        "one day of every key took {took:?}"
    );

    let _ = conn.close().await;
    drop(state);
    db.cleanup().await;
    testing::cleanup_redis(&cfg.redis_prefix).await;
}
