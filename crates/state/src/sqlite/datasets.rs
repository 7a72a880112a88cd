//! Datasets in their own SQLite database, apart from agentmesh's tables.
//!
//! Tables live in `<main stem>-datasets.db` beside the main file (a private
//! in-memory database when the main one is in memory), so no query on them can
//! name `api_keys`. Queries run on read-only connections (`mode=ro` for files,
//! `PRAGMA query_only` always), must start with SELECT, WITH or VALUES (which
//! keeps ATTACH and PRAGMA out), and are interrupted by a progress handler once
//! their time is up. The registry of datasets is a table of the main database,
//! written after the dataset's own transaction commits.
//!
//! Column types: SQLite has no exact decimal. A `decimal` column is declared
//! `DECIMAL` (NUMERIC affinity): each value is stored as an INTEGER when whole,
//! else as a REAL, exact to 15 significant digits, so comparisons and ordering
//! are numeric; `sum()` uses compensated summation, so sums of money rounded to
//! the cent (`round(sum(x), 2)`) are exact. Text holding the decimal string would
//! keep every digit but compare as text (`'9.5' > '10'`), which is worse. A
//! `date` column is declared `DATE` and holds ISO `YYYY-MM-DD` text, which sorts
//! and compares as dates and works with `date()`, `strftime()` and `julianday()`.
//! The registry keeps the declared `ColumnType` of each column.

use super::{get_ts, pool_options, ts, SqliteDatabase, BACKEND};
use crate::sqlerr::{classify_query, map};
use crate::values::{batch_rows, float_json, quote_ident, typed_rows, validate_table, Cell};
use crate::{ColumnInfo, ColumnType, DatasetInfo, QueryResult, Result, StateError, TableData};
use chrono::Utc;
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqliteRow};
use sqlx::{Column, Executor, Row, TypeInfo, ValueRef};
use std::path::Path;
use std::time::{Duration, Instant};

/// Virtual-machine steps between two checks of a query's deadline.
const PROGRESS_STEPS: i32 = 1_000;

pub(crate) struct DatasetStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer => "INTEGER",
        ColumnType::Decimal => "DECIMAL",
        ColumnType::Real => "REAL",
        ColumnType::Date => "DATE",
        ColumnType::Text => "TEXT",
    }
}

/// `dir/agentmesh.db` -> `dir/agentmesh-datasets.db`.
fn datasets_path(main: &Path) -> std::path::PathBuf {
    let stem = main
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("agentmesh");
    main.with_file_name(format!("{stem}-datasets.db"))
}

impl DatasetStore {
    pub(super) async fn open(main_file: Option<&Path>) -> Result<Self> {
        let base = match main_file {
            Some(main) => SqliteConnectOptions::new().filename(datasets_path(main)),
            None => SqliteConnectOptions::new()
                .filename(format!(
                    "file:agentmesh-datasets-{}",
                    uuid::Uuid::new_v4().simple()
                ))
                .in_memory(true)
                .shared_cache(true),
        };
        let base = base.busy_timeout(Duration::from_secs(5));
        let in_memory = main_file.is_none();
        let unavailable = |e: sqlx::Error| StateError::Unavailable {
            backend: BACKEND,
            message: e.to_string(),
        };

        let writer = pool_options(in_memory, 1)
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(unavailable)?;
        let reader_options = base.read_only(!in_memory).pragma("query_only", "ON");
        let reader = pool_options(in_memory, 4)
            .connect_with(reader_options)
            .await
            .map_err(unavailable)?;
        Ok(Self { writer, reader })
    }

    /// Drops and recreates the table with all its rows in one transaction.
    async fn replace(&self, table: &TableData, rows: &[Vec<Cell>]) -> Result<()> {
        let name = quote_ident(&table.name);
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), sql_type(c.kind)))
            .collect();
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        let drop = format!("DROP TABLE IF EXISTS {name}");
        let create = format!("CREATE TABLE {name} ({})", columns.join(", "));
        for statement in [drop, create] {
            tx.execute(statement.as_str()).await.map_err(|e| match e {
                sqlx::Error::Database(db) => StateError::Invalid(db.message().to_owned()),
                other => crate::sqlerr::classify(BACKEND, other),
            })?;
        }

        let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let head = format!("INSERT INTO {name} ({}) ", names.join(", "));
        for batch in rows.chunks(batch_rows(names.len())) {
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(&head);
            builder.push_values(batch, |mut b, row| {
                for cell in row {
                    match cell {
                        Cell::Int(v) => b.push_bind(*v),
                        // Text, converted by the column's NUMERIC affinity.
                        Cell::Decimal(v) => b.push_bind(v.clone()),
                        Cell::Real(v) => b.push_bind(*v),
                        Cell::Date(v) => b.push_bind(v.map(|d| d.to_string())),
                        Cell::Text(v) => b.push_bind(v.clone()),
                    };
                }
            });
            builder
                .build()
                .execute(&mut *tx)
                .await
                .map_err(map(BACKEND))?;
        }
        tx.commit().await.map_err(map(BACKEND))
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        check_select(sql)?;
        let mut conn = self.reader.acquire().await.map_err(map(BACKEND))?;
        let deadline = Instant::now() + timeout;
        conn.lock_handle()
            .await
            .map_err(map(BACKEND))?
            .set_progress_handler(PROGRESS_STEPS, move || Instant::now() < deadline);

        let result = run_in_snapshot(&mut conn, sql, max_rows, timeout).await;
        if let Ok(mut handle) = conn.lock_handle().await {
            handle.remove_progress_handler();
        }
        result
    }
}

