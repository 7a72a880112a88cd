//! Postgres backend of [`Database`]: the durable store of a cluster.

mod datasets;
mod documents;
mod ledger;

pub(crate) use ledger::summary_sql;

use crate::sqlerr::map;
use crate::{
    ApiKey, ChunkVector, ChunkVectors, Conversation, Database, DatasetInfo, DocumentInfo,
    IdempotencyClaim, NewApiKey, NewChunk, NewDocument, NewMessage, PoolSettings, QueryResult,
    Result, ScoredChunk, StateError, StoredMessage, StoredResponse, TableData, UsageRecord,
    UsageSummary,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};
use std::str::FromStr;
use std::time::Duration;

const BACKEND: &str = "postgres";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub(crate) struct PgDatabase {
    pool: PgPool,
    /// True when `agentmesh_datasets_reader` exists and the login role may assume it.
    reader_role: bool,
}

impl PgDatabase {
    pub(crate) async fn connect(url: &str, settings: &PoolSettings) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StateError::Invalid(format!("invalid postgres url: {e}")))?
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout)
            .max_lifetime(settings.max_lifetime)
            .connect_with(options)
            .await
            .map_err(|e| StateError::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            })?;

        MIGRATOR.run(&pool).await.map_err(migrate_error)?;

        let reader_role = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentmesh_datasets_reader') \
             AND pg_has_role(current_user, 'agentmesh_datasets_reader', 'MEMBER')",
        )
        .fetch_one(&pool)
        .await
        .map_err(map(BACKEND))?;
        if !reader_role {
            tracing::warn!("dataset reader role unusable; dataset queries rely on search_path");
        }
        Ok(Self { pool, reader_role })
    }
}

fn migrate_error(err: sqlx::migrate::MigrateError) -> StateError {
    match err {
        sqlx::migrate::MigrateError::Execute(e) => crate::sqlerr::classify(BACKEND, e),
        other => StateError::Internal(format!("postgres migrations: {other}")),
    }
}

fn opt_u32(row: &PgRow, col: &str) -> Result<Option<u32>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u32::try_from(v).ok()))
}

fn key_from_row(row: &PgRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: row.try_get("scopes")?,
        rpm_limit: opt_u32(row, "rpm_limit")?,
        tpm_limit: opt_u32(row, "tpm_limit")?,
        budget_usd: row.try_get("budget_usd")?,
        spent_usd: row.try_get("spent_usd")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

const KEY_COLUMNS: &str = "id, name, prefix, scopes, rpm_limit, tpm_limit, budget_usd, \
    spent_usd, expires_at, revoked_at, created_at, last_used_at";

impl PgDatabase {
    async fn key_where(&self, clause: &str, value: &str) -> Result<Option<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {clause} = $1");
        let row = sqlx::query(&sql)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        row.as_ref()
            .map(key_from_row)
            .transpose()
            .map_err(map(BACKEND))
    }

    async fn key_update(&self, id: &str, set: &str, binds: &[&str]) -> Result<ApiKey> {
        let sql = format!("UPDATE api_keys SET {set} WHERE id = $1 RETURNING {KEY_COLUMNS}");
        let mut query = sqlx::query(&sql).bind(id);
        for b in binds {
            query = query.bind(*b);
        }
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        let row = row.ok_or_else(|| StateError::NotFound(format!("api key {id}")))?;
        key_from_row(&row).map_err(map(BACKEND))
    }

    async fn append(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(map(BACKEND))?;
        sqlx::query(
            "INSERT INTO conversations (id, key_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(map(BACKEND))?;

        // The row lock serialises concurrent appends to one conversation.
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map(BACKEND))?;

        let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO messages (conversation_id, position, role, content) ",
        );
        builder.push_values(messages.iter().zip(next..), |mut b, (m, pos)| {
            b.push_bind(id)
                .push_bind(pos)
                .push_bind(&m.role)
                .push_bind(&m.content);
        });
        builder
            .build()
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;
        tx.commit().await.map_err(map(BACKEND))
    }
}

