//! One conformance suite for every storage backend: each behaviour is a
//! function over a [`State`], run against SQLite + memory and against
//! Postgres + Redis (a fresh database and key prefix per test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_state::testing::{self, TestDb};
use agentmesh_state::{
    hash_secret, Admitted, CachedConversation, ColumnInfo, ColumnType, Hot, IdempotencyClaim,
    MemoryHot, NewApiKey, NewChunk, NewDocument, NewMessage, RateLimits, RedisHot,
    SpendReservation, State, StateConfig, StateError, StoredResponse, TableData, UsageRecord,
};
use chrono::{NaiveDate, Utc};
use serde_json::json;
use std::time::{Duration, Instant};

#[path = "conformance/failures.rs"]
mod failures;
#[path = "conformance/ledger_scale.rs"]
mod ledger_scale;
#[path = "conformance/vectors.rs"]
mod vectors;
use vectors::chunk_vectors_follow_their_chunks;

/// A connected state plus what must be cleaned up after the test.
struct Env {
    state: State,
    cfg: StateConfig,
    _dir: Option<tempfile::TempDir>,
    db: Option<TestDb>,
    prefix: Option<String>,
}

impl Env {
    async fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StateConfig::embedded(&dir.path().join("nested"));
        let state = State::connect(&cfg).await.unwrap();
        Env {
            state,
            cfg,
            _dir: Some(dir),
            db: None,
            prefix: None,
        }
    }

    async fn postgres() -> Env {
        let db = testing::fresh_postgres().await;
        let cfg = db.state_config();
        let state = State::connect(&cfg).await.unwrap();
        Env {
            state,
            cfg: cfg.clone(),
            _dir: None,
            db: Some(db),
            prefix: Some(cfg.redis_prefix),
        }
    }

    /// A second replica over the same stores, with its own connections: with
    /// Redis a second client, in the embedded mode the process's one memory.
    async fn replica(&self) -> State {
        match self.cfg.redis_url {
            Some(_) => State::connect(&self.cfg).await.unwrap(),
            None => State::connect_with_hot(&self.cfg, self.state.hot.clone())
                .await
                .unwrap(),
        }
    }

    async fn finish(self) {
        drop(self.state);
        if let Some(db) = self.db {
            db.cleanup().await;
        }
        if let Some(prefix) = self.prefix {
            testing::cleanup_redis(&prefix).await;
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::sqlite().await;
                    super::$name(&env.state).await;
                    env.finish().await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::postgres().await;
                    super::$name(&env.state).await;
                    env.finish().await;
                }
            )*
        }
    };
}

/// Behaviours of two replicas sharing the stores, on both backends.
macro_rules! conformance_replicas {
    ($($name:ident),* $(,)?) => {
        mod sqlite_memory_replicas {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::sqlite().await;
                    let other = env.replica().await;
                    super::$name(&env.state, &other).await;
                    drop(other);
                    env.finish().await;
                }
            )*
        }
        mod postgres_redis_replicas {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::postgres().await;
                    let other = env.replica().await;
                    super::$name(&env.state, &other).await;
                    drop(other);
                    env.finish().await;
                }
            )*
        }
    };
}

conformance_replicas!(
    replicas_share_rate_limits,
    replicas_share_token_limits,
    replicas_share_spend,
    replicas_admit_exactly,
    replicas_claim_idempotency_once,
    replicas_see_key_invalidation,
    replicas_see_conversation_appends,
    rotation_keeps_window_and_spend,
);

conformance!(
    keys_lifecycle,
    conversation_ordering,
    concurrent_appends,
    documents_and_search,
    chunk_vectors_follow_their_chunks,
    datasets_create_replace_query,
    datasets_guards,
    northwind_revenue,
    datasets_decimal_and_date,
    northwind_money_and_dates,
    usage_ledger,
    usage_ledger_batch,
    admission_consumes_all_or_nothing,
    idempotency,
    rate_limit_requests,
    rate_limit_tokens,
    rate_limit_concurrent,
    spend_counter,
    key_cache,
    key_cache_invalidate_by_id,
    conversation_cache,
    usage_by_day_range,
);

fn new_key(id: &str, secret: &str, scopes: &[&str]) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        name: format!("{id} name"),
        prefix: secret[..6].into(),
        secret_hash: hash_secret(secret),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        rpm_limit: Some(10),
        tpm_limit: None,
        budget_usd: Some(2.5),
        expires_at: None,
    }
}

