//! Hostile and tricky SQL, run through the data agent's `Query` on both backends:
//! each string is refused as the client's mistake or runs without side effects,
//! and legitimate analytical queries return the right rows.

use super::{clients, query, start_data};
use agentmesh_mock_llm::MockConfig;
use agentmesh_proto::v1::data_client::DataClient;
use agentmesh_proto::v1::RegisterDatasetRequest;
use agentmesh_state::State;
use tonic::transport::Channel;

/// What must happen to one string.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused before or by the database as a client error (400), never run.
    Refused,
    /// Runs, and changes nothing.
    Harmless,
    /// Stopped by the statement timeout or the database, as a client-visible error.
    Stopped,
}
use Expect::*;

const HOSTILE: &[(&str, Expect)] = &[
    // Plain writes and DDL, in any casing.
    ("DELETE FROM orders", Refused),
    ("dElEtE fRoM orders WHERE 1=1", Refused),
    ("UPDATE orders SET total = 0", Refused),
    (
        "INSERT INTO orders VALUES (9, 3, 1.5, '2024-01-01')",
        Refused,
    ),
    ("DrOp TaBlE orders", Refused),
    ("TRUNCATE orders", Refused),
    ("ALTER TABLE orders ADD COLUMN evil integer", Refused),
    ("CREATE TABLE evil (x integer)", Refused),
    ("CREATE TABLE evil AS SELECT * FROM orders", Refused),
    ("SELECT * INTO evil FROM orders", Refused),
    ("CREATE VIEW evil AS SELECT 1", Refused),
    ("GRANT ALL ON orders TO public", Refused),
    // Writes hidden in CTEs and subqueries.
    (
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        Refused,
    ),
    (
        "WITH z AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM z",
        Refused,
    ),
    (
        "WITH n AS (INSERT INTO orders VALUES (9, 3, 1, '2024-01-01') RETURNING id) \
         SELECT * FROM n",
        Refused,
    ),
    (
        "SELECT * FROM orders WHERE id IN \
         (WITH d AS (DELETE FROM orders RETURNING id) SELECT id FROM d)",
        Refused,
    ),
    // Stacked statements and transaction control.
    ("SELECT 1; DROP TABLE orders", Refused),
    ("SELECT * FROM orders;DELETE FROM orders;--", Refused),
    ("BEGIN; DELETE FROM orders; COMMIT", Refused),
    ("COMMIT", Refused),
    ("SET default_transaction_read_only = off", Refused),
    ("SELECT 1 -- hidden\n; DROP TABLE orders", Refused),
    // Comments around writes; comments and strings that only look like writes.
    ("/* just a select */ DELETE FROM orders", Refused),
    ("-- note\nDROP TABLE orders", Refused),
    (
        "SELECT count(*) FROM orders /* ; DROP TABLE orders */",
        Harmless,
    ),
    ("SELECT '; DROP TABLE orders; --' AS s", Harmless),
    ("select COUNT(*) from ORDERS", Harmless),
    // Files, programs, other databases.
    ("COPY orders TO '/tmp/agentmesh-evil.csv'", Refused),
    ("COPY (SELECT 1) TO PROGRAM 'id'", Refused),
    ("ATTACH DATABASE '/tmp/agentmesh-evil.db' AS evil", Refused),
    ("SELECT pg_read_file('/etc/passwd')", Refused),
    ("SELECT PG_READ_FILE('/etc/passwd')", Refused),
    ("SELECT lo_import('/etc/passwd')", Refused),
    ("SELECT readfile('/etc/passwd')", Refused),
    ("SELECT load_extension('/tmp/evil.so')", Refused),
    ("SELECT dblink('host=10.0.0.1', 'SELECT 1')", Refused),
    (
        "SELECT query_to_xml('DELETE FROM orders', true, true, '')",
        Refused,
    ),
    // Sleeping and burning time.
    ("SELECT pg_sleep(30)", Refused),
    ("SELECT \"pg_sleep\"(30)", Refused),
    ("SELECT pg_catalog.pg_sleep(30)", Refused),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
         SELECT count(*) FROM r",
        Stopped,
    ),
    // Server settings and sequences.
    ("SELECT current_setting('data_directory')", Refused),
    (
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        Refused,
    ),
    ("SELECT nextval('evil_seq')", Refused),
    // Catalog reads, direct and hidden.
    ("SELECT * FROM pg_catalog.pg_user", Refused),
    ("SELECT * FROM pg_shadow", Refused),
    ("SELECT * FROM \"pg_roles\"", Refused),
    ("SELECT * FROM information_schema.tables", Refused),
    ("SELECT * FROM sqlite_master", Refused),
    ("SELECT name FROM sqlite_schema", Refused),
    ("SELECT (SELECT usename FROM pg_user LIMIT 1)", Refused),
    (
        "SELECT * FROM orders WHERE id IN (SELECT oid FROM pg_class)",
        Refused,
    ),
    (
        "SELECT id FROM orders UNION SELECT usesysid FROM pg_user",
        Refused,
    ),
    ("SELECT * FROM public.orders", Refused),
    ("TABLE pg_authid", Refused),
    // Statements that are not queries at all.
    ("PRAGMA writable_schema = 1", Refused),
    ("VACUUM", Refused),
    ("EXPLAIN ANALYZE DELETE FROM orders", Refused),
    ("DO $$ BEGIN DELETE FROM orders; END $$", Refused),
    ("PREPARE p AS DELETE FROM orders", Refused),
    ("SELECT * FROM orders FOR UPDATE", Refused),
];

