//! Usage ledger and idempotency records.

use super::{ts, SqliteDatabase, BACKEND};
use crate::sqlerr::map;
use crate::STALE_CLAIM_SECS;
use crate::{IdempotencyClaim, Result, StateError, StoredResponse, UsageRecord, UsageSummary};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;

impl SqliteDatabase {
    /// Inserts the ledger rows in one transaction (one commit for the whole batch) and,
    /// for each row that is new, adds its cost to the key's spend. A row whose request id
    /// is already recorded is skipped, so a retried batch is never counted twice.
    pub(super) async fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        for u in batch {
            let inserted = sqlx::query(
                "INSERT INTO usage (request_id, key_id, agent, model, prompt_tokens, \
                 completion_tokens, cost_usd, latency_ms, status, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
            )
            .bind(&u.request_id)
            .bind(&u.key_id)
            .bind(&u.agent)
            .bind(&u.model)
            .bind(i64::from(u.prompt_tokens))
            .bind(i64::from(u.completion_tokens))
            .bind(u.cost_usd)
            .bind(i64::from(u.latency_ms))
            .bind(i64::from(u.status))
            .bind(ts(u.created_at))
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
                > 0;
            if inserted && u.cost_usd != 0.0 {
                sqlx::query("UPDATE api_keys SET spent_usd = spent_usd + ?2 WHERE id = ?1")
                    .bind(&u.key_id)
                    .bind(u.cost_usd)
                    .execute(&mut *tx)
                    .await
                    .map_err(map(BACKEND))?;
            }
        }
        tx.commit().await.map_err(map(BACKEND))
    }

    /// Per key and UTC day, optionally of one key and within `[from, until)`
    /// (timestamps are fixed-width text, so ranges compare as strings).
    pub(super) async fn summary(
        &self,
        key_id: Option<&str>,
        range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<Vec<UsageSummary>> {
        let mut filters = Vec::new();
        if key_id.is_some() {
            filters.push("key_id = ?");
        }
        if range.is_some() {
            filters.push("created_at >= ? AND created_at < ?");
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let sql = format!(
            "SELECT key_id, substr(created_at, 1, 10) AS day, COUNT(*) AS requests, \
             SUM(prompt_tokens) AS prompt, SUM(completion_tokens) AS completion, \
             TOTAL(cost_usd) AS cost FROM usage {filter} \
             GROUP BY key_id, day ORDER BY day, key_id"
        );
        let mut query = sqlx::query(&sql);
        if let Some(key_id) = key_id {
            query = query.bind(key_id);
        }
        if let Some((from, until)) = range {
            query = query.bind(ts(from)).bind(ts(until));
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
        let now = Utc::now();
        let stale_before = ts(now - chrono::Duration::seconds(STALE_CLAIM_SECS));
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency (key_id, key, status, created_at) \
             VALUES (?1, ?2, 'in_progress', ?3) \
             ON CONFLICT (key_id, key) DO UPDATE SET created_at = excluded.created_at \
             WHERE status = 'in_progress' AND created_at < ?4",
        )
        .bind(key_id)
        .bind(key)
        .bind(ts(now))
        .bind(stale_before)
        .execute(&mut *tx)
        .await
        .map_err(map(BACKEND))?
        .rows_affected()
            > 0;
        let outcome = if claimed {
            IdempotencyClaim::Claimed
        } else {
            let row = sqlx::query(
                "SELECT status, response FROM idempotency WHERE key_id = ?1 AND key = ?2",
            )
            .bind(key_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .ok_or_else(|| StateError::Internal("idempotency row vanished".into()))?;
            let status: String = row.try_get("status").map_err(map(BACKEND))?;
            let response: Option<Json<StoredResponse>> =
                row.try_get("response").map_err(map(BACKEND))?;
            match (status.as_str(), response) {
                ("done", Some(r)) => IdempotencyClaim::Done(r.0),
                _ => IdempotencyClaim::InProgress,
            }
        };
        tx.commit().await.map_err(map(BACKEND))?;
        Ok(outcome)
    }

    pub(super) async fn complete(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO idempotency (key_id, key, status, response, created_at) \
             VALUES (?1, ?2, 'done', ?3, ?4) \
             ON CONFLICT (key_id, key) DO UPDATE SET status = 'done', response = excluded.response",
        )
        .bind(key_id)
        .bind(key)
        .bind(Json(response))
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(())
    }
}