async fn keys_lifecycle(state: &State) {
    let db = &state.db;
    assert!(!db.has_admin_key().await.unwrap());
    let admin = db
        .create_key(new_key("k1", "am-secret-one", &["admin"]))
        .await
        .unwrap();
    db.create_key(new_key("k2", "am-secret-two", &["chat"]))
        .await
        .unwrap();
    assert!(db.has_admin_key().await.unwrap());
    assert_eq!(admin.scopes, vec!["admin"]);
    assert_eq!(admin.rpm_limit, Some(10));
    assert_eq!(admin.spent_usd, 0.0);

    let found = db
        .find_key_by_hash(&hash_secret("am-secret-one"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, admin);
    assert_eq!(
        db.get_key("k2").await.unwrap().unwrap().scopes,
        vec!["chat"]
    );
    assert_eq!(db.list_keys().await.unwrap().len(), 2);
    assert!(db.get_key("nope").await.unwrap().is_none());

    let dup = db.create_key(new_key("k3", "am-secret-one", &[])).await;
    assert!(matches!(dup, Err(StateError::Conflict(_))), "{dup:?}");

    let rotated = db
        .rotate_key("k1", &hash_secret("am-new-secret"), "am-new")
        .await
        .unwrap();
    assert_eq!(
        (rotated.id.as_str(), rotated.prefix.as_str()),
        ("k1", "am-new")
    );
    assert_eq!(
        (rotated.rpm_limit, rotated.budget_usd),
        (Some(10), Some(2.5))
    );
    assert!(db
        .find_key_by_hash(&hash_secret("am-secret-one"))
        .await
        .unwrap()
        .is_none());
    assert!(db
        .find_key_by_hash(&hash_secret("am-new-secret"))
        .await
        .unwrap()
        .is_some());
    let missing = db.rotate_key("nope", "h", "p").await;
    assert!(
        matches!(missing, Err(StateError::NotFound(_))),
        "{missing:?}"
    );

    let revoked = db.revoke_key("k1").await.unwrap();
    let when = revoked.revoked_at.unwrap();
    assert_eq!(db.revoke_key("k1").await.unwrap().revoked_at, Some(when));
    assert!(!db.has_admin_key().await.unwrap());
    assert!(matches!(
        db.revoke_key("nope").await,
        Err(StateError::NotFound(_))
    ));

    assert!(db
        .get_key("k2")
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_none());
    db.touch_key("k2").await.unwrap();
    assert!(db
        .get_key("k2")
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
}

fn msg(role: &str, content: &str) -> NewMessage {
    NewMessage {
        role: role.into(),
        content: content.into(),
    }
}

async fn conversation_ordering(state: &State) {
    let db = &state.db;
    assert!(db.load_conversation("c1").await.unwrap().is_none());
    db.append_messages("c1", "k1", &[msg("user", "hi"), msg("assistant", "hello")])
        .await
        .unwrap();
    db.append_messages("c1", "k1", &[msg("user", "again")])
        .await
        .unwrap();
    db.append_messages("c1", "k1", &[]).await.unwrap();

    let conv = db.load_conversation("c1").await.unwrap().unwrap();
    assert_eq!(conv.key_id, "k1");
    let got: Vec<(i64, &str)> = conv
        .messages
        .iter()
        .map(|m| (m.position, m.content.as_str()))
        .collect();
    assert_eq!(got, vec![(0, "hi"), (1, "hello"), (2, "again")]);

    assert!(db.delete_conversation("c1").await.unwrap());
    assert!(!db.delete_conversation("c1").await.unwrap());
    assert!(db.load_conversation("c1").await.unwrap().is_none());
}

async fn concurrent_appends(state: &State) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let db = state.db.clone();
            tokio::spawn(async move {
                let batch = [
                    msg("user", &format!("q{i}")),
                    msg("assistant", &format!("a{i}")),
                ];
                db.append_messages("busy", "k1", &batch).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let conv = state.db.load_conversation("busy").await.unwrap().unwrap();
    let positions: Vec<i64> = conv.messages.iter().map(|m| m.position).collect();
    assert_eq!(positions, (0..40).collect::<Vec<i64>>());
    // Each append's two messages stay adjacent.
    for pair in conv.messages.chunks(2) {
        assert_eq!(pair[0].content[1..], pair[1].content[1..], "{pair:?}");
    }
}

fn doc(id: &str, title: &str) -> NewDocument {
    NewDocument {
        id: id.into(),
        title: title.into(),
        source: format!("{id}.md"),
        metadata: json!({"lang": "en"}),
    }
}

fn chunk(heading: &str, text: &str) -> NewChunk {
    NewChunk {
        heading: heading.into(),
        text: text.into(),
    }
}

async fn documents_and_search(state: &State) {
    let db = &state.db;
    let pods = vec![
        chunk(
            "Pods",
            "A Pod is the smallest deployable unit of computing in Kubernetes.",
        ),
        chunk(
            "Pods > Lifecycle",
            "Pods follow a defined lifecycle, starting in the Pending phase \
               and moving through Running when containers start.",
        ),
    ];
    let services = vec![chunk(
        "Services",
        "A Service exposes an application running on a set \
               of Pods as a network service with a stable virtual IP address.",
    )];
    assert!(!db.upsert_document(doc("pods", "Pods"), pods).await.unwrap());
    assert!(!db
        .upsert_document(doc("svc", "Services"), services)
        .await
        .unwrap());

    let hits = db
        .search_chunks("What phases does a pod lifecycle go through?", 5)
        .await
        .unwrap();
    assert!(!hits.is_empty());
    assert_eq!(hits[0].heading, "Pods > Lifecycle", "{hits:?}");
    assert_eq!(
        (hits[0].title.as_str(), hits[0].source.as_str()),
        ("Pods", "pods.md")
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let ip = db
        .search_chunks("how do I get a stable virtual IP address?", 5)
        .await
        .unwrap();
    assert_eq!(ip[0].document_id, "svc", "{ip:?}");

    for weird in [
        r#""foo" AND (bar* OR -baz):"#,
        "NEAR(a b) ^ '\" ; --",
        "*",
        "pod\"s OR",
    ] {
        db.search_chunks(weird, 5).await.unwrap();
    }
    assert!(db.search_chunks("what is the", 5).await.unwrap().is_empty());
    assert!(db.search_chunks("   ", 5).await.unwrap().is_empty());

    let replacement = vec![chunk("Pods", "Replaced text about sidecar containers.")];
    assert!(db
        .upsert_document(doc("pods", "Pods v2"), replacement)
        .await
        .unwrap());
    assert!(db
        .search_chunks("lifecycle pending", 5)
        .await
        .unwrap()
        .is_empty());
    let side = db.search_chunks("sidecar", 5).await.unwrap();
    assert_eq!((side.len(), side[0].title.as_str()), (1, "Pods v2"));

    let docs = db.list_documents().await.unwrap();
    let counts: Vec<(&str, u32)> = docs.iter().map(|d| (d.id.as_str(), d.chunks)).collect();
    assert_eq!(counts.len(), 2);
    assert!(
        counts.contains(&("pods", 1)) && counts.contains(&("svc", 1)),
        "{counts:?}"
    );
    assert_eq!(docs[0].metadata, json!({"lang": "en"}));

    assert!(db.delete_document("pods").await.unwrap());
    assert!(!db.delete_document("pods").await.unwrap());
    assert!(db.search_chunks("sidecar", 5).await.unwrap().is_empty());
}

fn table(name: &str, columns: &[(&str, ColumnType)], rows: &[&[Option<&str>]]) -> TableData {
    TableData {
        name: name.into(),
        columns: columns
            .iter()
            .map(|(n, k)| ColumnInfo {
                name: n.to_string(),
                kind: *k,
            })
            .collect(),
        rows: rows
            .iter()
            .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
            .collect(),
    }
}

const SLOW_SQL: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                        WHERE x < 1000000000) SELECT count(*) FROM c";

async fn datasets_create_replace_query(state: &State) {
    let db = &state.db;
    let cols = [
        ("id", ColumnType::Integer),
        ("price", ColumnType::Real),
        ("name", ColumnType::Text),
    ];
    let rows: &[&[Option<&str>]] = &[
        &[Some("1"), Some("2.5"), Some("apple")],
        &[Some("2"), None, Some("pear")],
        &[Some("3"), Some("4"), None],
    ];
    let info = db
        .create_dataset(&table("fruit", &cols, rows))
        .await
        .unwrap();
    assert_eq!((info.name.as_str(), info.row_count), ("fruit", 3));
    assert_eq!(
        db.get_dataset("fruit").await.unwrap().unwrap().columns,
        info.columns
    );
    assert!(db.get_dataset("nope").await.unwrap().is_none());

    let all = db
        .query_dataset(
            "SELECT id, price, name FROM fruit ORDER BY id",
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(all.columns, vec!["id", "price", "name"]);
    assert_eq!(
        all.rows,
        vec![
            vec![json!(1), json!(2.5), json!("apple")],
            vec![json!(2), json!(null), json!("pear")],
            vec![json!(3), json!(4.0), json!(null)],
        ]
    );
    assert!(!all.truncated);

    let capped = db
        .query_dataset("SELECT * FROM fruit", 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((capped.rows.len(), capped.truncated), (2, true));
    let exact = db
        .query_dataset("SELECT * FROM fruit", 3, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((exact.rows.len(), exact.truncated), (3, false));
    let empty = db
        .query_dataset(
            "SELECT name FROM fruit WHERE id > 99",
            5,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        (empty.columns, empty.rows.len()),
        (vec!["name".to_string()], 0)
    );

    let new_cols = [("kind", ColumnType::Text)];
    let replaced = db
        .create_dataset(&table("fruit", &new_cols, &[&[Some("berry")]]))
        .await
        .unwrap();
    assert_eq!(replaced.row_count, 1);
    let after = db
        .query_dataset("SELECT * FROM fruit", 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (after.columns, after.rows),
        (vec!["kind".to_string()], vec![vec![json!("berry")]])
    );
    assert_eq!(db.list_datasets().await.unwrap().len(), 1);

    let bad = db
        .create_dataset(&table("n", &[("x", ColumnType::Integer)], &[&[Some("x1")]]))
        .await;
    assert!(matches!(bad, Err(StateError::Invalid(_))), "{bad:?}");
    let bad_name = db
        .create_dataset(&table("Robert'); --", &new_cols, &[]))
        .await;
    assert!(
        matches!(bad_name, Err(StateError::Invalid(_))),
        "{bad_name:?}"
    );
}

async fn datasets_guards(state: &State) {
    let db = &state.db;
    let cols = [("id", ColumnType::Integer)];
    db.create_dataset(&table("t", &cols, &[&[Some("1")]]))
        .await
        .unwrap();
    db.create_key(new_key("k1", "am-secret-one", &["admin"]))
        .await
        .unwrap();
    let timeout = Duration::from_secs(5);

    let started = Instant::now();
    let slow = db
        .query_dataset(SLOW_SQL, 10, Duration::from_millis(300))
        .await;
    assert!(matches!(slow, Err(StateError::Timeout(_))), "{slow:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The connection is usable again after an interrupted query.
    db.query_dataset("SELECT id FROM t", 10, timeout)
        .await
        .unwrap();

    for sql in [
        "DELETE FROM t",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "SELECT nope FROM t",
        "SELECT * FROM api_keys",
        "SELECT * FROM public.api_keys",
        "SELECT * FROM main.api_keys",
        "SELEC 1",
    ] {
        let err = db.query_dataset(sql, 10, timeout).await;
        match err {
            Err(StateError::Invalid(message)) => assert!(!message.is_empty()),
            other => panic!("{sql}: expected Invalid, got {other:?}"),
        }
    }
    let still = db
        .query_dataset("SELECT count(*) AS n FROM t", 10, timeout)
        .await
        .unwrap();
    assert_eq!(still.rows, vec![vec![json!(1)]]);
}

/// Loads a Northwind CSV with the simple type inference the data agent uses.
fn northwind(name: &str) -> TableData {
    let path = format!(
        "{}/../../../shared/data/northwind/{name}.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<Vec<Option<String>>> = reader
        .records()
        .map(|r| {
            r.unwrap()
                .iter()
                .map(|v| (!v.is_empty()).then(|| v.to_owned()))
                .collect()
        })
        .collect();
    let is_decimal = |v: &str| {
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        !int.is_empty() && format!("{int}{frac}").bytes().all(|b| b.is_ascii_digit())
    };
    let is_date = |v: &str| NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok();
    let kind = |i: usize| {
        let values = rows.iter().filter_map(|r| r[i].as_deref());
        if values.clone().all(|v| v.parse::<i64>().is_ok()) {
            ColumnType::Integer
        } else if values.clone().all(is_decimal) {
            ColumnType::Decimal
        } else if values.clone().all(is_date) {
            ColumnType::Date
        } else {
            ColumnType::Text
        }
    };
    let columns = (0..headers.len())
        .map(|i| ColumnInfo {
            name: headers[i].clone(),
            kind: kind(i),
        })
        .collect();
    TableData {
        name: name.into(),
        columns,
        rows,
    }
}

async fn northwind_revenue(state: &State) {
    let db = &state.db;
    let started = Instant::now();
    let info = db
        .create_dataset(&northwind("order_details"))
        .await
        .unwrap();
    assert_eq!(info.row_count, 2155);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "load took {:?}",
        started.elapsed()
    );

    let sql = match db.backend() {
        "postgres" => {
            "SELECT round(sum(unit_price*quantity*(1-discount))::numeric, 2) \
                       FROM order_details"
        }
        _ => "SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details",
    };
    let out = db
        .query_dataset(sql, 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.rows, vec![vec![json!(1265793.04)]]);

    let many = db
        .query_dataset("SELECT * FROM order_details", 100, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((many.rows.len(), many.truncated), (100, true));
    assert_eq!(many.columns.len(), 5);

    if db.backend() == "postgres" {
        let sql = "SELECT true AS b, NULL::int AS n, 2::int4 AS i, 1.5::float4 AS f, \
                   DATE '2024-01-02' AS d, 'x'::varchar AS s, 10.50::numeric(6,2) AS m";
        let out = db
            .query_dataset(sql, 1, Duration::from_secs(5))
            .await
            .unwrap();
        let expected = vec![
            json!(true),
            json!(null),
            json!(2),
            json!(1.5),
            json!("2024-01-02"),
            json!("x"),
            json!(10.5),
        ];
        assert_eq!(out.rows, vec![expected]);
    }
}

/// Decimal and date columns: stored, typed in the registry, compared and ordered as
/// numbers and days, NULLs kept, bad values refused with row and column.
async fn datasets_decimal_and_date(state: &State) {
    let db = &state.db;
    let cols = [
        ("id", ColumnType::Integer),
        ("amount", ColumnType::Decimal),
        ("paid_on", ColumnType::Date),
    ];
    let rows: &[&[Option<&str>]] = &[
        &[Some("1"), Some("0.10"), Some("1997-01-01")],
        &[Some("2"), Some("0.20"), Some("1996-12-31")],
        &[Some("3"), Some("10"), None],
        &[Some("4"), Some("9.5"), Some("1998-02-01")],
        &[Some("5"), None, Some("1997-06-30")],
    ];
    db.create_dataset(&table("pay", &cols, rows)).await.unwrap();
    let info = db.get_dataset("pay").await.unwrap().unwrap();
    let kinds: Vec<_> = info.columns.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [ColumnType::Integer, ColumnType::Decimal, ColumnType::Date]
    );
    let q = |sql: &'static str| async move {
        db.query_dataset(sql, 100, Duration::from_secs(5))
            .await
            .unwrap()
            .rows
    };

    let sum = q("SELECT sum(amount) FROM pay").await;
    assert_eq!(sum, vec![vec![json!(19.8)]], "0.10 + 0.20 + 10 + 9.5");
    let rows = q("SELECT id, amount FROM pay WHERE amount > 1 ORDER BY amount").await;
    assert_eq!(
        rows,
        vec![vec![json!(4), json!(9.5)], vec![json!(3), json!(10)]]
    );
    let rows =
        q("SELECT id, paid_on FROM pay WHERE paid_on >= '1997-01-01' ORDER BY paid_on").await;
    let want = [(1, "1997-01-01"), (5, "1997-06-30"), (4, "1998-02-01")];
    let want: Vec<_> = want.iter().map(|(i, d)| vec![json!(i), json!(d)]).collect();
    assert_eq!(rows, want);
    let nulls = q("SELECT count(*) FROM pay WHERE amount IS NULL OR paid_on IS NULL").await;
    assert_eq!(nulls, vec![vec![json!(2)]]);

    let bad = [
        &[Some("6"), Some("1,5"), None][..],
        &[Some("7"), None, Some("1997-02-30")][..],
    ];
    for row in bad {
        let err = db
            .create_dataset(&table("pay", &cols, &[row]))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("row 1 column"), "{err}");
    }
    assert_eq!(q("SELECT count(*) FROM pay").await, vec![vec![json!(5)]]);
}

/// Exact sum of `unit_price * quantity * (1 - discount)` over order_details, in
/// units of 1/10000, computed from the CSV text with integers.
fn exact_revenue(table: &TableData) -> i128 {
    let col = |n: &str| table.columns.iter().position(|c| c.name == n).unwrap();
    let (price, qty, discount) = (col("unit_price"), col("quantity"), col("discount"));
    let hundredths = |v: &str| -> i128 {
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        let frac = format!("{frac:0<2}");
        assert_eq!(frac.len(), 2, "{v}");
        int.parse::<i128>().unwrap() * 100 + frac.parse::<i128>().unwrap()
    };
    table
        .rows
        .iter()
        .map(|r| {
            let p = hundredths(r[price].as_deref().unwrap());
            let q = r[qty].as_deref().unwrap().parse::<i128>().unwrap();
            let d = hundredths(r[discount].as_deref().unwrap());
            p * q * (100 - d)
        })
        .sum()
}

/// Money sums exact to the cent on both backends (to every digit on Postgres), date
/// filters and date order over the real orders table.
async fn northwind_money_and_dates(state: &State) {
    let db = &state.db;
    let details = northwind("order_details");
    let kinds: Vec<_> = details.columns.iter().map(|c| c.kind).collect();
    use ColumnType::{Decimal, Integer};
    assert_eq!(kinds, [Integer, Integer, Decimal, Integer, Decimal]);
    db.create_dataset(&details).await.unwrap();
    let exact = exact_revenue(&details);
    let cents = (exact + 50) / 100;
    let want_cents = format!("{}.{:02}", cents / 100, cents % 100);

    let run = |sql: &'static str| async move {
        db.query_dataset(sql, 1000, Duration::from_secs(5))
            .await
            .unwrap()
            .rows
    };
    let rounded =
        run("SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details").await;
    let rounded = rounded[0][0].to_string();
    assert_eq!(rounded, want_cents, "rounded revenue");
    if db.backend() == "postgres" {
        let full =
            run("SELECT sum(unit_price*quantity*(1-discount))::text FROM order_details").await;
        let want_full = format!("{}.{:04}", exact / 10000, exact % 10000);
        assert_eq!(full, vec![vec![json!(want_full)]]);
    }

    let orders = northwind("orders");
    let col = |n: &str| orders.columns.iter().position(|c| c.name == n).unwrap();
    assert_eq!(orders.columns[col("order_date")].kind, ColumnType::Date);
    assert_eq!(orders.columns[col("freight")].kind, ColumnType::Decimal);
    db.create_dataset(&orders).await.unwrap();
    let dates: Vec<&str> = orders
        .rows
        .iter()
        .filter_map(|r| r[col("order_date")].as_deref())
        .collect();
    let since = dates.iter().filter(|d| **d >= "1997-01-01").count();
    let counted = run("SELECT count(*) FROM orders WHERE order_date >= '1997-01-01'").await;
    assert_eq!(counted, vec![vec![json!(since)]]);
    let first = run("SELECT order_date FROM orders ORDER BY order_date, order_id LIMIT 1").await;
    assert_eq!(first, vec![vec![json!(dates.iter().min().unwrap())]]);
    let unshipped = orders
        .rows
        .iter()
        .filter(|r| r[col("shipped_date")].is_none())
        .count();
    let nulls = run("SELECT count(*) FROM orders WHERE shipped_date IS NULL").await;
    assert_eq!(nulls, vec![vec![json!(unshipped)]]);
    let by_year = match db.backend() {
        "postgres" => {
            "SELECT extract(year FROM order_date)::int AS y, count(*) FROM orders \
                       GROUP BY 1 ORDER BY 1"
        }
        _ => {
            "SELECT CAST(strftime('%Y', order_date) AS INTEGER) AS y, count(*) FROM orders \
              GROUP BY 1 ORDER BY 1"
        }
    };
    let years = run(by_year).await;
    let total: u64 = years.iter().map(|r| r[1].as_u64().unwrap()).sum();
    assert_eq!(years.len(), 3, "{years:?}");
    assert_eq!(total, orders.rows.len() as u64);
}

fn usage(request_id: &str, key_id: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        key_id: key_id.into(),
        agent: "chat".into(),
        model: "m".into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: cost,
        latency_ms: 12,
        status: 200,
        created_at: Utc::now(),
    }
}

async fn usage_ledger(state: &State) {
    let db = &state.db;
    db.create_key(new_key("k1", "am-secret-one", &[]))
        .await
        .unwrap();
    db.record_usage(&usage("r1", "k1", 0.25)).await.unwrap();
    db.record_usage(&usage("r1", "k1", 0.25)).await.unwrap();
    db.record_usage(&usage("r2", "k1", 0.5)).await.unwrap();
    db.record_usage(&usage("r3", "k2", 1.0)).await.unwrap();

    let mine = db.usage_summary(Some("k1")).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].day, Utc::now().format("%Y-%m-%d").to_string());
    assert_eq!(
        (
            mine[0].requests,
            mine[0].prompt_tokens,
            mine[0].completion_tokens
        ),
        (2, 20, 10)
    );
    assert!((mine[0].cost_usd - 0.75).abs() < 1e-9);
    assert_eq!(db.usage_summary(None).await.unwrap().len(), 2);
    let spent = db.get_key("k1").await.unwrap().unwrap().spent_usd;
    assert!((spent - 0.75).abs() < 1e-9, "{spent}");
}

/// A batch is one all-or-nothing write that still skips request ids already recorded,
/// so a batch retried after a lost commit acknowledgement counts nothing twice.
async fn usage_ledger_batch(state: &State) {
    let db = &state.db;
    db.create_key(new_key("k1", "am-secret-one", &[]))
        .await
        .unwrap();
    db.record_usage(&usage("r1", "k1", 0.25)).await.unwrap();
    let batch = [
        usage("r1", "k1", 0.25),
        usage("r2", "k1", 0.5),
        usage("r3", "k1", 1.0),
    ];
    db.record_usage_batch(&batch).await.unwrap();
    db.record_usage_batch(&batch).await.unwrap();
    db.record_usage_batch(&[]).await.unwrap();

    let mine = db.usage_summary(Some("k1")).await.unwrap();
    assert_eq!(mine[0].requests, 3);
    let spent = db.get_key("k1").await.unwrap().unwrap().spent_usd;
    assert!((spent - 1.75).abs() < 1e-9, "{spent}");
}

/// A refusal by either side of an admission consumes nothing on the other.
async fn admission_consumes_all_or_nothing(state: &State) {
    let hot = &state.hot;
    let limits = RateLimits {
        rpm: Some(2),
        tpm: None,
    };
    let spend = |budget| {
        Some(SpendReservation {
            usd: 1.0,
            budget,
            seed: 0.5,
        })
    };
    let allowed = |a: &Admitted| a.rate.allowed && a.budget.is_none_or(|b| b.allowed);

    // The budget (seeded at 0.5 from the database) refuses the third: no request counted.
    assert!(allowed(
        &hot.admit("k", &limits, 10, spend(2.6)).await.unwrap()
    ));
    assert!(allowed(
        &hot.admit("k", &limits, 10, spend(2.6)).await.unwrap()
    ));
    let refused = hot.admit("k", &limits, 10, spend(2.6)).await.unwrap();
    assert_eq!(refused.budget.map(|b| b.allowed), Some(false));
    assert!(
        (refused.budget.unwrap().spent_usd - 2.5).abs() < 1e-9,
        "{refused:?}"
    );
    let rate = hot
        .check_rate(
            "k",
            &RateLimits {
                rpm: Some(3),
                tpm: None,
            },
            0,
        )
        .await
        .unwrap();
    assert!(rate.allowed, "the budget refusal used a request: {rate:?}");

    // The limit refuses the second: its reservation is not kept.
    let one = RateLimits {
        rpm: Some(1),
        tpm: None,
    };
    assert!(allowed(
        &hot.admit("k2", &one, 10, spend(100.0)).await.unwrap()
    ));
    let refused = hot.admit("k2", &one, 10, spend(100.0)).await.unwrap();
    assert!(!refused.rate.allowed);
    assert_eq!(refused.rate.limited_by, Some("requests"));
    assert_eq!(refused.rate.remaining_requests, Some(0));
    let spent = hot.spend("k2").await.unwrap().unwrap();
    assert!(
        (spent - 1.5).abs() < 1e-9,
        "the refused request kept its reservation: {spent}"
    );

    // No budget, no limits: admitted, nothing reserved.
    let free = hot
        .admit("k3", &RateLimits::default(), 10, None)
        .await
        .unwrap();
    assert!(free.rate.allowed && free.budget.is_none());
}

async fn idempotency(state: &State) {
    let db = &state.db;
    assert_eq!(
        db.claim_idempotency("k1", "idem").await.unwrap(),
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        db.claim_idempotency("k1", "idem").await.unwrap(),
        IdempotencyClaim::InProgress
    );
    // Same key string, other API key: independent.
    assert_eq!(
        db.claim_idempotency("k2", "idem").await.unwrap(),
        IdempotencyClaim::Claimed
    );

    db.release_idempotency("k1", "idem").await.unwrap();
    assert_eq!(
        db.claim_idempotency("k1", "idem").await.unwrap(),
        IdempotencyClaim::Claimed
    );
    let response = StoredResponse {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"ok":true}"#.into(),
    };
    db.complete_idempotency("k1", "idem", &response)
        .await
        .unwrap();
    // A completed record is not dropped by a late release.
    db.release_idempotency("k1", "idem").await.unwrap();
    assert_eq!(
        db.claim_idempotency("k1", "idem").await.unwrap(),
        IdempotencyClaim::Done(response)
    );
}

