//! Datasets in schema `datasets`: created atomically, queried read-only.
//!
//! A user query runs in its own transaction that is read-only, bounded by
//! `statement_timeout`, resolves bare names in schema `datasets` only and,
//! when the role exists, runs as `agentmesh_datasets_reader`, which can read
//! nothing but that schema. The transaction is always rolled back.

use super::{PgDatabase, BACKEND};
use crate::sqlerr::{classify_query, map};
use crate::values::{batch_rows, decimal_json, float_json, quote_ident, typed_rows, Cell};
use crate::{ColumnInfo, ColumnType, DatasetInfo, QueryResult, Result, StateError, TableData};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::types::Json;
use sqlx::{Column, Executor, Row, TypeInfo, ValueRef};
use std::time::Duration;

/// Extra time the client side waits beyond the server's statement timeout.
const CLIENT_GRACE: Duration = Duration::from_secs(2);

fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer => "BIGINT",
        ColumnType::Decimal => "NUMERIC",
        ColumnType::Real => "DOUBLE PRECISION",
        ColumnType::Date => "DATE",
        ColumnType::Text => "TEXT",
    }
}

impl PgDatabase {
    pub(super) async fn create_table(&self, table: &TableData) -> Result<DatasetInfo> {
        crate::values::validate_table(table)?;
        let rows = typed_rows(table)?;
        let qualified = format!("datasets.{}", quote_ident(&table.name));
        let mut tx = self.pool.begin().await.map_err(map(BACKEND))?;

        // Replicas replacing the same table take turns.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('agentmesh.dataset.' || $1))")
            .bind(&table.name)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), sql_type(c.kind)))
            .collect();
        let ddl = [
            format!("DROP TABLE IF EXISTS {qualified}"),
            format!("CREATE TABLE {qualified} ({})", columns.join(", ")),
        ];
        for statement in ddl {
            tx.execute(statement.as_str()).await.map_err(create_error)?;
        }
        insert_rows(&mut tx, &qualified, table, &rows).await?;
        if self.reader_role {
            let grant = format!("GRANT SELECT ON {qualified} TO agentmesh_datasets_reader");
            tx.execute(grant.as_str()).await.map_err(map(BACKEND))?;
        }

        let created_at = sqlx::query_scalar(
            "INSERT INTO datasets (name, columns, row_count) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET columns = $2, row_count = $3, created_at = now() \
             RETURNING created_at",
        )
        .bind(&table.name)
        .bind(Json(&table.columns))
        .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await
        .map_err(map(BACKEND))?;
        tx.commit().await.map_err(map(BACKEND))?;
        Ok(DatasetInfo {
            name: table.name.clone(),
            columns: table.columns.clone(),
            row_count: rows.len() as u64,
            created_at,
        })
    }

    pub(super) async fn datasets(&self, name: Option<&str>) -> Result<Vec<DatasetInfo>> {
        let rows = sqlx::query(
            "SELECT name, columns, row_count, created_at FROM datasets \
             WHERE ($1::text IS NULL OR name = $1) ORDER BY name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        rows.iter()
            .map(|r| {
                let columns: Json<Vec<ColumnInfo>> = r.try_get("columns")?;
                let count: i64 = r.try_get("row_count")?;
                Ok(DatasetInfo {
                    name: r.try_get("name")?,
                    columns: columns.0,
                    row_count: u64::try_from(count).unwrap_or(0),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }

    pub(super) async fn run_query(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        let work = self.run_query_inner(sql, max_rows, timeout);
        match tokio::time::timeout(timeout + CLIENT_GRACE, work).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Timeout(timeout)),
        }
    }

    async fn run_query_inner(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        let mut tx = self.pool.begin().await.map_err(map(BACKEND))?;
        let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut setup = vec![
            "SET TRANSACTION READ ONLY".to_owned(),
            format!("SET LOCAL statement_timeout = {millis}"),
            "SET LOCAL search_path TO datasets".to_owned(),
        ];
        if self.reader_role {
            setup.push("SET LOCAL ROLE agentmesh_datasets_reader".to_owned());
        }
        for statement in setup {
            tx.execute(statement.as_str()).await.map_err(map(BACKEND))?;
        }

        let fail = |e| classify_query(BACKEND, timeout, e);
        let mut columns: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        let mut truncated = false;
        {
            // Not cached: a replaced table may change the statement's result type.
            let mut stream = sqlx::query(sql).persistent(false).fetch(&mut *tx);
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
                let described = (&mut *tx).describe(sql).await.map_err(fail)?;
                described
                    .columns()
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect()
            }
        };
        tx.rollback().await.map_err(map(BACKEND))?;
        Ok(QueryResult {
            columns,
            rows,
            truncated,
        })
    }
}

fn create_error(err: sqlx::Error) -> StateError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P07") => {
            StateError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("42")) => {
            StateError::Invalid(db.message().to_owned())
        }
        _ => crate::sqlerr::classify(BACKEND, err),
    }
}

