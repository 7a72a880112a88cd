//! SQLite backend of [`Database`]: the embedded mode's single-file store.
//!
//! Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is
//! time order. Writing transactions start with `BEGIN IMMEDIATE`, taking the
//! write lock up front instead of failing on a read-to-write upgrade.

mod datasets;
mod documents;
mod ledger;

use crate::sqlerr::map;
use crate::{
    ApiKey, ChunkVector, ChunkVectors, Conversation, Database, DatasetInfo, DocumentInfo,
    IdempotencyClaim, NewApiKey, NewChunk, NewDocument, NewMessage, QueryResult, Result,
    ScoredChunk, StateError, StoredMessage, StoredResponse, TableData, UsageRecord, UsageSummary,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;
use std::str::FromStr;
use std::time::Duration;

const BACKEND: &str = "sqlite";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub(crate) struct SqliteDatabase {
    pool: SqlitePool,
    datasets: datasets::DatasetStore,
}

/// Fixed-width UTC text: `2025-01-02T03:04:05.123456Z`.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(format!("bad timestamp {text:?}: {e}").into()))
}

fn get_ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    parse_ts(&row.try_get::<String, _>(col)?)
}

fn get_opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    row.try_get::<Option<String>, _>(col)?
        .as_deref()
        .map(parse_ts)
        .transpose()
}

/// Pool settings shared by the main and the datasets databases.
pub(crate) fn pool_options(in_memory: bool, max: u32) -> SqlitePoolOptions {
    let options = SqlitePoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10));
    if in_memory {
        // A shared in-memory database lives only while a connection is open.
        options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        options
    }
}

pub(crate) fn is_memory_url(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl SqliteDatabase {
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StateError::Invalid(format!("invalid sqlite url: {e}")))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = is_memory_url(url);
        let options = if in_memory {
            options
        } else {
            create_parent_dir(options.get_filename())?;
            options.journal_mode(SqliteJournalMode::Wal)
        };
        let main_file = (!in_memory).then(|| options.get_filename().to_path_buf());
        let pool = pool_options(in_memory, 8)
            .connect_with(options)
            .await
            .map_err(|e| StateError::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            })?;

        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => crate::sqlerr::classify(BACKEND, e),
            other => StateError::Internal(format!("sqlite migrations: {other}")),
        })?;
        let datasets = datasets::DatasetStore::open(main_file.as_deref()).await?;
        Ok(Self { pool, datasets })
    }

    async fn key_where(&self, clause: &str, value: &str) -> Result<Option<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {clause} = ?1");
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

    async fn key_update(&self, id: &str, set: &str, binds: &[String]) -> Result<ApiKey> {
        let sql = format!("UPDATE api_keys SET {set} WHERE id = ?1 RETURNING {KEY_COLUMNS}");
        let mut query = sqlx::query(&sql).bind(id);
        for b in binds {
            query = query.bind(b);
        }
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        let row = row.ok_or_else(|| StateError::NotFound(format!("api key {id}")))?;
        key_from_row(&row).map_err(map(BACKEND))
    }

    async fn append(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        sqlx::query(
            "INSERT INTO conversations (id, key_id, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key_id)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(map(BACKEND))?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map(BACKEND))?;

        const BATCH: usize = 500;
        for (n, chunk) in messages.chunks(BATCH).enumerate() {
            let start = next + i64::try_from(n * BATCH).unwrap_or(i64::MAX);
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO messages (conversation_id, position, role, content, created_at) ",
            );
            builder.push_values(chunk.iter().zip(start..), |mut b, (m, pos)| {
                b.push_bind(id)
                    .push_bind(pos)
                    .push_bind(&m.role)
                    .push_bind(&m.content)
                    .push_bind(&now);
            });
            builder
                .build()
                .execute(&mut *tx)
                .await
                .map_err(map(BACKEND))?;
        }
        tx.commit().await.map_err(map(BACKEND))
    }
}

fn create_parent_dir(file: &std::path::Path) -> Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(|e| {
            StateError::Invalid(format!("cannot create directory {}: {e}", dir.display()))
        }),
        _ => Ok(()),
    }
}

const KEY_COLUMNS: &str = "id, name, prefix, scopes, rpm_limit, tpm_limit, budget_usd, \
    spent_usd, expires_at, revoked_at, created_at, last_used_at";

fn opt_u32(row: &SqliteRow, col: &str) -> Result<Option<u32>, sqlx::Error> {
    let v: Option<i64> = row.try_get(col)?;
    Ok(v.and_then(|v| u32::try_from(v).ok()))
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKey, sqlx::Error> {
    let scopes: sqlx::types::Json<Vec<String>> = row.try_get("scopes")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: scopes.0,
        rpm_limit: opt_u32(row, "rpm_limit")?,
        tpm_limit: opt_u32(row, "tpm_limit")?,
        budget_usd: row.try_get("budget_usd")?,
        spent_usd: row.try_get("spent_usd")?,
        expires_at: get_opt_ts(row, "expires_at")?,
        revoked_at: get_opt_ts(row, "revoked_at")?,
        created_at: get_ts(row, "created_at")?,
        last_used_at: get_opt_ts(row, "last_used_at")?,
    })
}

#[async_trait]
impl Database for SqliteDatabase {
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
             budget_usd, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             RETURNING {KEY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(&key.secret_hash)
            .bind(sqlx::types::Json(&key.scopes))
            .bind(key.rpm_limit.map(i64::from))
            .bind(key.tpm_limit.map(i64::from))
            .bind(key.budget_usd)
            .bind(key.expires_at.map(ts))
            .bind(ts(Utc::now()))
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
        let binds = [secret_hash.to_owned(), prefix.to_owned()];
        self.key_update(id, "secret_hash = ?2, prefix = ?3", &binds)
            .await
    }

    async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        let binds = [ts(Utc::now())];
        self.key_update(id, "revoked_at = COALESCE(revoked_at, ?2)", &binds)
            .await
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")
            .bind(id)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        Ok(())
    }

    async fn has_admin_key(&self) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_keys k WHERE revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > ?1) \
             AND EXISTS (SELECT 1 FROM json_each(k.scopes) WHERE value = 'admin'))",
        )
        .bind(ts(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(map(BACKEND))
    }

    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let head = sqlx::query("SELECT key_id, created_at FROM conversations WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map(BACKEND))?;
        let Some(head) = head else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT position, role, content, created_at FROM messages \
             WHERE conversation_id = ?1 ORDER BY position",
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
                    created_at: get_ts(r, "created_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map(BACKEND))?;
        Ok(Some(Conversation {
            id: id.to_owned(),
            key_id: head.try_get("key_id").map_err(map(BACKEND))?,
            created_at: get_ts(&head, "created_at").map_err(map(BACKEND))?,
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
        let done = sqlx::query("DELETE FROM conversations WHERE id = ?1")
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
        self.delete_doc(id).await
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
        self.datasets_info(None).await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        Ok(self.datasets_info(Some(name)).await?.into_iter().next())
    }

    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        self.datasets.query(sql, max_rows, timeout).await
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
            "DELETE FROM idempotency WHERE key_id = ?1 AND key = ?2 AND status = 'in_progress'",
        )
        .bind(key_id)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(())
    }
}