async fn rate_limit_requests(state: &State) {
    rate_requests(state.hot.as_ref()).await;
}

async fn rate_requests(hot: &dyn Hot) {
    let limits = RateLimits {
        rpm: Some(3),
        tpm: None,
    };
    for left in [2, 1, 0] {
        let d = hot.check_rate("rk", &limits, 0).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining_requests, Some(left));
        assert!((1..=60).contains(&d.reset_secs), "{d:?}");
    }
    let denied = hot.check_rate("rk", &limits, 0).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(
        (denied.limited_by, denied.remaining_requests),
        (Some("requests"), Some(0))
    );
    // Another key has its own window; a key without limits is never counted.
    assert!(hot.check_rate("rk2", &limits, 0).await.unwrap().allowed);
    let free = hot
        .check_rate("rk", &RateLimits::default(), 0)
        .await
        .unwrap();
    assert!(free.allowed);
}

async fn rate_limit_tokens(state: &State) {
    let hot = &state.hot;
    let limits = RateLimits {
        rpm: Some(10),
        tpm: Some(100),
    };
    let first = hot.check_rate("tk", &limits, 60).await.unwrap();
    assert_eq!((first.allowed, first.remaining_tokens), (true, Some(40)));
    let denied = hot.check_rate("tk", &limits, 50).await.unwrap();
    assert_eq!((denied.allowed, denied.limited_by), (false, Some("tokens")));
    // The denied request consumed nothing: neither tokens nor a request.
    let fits = hot.check_rate("tk", &limits, 40).await.unwrap();
    assert_eq!(
        (fits.allowed, fits.remaining_tokens, fits.remaining_requests),
        (true, Some(0), Some(8))
    );

    hot.add_tokens("tk", -30).await.unwrap();
    assert!(hot.check_rate("tk", &limits, 30).await.unwrap().allowed);
    hot.add_tokens("tk", 500).await.unwrap();
    assert!(!hot.check_rate("tk", &limits, 1).await.unwrap().allowed);
}

