//! A [`Database`] that is not connected yet: what a replica serves while the
//! database it was configured with could not be reached at start.
//!
//! Every call answers [`StateError::Unavailable`] (the gateway's 503, never a
//! 401) at once, while a background task retries connecting and migrating
//! with capped backoff. Once that succeeds every call goes to the real
//! backend: the process recovers without a restart.

use crate::{
    ApiKey, ChunkVector, ChunkVectors, Conversation, Database, DatasetInfo, DocumentInfo,
    IdempotencyClaim, NewApiKey, NewChunk, NewDocument, NewMessage, PoolSettings, QueryResult,
    Result, ScoredChunk, StateError, StoredResponse, TableData, UsageRecord, UsageSummary,
};
use async_trait::async_trait;
use chrono::NaiveDate;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// First pause between connection attempts; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slot {
    ready: OnceLock<Arc<dyn Database>>,
    last_error: Mutex<String>,
}

pub(crate) struct DeferredDatabase {
    backend: &'static str,
    slot: Arc<Slot>,
}

impl DeferredDatabase {
    /// Starts retrying `url` in the background; `first_error` is why the
    /// first attempt failed. The task ends when connected or when this value
    /// is dropped.
    pub(crate) fn spawn(
        url: &str,
        backend: &'static str,
        pool: &PoolSettings,
        first_error: String,
    ) -> Self {
        let slot = Arc::new(Slot {
            ready: OnceLock::new(),
            last_error: Mutex::new(first_error),
        });
        tokio::spawn(retry(url.to_owned(), pool.clone(), Arc::downgrade(&slot)));
        Self { backend, slot }
    }

    fn db(&self) -> Result<&Arc<dyn Database>> {
        if let Some(db) = self.slot.ready.get() {
            return Ok(db);
        }
        let last = self
            .slot
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Err(StateError::Unavailable {
            backend: self.backend,
            message: format!("not connected since start: {last}"),
        })
    }
}

async fn retry(url: String, pool: PoolSettings, slot: Weak<Slot>) {
    let mut pause = FIRST_RETRY;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
        if slot.strong_count() == 0 {
            return;
        }
        let opened = crate::open_database(&url, &pool).await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        match opened {
            Ok(db) => {
                tracing::info!(
                    database = db.backend(),
                    "database connected, leaving degraded start"
                );
                let _ = slot.ready.set(db);
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "database still unreachable");
                if let Ok(mut last) = slot.last_error.lock() {
                    *last = error.to_string();
                }
            }
        }
    }
}

#[async_trait]
impl Database for DeferredDatabase {
    fn backend(&self) -> &'static str {
        self.backend
    }

    async fn ping(&self) -> Result<()> {
        self.db()?.ping().await
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey> {
        self.db()?.create_key(key).await
    }

    async fn find_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        self.db()?.find_key_by_hash(secret_hash).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.db()?.get_key(id).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.db()?.list_keys().await
    }

    async fn rotate_key(&self, id: &str, secret_hash: &str, prefix: &str) -> Result<ApiKey> {
        self.db()?.rotate_key(id, secret_hash, prefix).await
    }

    async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        self.db()?.revoke_key(id).await
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        self.db()?.touch_key(id).await
    }

    async fn has_admin_key(&self) -> Result<bool> {
        self.db()?.has_admin_key().await
    }

    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        self.db()?.load_conversation(id).await
    }

    async fn append_messages(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        self.db()?.append_messages(id, key_id, messages).await
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool> {
        self.db()?.delete_conversation(id).await
    }

    async fn upsert_document(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool> {
        self.db()?.upsert_document(doc, chunks).await
    }

    async fn delete_document(&self, id: &str) -> Result<bool> {
        self.db()?.delete_document(id).await
    }

    async fn list_documents(&self) -> Result<Vec<DocumentInfo>> {
        self.db()?.list_documents().await
    }

    async fn search_chunks(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        self.db()?.search_chunks(query, top_k).await
    }

    async fn upsert_document_with_vectors(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: ChunkVectors,
    ) -> Result<bool> {
        self.db()?
            .upsert_document_with_vectors(doc, chunks, vectors)
            .await
    }

    async fn chunk_vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        self.db()?.chunk_vectors(model, limit).await
    }

    async fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        self.db()?.chunks_by_id(ids).await
    }

    async fn create_dataset(&self, table: &TableData) -> Result<DatasetInfo> {
        self.db()?.create_dataset(table).await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>> {
        self.db()?.list_datasets().await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        self.db()?.get_dataset(name).await
    }

    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        self.db()?.query_dataset(sql, max_rows, timeout).await
    }

    async fn record_usage(&self, usage: &UsageRecord) -> Result<()> {
        self.db()?.record_usage(usage).await
    }

    async fn record_usage_batch(&self, batch: &[UsageRecord]) -> Result<()> {
        self.db()?.record_usage_batch(batch).await
    }

    async fn usage_summary(&self, key_id: Option<&str>) -> Result<Vec<UsageSummary>> {
        self.db()?.usage_summary(key_id).await
    }

    async fn usage_between(
        &self,
        key_id: Option<&str>,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<UsageSummary>> {
        self.db()?.usage_between(key_id, from, until).await
    }

    async fn claim_idempotency(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim> {
        self.db()?.claim_idempotency(key_id, key).await
    }

    async fn complete_idempotency(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.db()?.complete_idempotency(key_id, key, response).await
    }

    async fn release_idempotency(&self, key_id: &str, key: &str) -> Result<()> {
        self.db()?.release_idempotency(key_id, key).await
    }
}