/// Runs the query inside a read transaction that first touches the schema.
/// A connection caches the schema and prepares against it; had a table been
/// replaced since, SQLite would re-prepare on the first step and the rows
/// would no longer match the columns sqlx recorded at prepare time.
async fn run_in_snapshot(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    max_rows: usize,
    timeout: Duration,
) -> Result<QueryResult> {
    use sqlx::Connection;
    let mut tx = conn.begin().await.map_err(map(BACKEND))?;
    sqlx::query("SELECT count(*) FROM sqlite_schema")
        .execute(&mut *tx)
        .await
        .map_err(|e| classify_query(BACKEND, timeout, e))?;
    let result = run(&mut tx, sql, max_rows, timeout).await;
    tx.rollback().await.map_err(map(BACKEND))?;
    result
}

async fn run(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    max_rows: usize,
    timeout: Duration,
) -> Result<QueryResult> {
    let fail = |e| classify_query(BACKEND, timeout, e);
    let mut columns: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    let mut truncated = false;
    {
        let mut stream = sqlx::query(sql).persistent(false).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await.map_err(fail)? {
            if rows.len() == max_rows {
                truncated = true;
                break;
            }
            if columns.is_none() {
                columns = Some(row.columns().iter().map(|c| c.name().to_owned()).collect());
            }
            rows.push(decode_row(&row));
        }
    }
    let columns = match columns {
        Some(c) => c,
        None => {
            let described = (&mut *conn).describe(sql).await.map_err(fail)?;
            described
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect()
        }
    };
    Ok(QueryResult {
        columns,
        rows,
        truncated,
    })
}

/// The first keyword after comments and parentheses must start a query.
fn check_select(sql: &str) -> Result<()> {
    let mut rest = sql;
    loop {
        let trimmed = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = trimmed.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = trimmed.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            rest = trimmed;
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match word.to_ascii_uppercase().as_str() {
        "SELECT" | "WITH" | "VALUES" => Ok(()),
        _ => Err(StateError::Invalid(format!(
            "only a SELECT query may run on datasets, not {:?}",
            if word.is_empty() {
                rest.chars().take(20).collect()
            } else {
                word
            }
        ))),
    }
}

fn decode_row(row: &SqliteRow) -> Vec<Value> {
    (0..row.columns().len())
        .map(|i| decode_cell(row, i))
        .collect()
}

/// One value as JSON by its storage class; blobs become hex strings.
fn decode_cell(row: &SqliteRow, i: usize) -> Value {
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let decoded = match raw.type_info().name() {
        "INTEGER" => row.try_get_unchecked::<i64, _>(i).map(Value::from),
        "REAL" => row.try_get_unchecked::<f64, _>(i).map(float_json),
        "BLOB" => row
            .try_get_unchecked::<Vec<u8>, _>(i)
            .map(|b| Value::String(hex::encode(b))),
        _ => row.try_get_unchecked::<String, _>(i).map(Value::String),
    };
    decoded.unwrap_or(Value::Null)
}

impl SqliteDatabase {
    pub(super) async fn create_table(&self, table: &TableData) -> Result<DatasetInfo> {
        validate_table(table)?;
        let rows = typed_rows(table)?;
        self.datasets.replace(table, &rows).await?;

        let created_at = Utc::now();
        sqlx::query(
            "INSERT INTO datasets (name, columns, row_count, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET columns = excluded.columns, \
             row_count = excluded.row_count, created_at = excluded.created_at",
        )
        .bind(&table.name)
        .bind(sqlx::types::Json(&table.columns))
        .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX))
        .bind(ts(created_at))
        .execute(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(DatasetInfo {
            name: table.name.clone(),
            columns: table.columns.clone(),
            row_count: rows.len() as u64,
            created_at: super::parse_ts(&ts(created_at)).unwrap_or(created_at),
        })
    }

    pub(super) async fn datasets_info(&self, name: Option<&str>) -> Result<Vec<DatasetInfo>> {
        let rows = sqlx::query(
            "SELECT name, columns, row_count, created_at FROM datasets \
             WHERE (?1 IS NULL OR name = ?1) ORDER BY name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        rows.iter()
            .map(|r| {
                let columns: sqlx::types::Json<Vec<ColumnInfo>> = r.try_get("columns")?;
                let count: i64 = r.try_get("row_count")?;
                Ok(DatasetInfo {
                    name: r.try_get("name")?,
                    columns: columns.0,
                    row_count: u64::try_from(count).unwrap_or(0),
                    created_at: get_ts(r, "created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check_select;

    #[test]
    fn only_queries_pass() {
        assert!(check_select("  /* c */ -- x\n (SELECT 1)").is_ok());
        assert!(check_select("with t as (select 1) select * from t").is_ok());
        assert!(check_select("ATTACH 'x.db' AS y").is_err());
        assert!(check_select("/* hide */ PRAGMA query_only = OFF").is_err());
        assert!(check_select("").is_err());
    }
}