async fn rate_limit_concurrent(state: &State) {
    let limits = RateLimits {
        rpm: Some(10),
        tpm: None,
    };
    let tasks: Vec<_> = (0..25)
        .map(|_| {
            let hot = state.hot.clone();
            tokio::spawn(async move { hot.check_rate("ck", &limits, 1).await.unwrap().allowed })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(allowed, 10);
}

async fn spend_counter(state: &State) {
    let hot = &state.hot;
    assert_eq!(hot.spend("sk").await.unwrap(), None);
    hot.seed_spend("sk", 1.0).await.unwrap();
    hot.seed_spend("sk", 5.0).await.unwrap();
    assert_eq!(hot.spend("sk").await.unwrap(), Some(1.0));
    let total = hot.add_spend("sk", 0.5).await.unwrap();
    assert!((total - 1.5).abs() < 1e-9);
    assert!((hot.add_spend("fresh", 0.25).await.unwrap() - 0.25).abs() < 1e-9);
}

async fn key_cache(state: &State) {
    let hot = &state.hot;
    let key = state
        .db
        .create_key(new_key("k1", "am-secret-one", &["chat"]))
        .await
        .unwrap();
    let hash = hash_secret("am-secret-one");
    assert_eq!(hot.cached_key(&hash).await.unwrap(), None);
    hot.cache_key(&hash, &key, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hot.cached_key(&hash).await.unwrap(), Some(key.clone()));
    hot.invalidate_key(&hash).await.unwrap();
    assert_eq!(hot.cached_key(&hash).await.unwrap(), None);

    hot.cache_key(&hash, &key, Duration::from_millis(100))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while hot.cached_key(&hash).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "cached key never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!hot.degraded());
}

async fn key_cache_invalidate_by_id(state: &State) {
    let hot = &state.hot;
    let key = state
        .db
        .create_key(new_key("k1", "am-secret-one", &["chat"]))
        .await
        .unwrap();
    let other = state
        .db
        .create_key(new_key("k2", "am-secret-two", &["chat"]))
        .await
        .unwrap();
    let (old, new, two) = (
        hash_secret("am-secret-one"),
        hash_secret("am-secret-new"),
        hash_secret("am-secret-two"),
    );
    let ttl = Duration::from_secs(30);
    hot.cache_key(&old, &key, ttl).await.unwrap();
    hot.cache_key(&new, &key, ttl).await.unwrap();
    hot.cache_key(&two, &other, ttl).await.unwrap();

    hot.invalidate_key_id("k1").await.unwrap();
    assert_eq!(hot.cached_key(&old).await.unwrap(), None);
    assert_eq!(hot.cached_key(&new).await.unwrap(), None);
    assert_eq!(hot.cached_key(&two).await.unwrap(), Some(other));
    // A lookup that read the key before the change cannot put it back.
    hot.cache_key(&old, &key, ttl).await.unwrap();
    assert_eq!(hot.cached_key(&old).await.unwrap(), None);
    assert!(!hot.degraded());
}

async fn conversation_cache(state: &State) {
    let (db, hot) = (&state.db, &state.hot);
    assert_eq!(db.load_conversation("c1").await.unwrap(), None);
    assert_eq!(
        hot.cached_conversation("c1").await.unwrap(),
        CachedConversation::Miss { version: 0 },
        "a missing conversation is not cached"
    );
    db.append_messages("c1", "k1", &[msg("user", "hi"), msg("assistant", "hello")])
        .await
        .unwrap();
    let loaded = db.load_conversation("c1").await.unwrap().unwrap();
    assert_eq!(loaded.messages.len(), 2);
    assert_eq!(
        hot.cached_conversation("c1").await.unwrap(),
        CachedConversation::Hit(loaded.clone())
    );

    // An append drops the copy; a load that read the old rows before it cannot store them.
    let CachedConversation::Miss { version } = ({
        db.append_messages("c1", "k1", &[msg("user", "again")])
            .await
            .unwrap();
        hot.cached_conversation("c1").await.unwrap()
    }) else {
        panic!("append left a cached copy");
    };
    hot.invalidate_conversation("c1").await.unwrap();
    hot.cache_conversation(&loaded, version, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(
        hot.cached_conversation("c1").await.unwrap(),
        CachedConversation::Miss { .. }
    ));
    let fresh = db.load_conversation("c1").await.unwrap().unwrap();
    assert_eq!(fresh.messages.len(), 3);
    assert_eq!(fresh.messages[2].content, "again");

    assert!(db.delete_conversation("c1").await.unwrap());
    assert_eq!(db.load_conversation("c1").await.unwrap(), None);
}

fn usage_on(request_id: &str, key_id: &str, day: NaiveDate) -> UsageRecord {
    let at = day.and_hms_opt(23, 59, 59).unwrap().and_utc();
    UsageRecord {
        created_at: at,
        ..usage(request_id, key_id, 0.0)
    }
}

async fn usage_by_day_range(state: &State) {
    let db = &state.db;
    let day = |d: u32| NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
    for (i, (key, d)) in [
        ("k1", 1),
        ("k1", 2),
        ("k1", 2),
        ("k2", 2),
        ("k1", 3),
        ("k2", 4),
    ]
    .iter()
    .enumerate()
    {
        db.record_usage(&usage_on(&format!("r{i}"), key, day(*d)))
            .await
            .unwrap();
    }
    let rows = db.usage_between(Some("k1"), day(2), day(3)).await.unwrap();
    let got: Vec<_> = rows.iter().map(|r| (r.day.as_str(), r.requests)).collect();
    assert_eq!(got, vec![("2025-03-02", 2)]);

    let rows = db.usage_between(None, day(1), day(3)).await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.day.as_str(), r.key_id.as_str(), r.requests))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2025-03-01", "k1", 1),
            ("2025-03-02", "k1", 2),
            ("2025-03-02", "k2", 1)
        ]
    );
    assert!(db
        .usage_between(None, day(5), day(9))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.usage_summary(None).await.unwrap().len(), 5);
}