async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    qualified: &str,
    table: &TableData,
    rows: &[Vec<Cell>],
) -> Result<()> {
    let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let head = format!("INSERT INTO {qualified} ({}) ", names.join(", "));
    for batch in rows.chunks(batch_rows(names.len())) {
        let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(&head);
        builder.push_values(batch, |mut b, row| {
            for cell in row {
                match cell {
                    Cell::Int(v) => b.push_bind(*v),
                    // Sent as text and cast by the server: exact at any scale.
                    Cell::Decimal(v) => b
                        .push("CAST(")
                        .push_bind_unseparated(v.clone())
                        .push_unseparated(" AS NUMERIC)"),
                    Cell::Real(v) => b.push_bind(*v),
                    Cell::Date(v) => b.push_bind(*v),
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
    Ok(())
}

fn decode_row(row: &PgRow) -> Vec<Value> {
    (0..row.columns().len())
        .map(|i| decode_cell(row, i))
        .collect()
}

/// One value as JSON by its Postgres type; types without a JSON form are
/// reported as a string that says to cast them.
fn decode_cell(row: &PgRow, i: usize) -> Value {
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let type_name = raw.type_info().name().to_owned();
    let decoded = match type_name.as_str() {
        "BOOL" => row.try_get::<bool, _>(i).map(Value::Bool),
        "INT2" => row.try_get::<i16, _>(i).map(Value::from),
        "INT4" => row.try_get::<i32, _>(i).map(Value::from),
        "INT8" => row.try_get::<i64, _>(i).map(Value::from),
        "FLOAT4" => row.try_get::<f32, _>(i).map(|v| float_json(f64::from(v))),
        "FLOAT8" => row.try_get::<f64, _>(i).map(float_json),
        "NUMERIC" => return numeric_value(raw.format(), raw.as_bytes().ok()),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" => {
            row.try_get::<String, _>(i).map(Value::String)
        }
        "DATE" => row
            .try_get::<chrono::NaiveDate, _>(i)
            .map(|d| Value::String(d.to_string())),
        "TIME" => row
            .try_get::<chrono::NaiveTime, _>(i)
            .map(|t| Value::String(t.to_string())),
        "TIMESTAMP" => row
            .try_get::<chrono::NaiveDateTime, _>(i)
            .map(|t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
        "TIMESTAMPTZ" => row
            .try_get::<chrono::DateTime<chrono::Utc>, _>(i)
            .map(|t| Value::String(t.to_rfc3339())),
        "JSON" | "JSONB" => row.try_get::<Json<Value>, _>(i).map(|j| j.0),
        _ => return Value::String(format!("<{type_name}: cast to text to read>")),
    };
    decoded.unwrap_or(Value::Null)
}

fn numeric_value(format: PgValueFormat, bytes: Option<&[u8]>) -> Value {
    let text = match (format, bytes) {
        (PgValueFormat::Binary, Some(b)) => numeric_text(b),
        (PgValueFormat::Text, Some(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
        (_, None) => None,
    };
    text.map(|t| decimal_json(&t)).unwrap_or(Value::Null)
}

/// Decimal text of a binary NUMERIC: base-10000 digit groups with a weight
/// (exponent of the first group), a sign word and a display scale.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Option<_>>()?;
    let group = |exp: i64| -> u16 {
        usize::try_from(weight - exp)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };

    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    text.push_str(&group(weight.max(0)).to_string());
    for exp in (0..weight).rev() {
        text.push_str(&format!("{:04}", group(exp)));
    }
    if dscale > 0 {
        let mut frac = String::new();
        for k in 1..=dscale.div_ceil(4) {
            frac.push_str(&format!("{:04}", group(-(k as i64))));
        }
        frac.truncate(dscale);
        text.push('.');
        text.push_str(&frac);
    }
    Some(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::numeric_text;

    fn encode(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }

    #[test]
    fn numeric_binary_to_text() {
        // 1265793.04 = 126|5793|.0400
        let b = encode(3, 1, 0, 2, &[126, 5793, 400]);
        assert_eq!(numeric_text(&b).as_deref(), Some("1265793.04"));
        // -0.00012 = .0001|2000, weight -1
        let b = encode(2, -1, 0x4000, 5, &[1, 2000]);
        assert_eq!(numeric_text(&b).as_deref(), Some("-0.00012"));
        // 0 with scale 2
        assert_eq!(
            numeric_text(&encode(0, 0, 0, 2, &[])).as_deref(),
            Some("0.00")
        );
        // 10000 = 1|0000 with trailing group omitted
        assert_eq!(
            numeric_text(&encode(1, 1, 0, 0, &[1])).as_deref(),
            Some("10000")
        );
    }
}