/// Analytical queries the sandbox must allow, with the first row they return.
const LEGITIMATE: &[(&str, &str)] = &[
    (
        "SELECT c.name, sum(o.total) AS spent FROM orders o \
         JOIN customers c ON c.id = o.customer_id GROUP BY c.name ORDER BY spent DESC",
        r#"["Ada",55.0]"#,
    ),
    (
        "SELECT id, rank() OVER (ORDER BY total DESC) AS r FROM orders ORDER BY r, id",
        r#"[3,1]"#,
    ),
    (
        "SELECT id, sum(total) OVER (PARTITION BY customer_id ORDER BY id) AS running \
         FROM orders ORDER BY customer_id, id",
        r#"[1,10.0]"#,
    ),
    (
        "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id \
         HAVING count(*) > 1",
        r#"[1,2]"#,
    ),
    (
        "WITH big AS (SELECT * FROM orders WHERE total > 20) SELECT count(*) AS n FROM big",
        r#"[2]"#,
    ),
    (
        "SELECT c.name FROM customers c LEFT JOIN orders o ON o.customer_id = c.id \
         WHERE o.id IS NULL",
        r#"["Cy"]"#,
    ),
    (
        "SELECT substr(CAST(day AS TEXT), 1, 7) AS month, count(*) AS n FROM orders \
         GROUP BY substr(CAST(day AS TEXT), 1, 7) ORDER BY month",
        r#"["2024-01",2]"#,
    ),
    (
        "SELECT count(*) AS n FROM orders WHERE day >= '2024-01-20'",
        r#"[2]"#,
    ),
];

async fn register(data: &mut DataClient<Channel>, name: &str, csv: &str) {
    let req = RegisterDatasetRequest {
        name: name.into(),
        csv: csv.as_bytes().to_vec(),
    };
    data.register_dataset(req).await.unwrap();
}

/// Row count and total of `orders`, and the dataset names: what an attack would change.
async fn fingerprint(data: &mut DataClient<Channel>) -> String {
    let sums = query(data, "SELECT count(*), sum(total) FROM orders")
        .await
        .unwrap();
    let list = data
        .list_datasets(agentmesh_proto::v1::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = list.datasets.into_iter().map(|d| d.name).collect();
    names.sort();
    format!("{} {names:?}", sums.rows_json)
}

/// Runs every hostile string and every legitimate query against `state`.
pub async fn run_table(state: State, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_data(MockConfig::new(super::MODEL), state, dir).await;
    let (mut data, _) = clients(&agent.url).await;
    register(&mut data, "customers", "id,name\n1,Ada\n2,Bo\n3,Cy\n").await;
    register(
        &mut data,
        "orders",
        "id,customer_id,total,day\n1,1,10,2024-01-05\n2,2,25,2024-01-20\n\
         3,1,45,2024-02-02\n",
    )
    .await;
    let before = fingerprint(&mut data).await;

    assert!(HOSTILE.len() >= 40, "{} strings", HOSTILE.len());
    let mut wrong = Vec::new();
    for (sql, expect) in HOSTILE {
        let outcome = query(&mut data, sql).await;
        let fine = match (expect, &outcome) {
            (Refused, Err(s)) => s.code() == tonic::Code::InvalidArgument,
            (Harmless, Ok(_)) => true,
            (Stopped, Err(s)) => {
                matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::DeadlineExceeded
                )
            }
            _ => false,
        };
        if !fine {
            let got = outcome
                .map(|r| r.rows_json)
                .map_err(|s| (s.code(), s.message().to_string()));
            wrong.push(format!(
                "{backend}: {sql:?} expected {expect:?}, got {got:?}"
            ));
        }
        assert_eq!(
            fingerprint(&mut data).await,
            before,
            "{backend}: {sql:?} changed data"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(!std::path::Path::new("/tmp/agentmesh-evil.db").exists());

    for (sql, first_row) in LEGITIMATE {
        let rows = query(&mut data, sql).await;
        let rows = rows.unwrap_or_else(|s| panic!("{backend}: {sql:?} refused: {s:?}"));
        let rows: serde_json::Value = serde_json::from_str(&rows.rows_json).unwrap();
        let expected: serde_json::Value = serde_json::from_str(first_row).unwrap();
        assert_eq!(
            normalized(&rows[0]),
            normalized(&expected),
            "{backend}: {sql}"
        );
    }
}

/// Numbers compared as f64, so 55 (integer sum) equals 55.0 (real sum).
fn normalized(value: &serde_json::Value) -> Vec<String> {
    let cells = value.as_array().cloned().unwrap_or_default();
    cells
        .iter()
        .map(|c| match c.as_f64() {
            Some(n) => format!("{n}"),
            None => c.to_string(),
        })
        .collect()
}