/// Runs `n` calls of `f` at once, alternating between the two replicas.
async fn on_both<T, F, Fut>(a: &State, b: &State, n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(State, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let state = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(f(state, i))
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

async fn replicas_share_rate_limits(a: &State, b: &State) {
    let limits = RateLimits {
        rpm: Some(10),
        tpm: None,
    };
    let allowed = on_both(a, b, 30, |s, _| async move {
        s.hot
            .check_rate("shared", &limits, 0)
            .await
            .unwrap()
            .allowed
    })
    .await;
    assert_eq!(allowed.iter().filter(|ok| **ok).count(), 10);
}

async fn replicas_share_token_limits(a: &State, b: &State) {
    let limits = RateLimits {
        rpm: None,
        tpm: Some(100),
    };
    let allowed = on_both(a, b, 30, |s, _| async move {
        s.hot
            .check_rate("tokens", &limits, 10)
            .await
            .unwrap()
            .allowed
    })
    .await;
    assert_eq!(allowed.iter().filter(|ok| **ok).count(), 10);
}

/// Budget and limits in one step, 30 concurrent admissions over two replicas: with 10
/// requests a minute and a budget room for 15, the limit admits exactly 10 and the 20
/// refused keep nothing reserved; with a budget room for 6 and no limit, exactly 6.
async fn replicas_admit_exactly(a: &State, b: &State) {
    let limits = RateLimits {
        rpm: Some(10),
        tpm: None,
    };
    let spend = Some(SpendReservation {
        usd: 0.5,
        budget: 7.5,
        seed: 0.0,
    });
    let admitted = on_both(a, b, 30, |s, _| async move {
        s.hot.admit("k", &limits, 1, spend).await.unwrap()
    })
    .await;
    assert_eq!(
        admitted
            .iter()
            .filter(|d| d.rate.allowed && d.budget.unwrap().allowed)
            .count(),
        10
    );
    let spent = a.hot.spend("k").await.unwrap().unwrap();
    assert!(
        (spent - 5.0).abs() < 1e-9,
        "refused requests kept their reservation: {spent}"
    );

    let spend = Some(SpendReservation {
        usd: 0.5,
        budget: 3.0,
        seed: 0.0,
    });
    let unlimited = RateLimits::default();
    let admitted = on_both(a, b, 30, |s, _| async move {
        s.hot.admit("k2", &unlimited, 1, spend).await.unwrap()
    })
    .await;
    let allowed = admitted
        .iter()
        .filter(|d| d.budget.unwrap().allowed)
        .count();
    assert_eq!(allowed, 6);
    let spent = b.hot.spend("k2").await.unwrap().unwrap();
    assert!((spent - 3.0).abs() < 1e-9, "{spent}");
}

async fn replicas_share_spend(a: &State, b: &State) {
    // A budget of 1.0, 30 requests each reserving 0.1 (after 0.2 already spent).
    let decisions = on_both(a, b, 30, |s, _| async move {
        s.hot.reserve_spend("budget", 0.1, 1.0, 0.2).await.unwrap()
    })
    .await;
    assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 8);
    let denied = decisions.iter().find(|d| !d.allowed).unwrap();
    assert!((denied.spent_usd - 1.0).abs() < 1e-9, "{denied:?}");
    // Actual costs settle afterwards: give back 0.05, then plain additions from both.
    a.hot.add_spend("budget", -0.05).await.unwrap();
    assert!(
        b.hot
            .reserve_spend("budget", 0.05, 1.0, 0.0)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !a.hot
            .reserve_spend("budget", 0.01, 1.0, 0.0)
            .await
            .unwrap()
            .allowed
    );
    on_both(a, b, 10, |s, _| async move {
        s.hot.add_spend("plain", 0.5).await.unwrap()
    })
    .await;
    let spent = b.hot.spend("plain").await.unwrap().unwrap();
    assert!((spent - 5.0).abs() < 1e-9, "{spent}");
}

async fn replicas_claim_idempotency_once(a: &State, b: &State) {
    let claims = on_both(a, b, 20, |s, _| async move {
        s.db.claim_idempotency("k1", "same-request").await.unwrap()
    })
    .await;
    let claimed = claims
        .iter()
        .filter(|c| **c == IdempotencyClaim::Claimed)
        .count();
    assert_eq!(claimed, 1, "{claims:?}");
    assert!(claims
        .iter()
        .all(|c| matches!(c, IdempotencyClaim::Claimed | IdempotencyClaim::InProgress)));

    let response = StoredResponse {
        status: 200,
        content_type: "application/json".into(),
        body: "{}".into(),
    };
    a.db.complete_idempotency("k1", "same-request", &response)
        .await
        .unwrap();
    assert_eq!(
        b.db.claim_idempotency("k1", "same-request").await.unwrap(),
        IdempotencyClaim::Done(response)
    );
}

async fn replicas_see_key_invalidation(a: &State, b: &State) {
    let key =
        a.db.create_key(new_key("k1", "am-secret-one", &[]))
            .await
            .unwrap();
    let hash = hash_secret("am-secret-one");
    a.hot
        .cache_key(&hash, &key, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(a.hot.cached_key(&hash).await.unwrap(), Some(key));
    b.db.revoke_key("k1").await.unwrap();
    b.hot.invalidate_key_id("k1").await.unwrap();
    // Other replicas hear of it over pub/sub: within milliseconds, not at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.hot.cached_key(&hash).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "replica a still serves the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reloaded = a.db.find_key_by_hash(&hash).await.unwrap().unwrap();
    assert!(reloaded.revoked_at.is_some());
}

async fn replicas_see_conversation_appends(a: &State, b: &State) {
    a.db.append_messages("c", "k1", &[msg("user", "one")])
        .await
        .unwrap();
    assert_eq!(
        a.db.load_conversation("c")
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(
        b.db.load_conversation("c")
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        1
    );
    b.db.append_messages("c", "k1", &[msg("assistant", "two")])
        .await
        .unwrap();
    let seen = a.db.load_conversation("c").await.unwrap().unwrap();
    let contents: Vec<_> = seen.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, vec!["one", "two"]);
    assert!(b.db.delete_conversation("c").await.unwrap());
    assert_eq!(a.db.load_conversation("c").await.unwrap(), None);
}

async fn rotation_keeps_window_and_spend(a: &State, b: &State) {
    let key =
        a.db.create_key(new_key("k1", "am-secret-one", &[]))
            .await
            .unwrap();
    let limits = RateLimits {
        rpm: key.rpm_limit,
        tpm: None,
    };
    for _ in 0..7 {
        assert!(a.hot.check_rate(&key.id, &limits, 0).await.unwrap().allowed);
    }
    a.db.record_usage(&usage("r1", "k1", 0.75)).await.unwrap();
    a.hot.add_spend(&key.id, 0.75).await.unwrap();

    let new_hash = hash_secret("am-secret-rotated");
    let rotated = b.db.rotate_key("k1", &new_hash, "am-sec").await.unwrap();
    b.hot.invalidate_key_id("k1").await.unwrap();
    let found = b.db.find_key_by_hash(&new_hash).await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), found.spent_usd), ("k1", 0.75));
    assert_eq!(rotated.rpm_limit, Some(10));
    assert_eq!(
        b.db.find_key_by_hash(&hash_secret("am-secret-one"))
            .await
            .unwrap(),
        None
    );

    // The window opened before the rotation goes on: 3 requests left of 10.
    let next = b.hot.check_rate(&found.id, &limits, 0).await.unwrap();
    assert_eq!((next.allowed, next.remaining_requests), (true, Some(2)));
    for _ in 0..2 {
        assert!(
            b.hot
                .check_rate(&found.id, &limits, 0)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        !a.hot
            .check_rate(&found.id, &limits, 0)
            .await
            .unwrap()
            .allowed
    );
    let spent = b.hot.spend(&found.id).await.unwrap().unwrap();
    assert!((spent - 0.75).abs() < 1e-9, "{spent}");
}