#[async_trait]
impl Database for PgDatabase {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        Ok(())
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey> {
        let sql = format!(
            "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, rpm_limit, tpm_limit, \
             budget_usd, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING {KEY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(&key.secret_hash)
            .bind(&key.scopes)
            .bind(key.rpm_limit.map(i64::from))
            .bind(key.tpm_limit.map(i64::from))
            .bind(key.budget_usd)
            .bind(key.expires_at)
            .fetch_one(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        key_from_row(&row).map_err(map(BACKEND))
    }

    async fn find_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        self.key_where("secret_hash", secret_hash).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.key_where("id", id).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        rows.iter()
            .map(key_from_row)
            .collect::<Result<_, _>>()
            .map_err(map(BACKEND))
    }

    async fn rotate_key(&self, id: &str, secret_hash: &str, prefix: &str) -> Result<ApiKey> {
        self.key_update(id, "secret_hash = $2, prefix = $3", &[secret_hash, prefix])
            .await
    }

    async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        self.key_update(id, "revoked_at = COALESCE(revoked_at, now())", &[])
            .await
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        Ok(())
    }

    async fn has_admin_key(&self) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE 'admin' = ANY (scopes) \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map(BACKEND))
    }

    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let head = sqlx::query("SELECT key_id, created_at FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        let Some(head) = head else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT position, role, content, created_at FROM messages \
             WHERE conversation_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        let messages = rows
            .iter()
            .map(|r| {
                Ok(StoredMessage {
                    position: r.try_get("position")?,
                    role: r.try_get("role")?,
                    content: r.try_get("content")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map(BACKEND))?;
        Ok(Some(Conversation {
            id: id.to_owned(),
            key_id: head.try_get("key_id").map_err(map(BACKEND))?,
            created_at: head.try_get("created_at").map_err(map(BACKEND))?,
            messages,
        }))
    }

    async fn append_messages(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.append(id, key_id, messages).await
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM conversations WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        Ok(done.rows_affected() > 0)
    }

    async fn upsert_document(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool> {
        self.upsert_doc(doc, chunks).await
    }

    async fn delete_document(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_documents(&self) -> Result<Vec<DocumentInfo>> {
        self.list_docs().await
    }

    async fn search_chunks(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        self.search(query, top_k).await
    }

    async fn upsert_document_with_vectors(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: ChunkVectors,
    ) -> Result<bool> {
        vectors.check(chunks.len())?;
        self.upsert_doc_with(doc, chunks, Some(vectors)).await
    }

    async fn chunk_vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        self.vectors(model, limit).await
    }

    async fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        self.chunks_with_ids(ids).await
    }

    async fn create_dataset(&self, table: &TableData) -> Result<DatasetInfo> {
        self.create_table(table).await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>> {
        self.datasets(None).await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        Ok(self.datasets(Some(name)).await?.into_iter().next())
    }

    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        self.run_query(sql, max_rows, timeout).await
    }

    async fn record_usage(&self, usage: &UsageRecord) -> Result<()> {
        self.insert_usage(std::slice::from_ref(usage)).await
    }

    async fn record_usage_batch(&self, batch: &[UsageRecord]) -> Result<()> {
        self.insert_usage(batch).await
    }

    async fn usage_summary(&self, key_id: Option<&str>) -> Result<Vec<UsageSummary>> {
        self.summary(key_id, None).await
    }

    async fn usage_between(
        &self,
        key_id: Option<&str>,
        from: chrono::NaiveDate,
        until: chrono::NaiveDate,
    ) -> Result<Vec<UsageSummary>> {
        let range = (crate::day_start(from), crate::day_start(until));
        self.summary(key_id, Some(range)).await
    }

    async fn claim_idempotency(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim> {
        self.claim(key_id, key).await
    }

    async fn complete_idempotency(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.complete(key_id, key, response).await
    }

    async fn release_idempotency(&self, key_id: &str, key: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE key_id = $1 AND key = $2 AND status = 'in_progress'",
        )
        .bind(key_id)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(())
    }
}
