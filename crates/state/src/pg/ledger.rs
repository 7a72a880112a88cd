//! Usage ledger and idempotency records.

use super::{PgDatabase, BACKEND};
use crate::sqlerr::map;
use crate::STALE_CLAIM_SECS;
use crate::{IdempotencyClaim, Result, StateError, StoredResponse, UsageRecord, UsageSummary};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;

impl PgDatabase {
    /// Inserts the ledger rows in one transaction (one commit for the whole batch) and,
    /// for each row that is new, adds its cost to the key's spend. A row whose request id
    /// is already recorded is skipped, so a retried batch is never counted twice.
    pub(super) async fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map(BACKEND))?;
        for u in batch {
            let inserted = sqlx::query(
                "INSERT INTO usage (request_id, key_id, agent, model, prompt_tokens, \
                 completion_tokens, cost_usd, latency_ms, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(&u.request_id)
            .bind(&u.key_id)
            .bind(&u.agent)
            .bind(&u.model)
            .bind(i64::from(u.prompt_tokens))
            .bind(i64::from(u.completion_tokens))
            .bind(u.cost_usd)
            .bind(i64::from(u.latency_ms))
            .bind(i32::from(u.status))
            .bind(u.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
                > 0;
            if inserted && u.cost_usd != 0.0 {
                sqlx::query("UPDATE api_keys SET spent_usd = spent_usd + $2 WHERE id = $1")
                    .bind(&u.key_id)
                    .bind(u.cost_usd)
                    .execute(&mut *tx)
                    .await
                    .map_err(map(BACKEND))?;
            }
        }
        tx.commit().await.map_err(map(BACKEND))
    }

    /// Per key and UTC day, optionally of one key and within `[from, until)`.
    /// Each filter is a plain predicate (no `$1 IS NULL OR …`), so that even a
    /// generic plan of the prepared statement can use the ledger's indexes.
    pub(super) async fn summary(
        &self,
        key_id: Option<&str>,
        range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<Vec<UsageSummary>> {
        let sql = summary_sql(key_id.is_some(), range.is_some());
        let mut query = sqlx::query(&sql);
        if let Some(key_id) = key_id {
            query = query.bind(key_id);
        }
        if let Some((from, until)) = range {
            query = query.bind(from).bind(until);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map(BACKEND))?;
        rows.iter()
            .map(|r| {
                let count = |col: &str| -> Result<u64, sqlx::Error> {
                    Ok(u64::try_from(r.try_get::<i64, _>(col)?).unwrap_or(0))
                };
                Ok(UsageSummary {
                    key_id: r.try_get("key_id")?,
                    day: r.try_get("day")?,
                    requests: count("requests")?,
                    prompt_tokens: count("prompt")?,
                    completion_tokens: count("completion")?,
                    cost_usd: r.try_get("cost")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }

    pub(super) async fn claim(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim> {
        // A release may delete the row between our insert and our read: try twice.
        for _ in 0..2 {
            let claimed = sqlx::query(
                "INSERT INTO idempotency (key_id, key, status) VALUES ($1, $2, 'in_progress') \
                 ON CONFLICT (key_id, key) DO UPDATE SET created_at = now() \
                 WHERE idempotency.status = 'in_progress' \
                 AND idempotency.created_at < now() - make_interval(secs => $3)",
            )
            .bind(key_id)
            .bind(key)
            .bind(STALE_CLAIM_SECS as f64)
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
                > 0;
            if claimed {
                return Ok(IdempotencyClaim::Claimed);
            }
            let row = sqlx::query(
                "SELECT status, response FROM idempotency WHERE key_id = $1 AND key = $2",
            )
            .bind(key_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
            if let Some(row) = row {
                let status: String = row.try_get("status").map_err(map(BACKEND))?;
                let response: Option<Json<StoredResponse>> =
                    row.try_get("response").map_err(map(BACKEND))?;
                return Ok(match (status.as_str(), response) {
                    ("done", Some(r)) => IdempotencyClaim::Done(r.0),
                    _ => IdempotencyClaim::InProgress,
                });
            }
        }
        Err(StateError::Conflict(format!(
            "idempotency key {key} is contended"
        )))
    }

    pub(super) async fn complete(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO idempotency (key_id, key, status, response) VALUES ($1, $2, 'done', $3) \
             ON CONFLICT (key_id, key) DO UPDATE SET status = 'done', response = $3",
        )
        .bind(key_id)
        .bind(key)
        .bind(Json(response))
        .execute(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(())
    }
}

/// The ledger summary statement: parameters are the key id (when `by_key`),
/// then the range's start and end (when `ranged`).
pub(crate) fn summary_sql(by_key: bool, ranged: bool) -> String {
    let mut filters = Vec::new();
    if by_key {
        filters.push("key_id = $1".to_owned());
    }
    if ranged {
        let first = if by_key { 2 } else { 1 };
        filters.push(format!(
            "created_at >= ${first} AND created_at < ${}",
            first + 1
        ));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    format!(
        "SELECT key_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, \
         COUNT(*) AS requests, SUM(prompt_tokens)::int8 AS prompt, \
         SUM(completion_tokens)::int8 AS completion, SUM(cost_usd)::float8 AS cost \
         FROM usage {filter} GROUP BY key_id, day ORDER BY day, key_id"
    )
}