#[tokio::test]
async fn memory_backend_limits() {
    rate_requests(&MemoryHot::new()).await;
}

#[tokio::test]
async fn redis_unreachable_serves_from_memory() {
    let prefix = testing::fresh_redis_prefix();
    let hot =
        RedisHot::connect("redis://127.0.0.1:1", &prefix, Duration::from_millis(250)).unwrap();
    let started = Instant::now();
    rate_requests(&hot).await;
    assert!(hot.degraded());
    hot.add_spend("sk", 1.0).await.unwrap();
    assert_eq!(hot.spend("sk").await.unwrap(), Some(1.0));
    assert!(hot.ping().await.is_err());
    // One timed-out probe at most, then memory: well under a second for all calls.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let cfg = StateConfig {
        database_url: "sqlite::memory:".into(),
        redis_url: Some("redis://127.0.0.1:1".into()),
        redis_prefix: prefix,
    };
    let state = State::connect(&cfg).await.unwrap();
    let limits = RateLimits {
        rpm: Some(1),
        tpm: None,
    };
    assert!(state.hot.check_rate("x", &limits, 0).await.unwrap().allowed);
    assert!(!state.hot.check_rate("x", &limits, 0).await.unwrap().allowed);
    assert!(state.hot.degraded());
}

/// Forwards a local port to Redis until aborted, so a test can cut Redis off.
fn redis_proxy(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(16).unwrap();
    let target = testing::redis_url()
        .trim_start_matches("redis://")
        .to_owned();
    tokio::spawn(async move {
        let mut links = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            links.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_then_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let prefix = testing::fresh_redis_prefix();
    let url = format!("redis://{addr}");
    let hot = RedisHot::connect(&url, &prefix, Duration::from_millis(250)).unwrap();
    let limits = RateLimits {
        rpm: Some(100),
        tpm: None,
    };

    let proxy = redis_proxy(addr);
    hot.ping().await.unwrap();
    assert!(hot.check_rate("r", &limits, 0).await.unwrap().allowed);
    assert!(!hot.degraded());

    proxy.abort();
    let _ = proxy.await;
    let started = Instant::now();
    assert!(hot.check_rate("r", &limits, 0).await.unwrap().allowed);
    assert!(hot.degraded());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let proxy = redis_proxy(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hot.degraded() {
        assert!(Instant::now() < deadline, "never left degraded mode");
        assert!(hot.check_rate("r", &limits, 0).await.unwrap().allowed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.abort();
    testing::cleanup_redis(&prefix).await;
}

#[tokio::test]
async fn connect_rejects_bad_urls() {
    let cfg = |url: &str| StateConfig {
        database_url: url.into(),
        redis_url: None,
        redis_prefix: "t:".into(),
    };
    let bad = State::connect(&cfg("mysql://localhost/db")).await;
    match bad {
        Err(StateError::Invalid(m)) => assert!(m.contains("mysql") && m.contains("postgres://")),
        other => panic!("expected Invalid, got {:?}", other.err()),
    }
    let down = State::connect(&cfg("postgres://postgres@127.0.0.1:1/x")).await;
    assert!(
        matches!(down, Err(StateError::Unavailable { .. })),
        "{:?}",
        down.err()
    );
}

#[tokio::test]
async fn sqlite_keeps_datasets_in_separate_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("a/b");
    let state = State::connect(&StateConfig::embedded(&data_dir))
        .await
        .unwrap();
    let t = table("t", &[("id", ColumnType::Integer)], &[&[Some("1")]]);
    state.db.create_dataset(&t).await.unwrap();
    assert!(data_dir.join("agentmesh.db").exists());
    assert!(data_dir.join("agentmesh-datasets.db").exists());

    // A second process-level open sees the same data (file-backed, migrations idempotent).
    drop(state);
    let again = State::connect(&StateConfig::embedded(&data_dir))
        .await
        .unwrap();
    assert_eq!(again.db.list_datasets().await.unwrap().len(), 1);
    let out = again
        .db
        .query_dataset("SELECT id FROM t", 5, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(out.rows, vec![vec![json!(1)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_works() {
    let cfg = StateConfig {
        database_url: "sqlite::memory:".into(),
        redis_url: None,
        redis_prefix: "t:".into(),
    };
    let state = State::connect(&cfg).await.unwrap();
    datasets_create_replace_query(&state).await;
    keys_lifecycle(&state).await;
    concurrent_appends(&state).await;
    documents_and_search(&state).await;
}

#[tokio::test]
async fn postgres_replicas_migrate_concurrently() {
    let db = testing::fresh_postgres().await;
    let cfg = db.state_config();
    let (a, b, c) = tokio::join!(
        State::connect(&cfg),
        State::connect(&cfg),
        State::connect(&cfg)
    );
    for state in [a, b, c] {
        state.unwrap().db.ping().await.unwrap();
    }
    db.cleanup().await;
}
