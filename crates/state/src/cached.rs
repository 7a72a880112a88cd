//! A [`Database`] with the conversation cache of [`Hot`] in front of it.
//!
//! Reads go to the cache first and fill it on a miss; appends and deletes go
//! to the database, then drop the cached copy and bump its version, so that a
//! load that read the database before the change cannot store it back. Every
//! other method goes straight to the database.

use crate::{
    ApiKey, CachedConversation, ChunkVector, ChunkVectors, Conversation, Database, DatasetInfo,
    DocumentInfo, Hot, IdempotencyClaim, NewApiKey, NewChunk, NewDocument, NewMessage, QueryResult,
    Result, ScoredChunk, StoredResponse, TableData, UsageRecord, UsageSummary,
};
use async_trait::async_trait;
use chrono::NaiveDate;
use std::sync::Arc;
use std::time::Duration;

/// How long a conversation stays cached without being read back from the
/// database: short, because an invalidation lost in a Redis outage is only
/// repaired by this expiry.
pub const CONVERSATION_CACHE_TTL: Duration = Duration::from_secs(60);

pub(crate) struct CachedDatabase {
    inner: Arc<dyn Database>,
    hot: Arc<dyn Hot>,
}

impl CachedDatabase {
    pub(crate) fn new(inner: Arc<dyn Database>, hot: Arc<dyn Hot>) -> Self {
        Self { inner, hot }
    }

    async fn invalidate(&self, id: &str) {
        if let Err(error) = self.hot.invalidate_conversation(id).await {
            tracing::warn!(conversation_id = id, %error, "conversation cache invalidation failed");
        }
    }
}

#[async_trait]
impl Database for CachedDatabase {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey> {
        self.inner.create_key(key).await
    }

    async fn find_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        self.inner.find_key_by_hash(secret_hash).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.inner.get_key(id).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.inner.list_keys().await
    }

    async fn rotate_key(&self, id: &str, secret_hash: &str, prefix: &str) -> Result<ApiKey> {
        self.inner.rotate_key(id, secret_hash, prefix).await
    }

    async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        self.inner.revoke_key(id).await
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        self.inner.touch_key(id).await
    }

    async fn has_admin_key(&self) -> Result<bool> {
        self.inner.has_admin_key().await
    }

    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let version = match self.hot.cached_conversation(id).await {
            Ok(CachedConversation::Hit(conversation)) => return Ok(Some(conversation)),
            Ok(CachedConversation::Miss { version }) => Some(version),
            Err(error) => {
                tracing::debug!(conversation_id = id, %error, "conversation cache read failed");
                None
            }
        };
        let loaded = self.inner.load_conversation(id).await?;
        if let (Some(conversation), Some(version)) = (&loaded, version) {
            let stored = self
                .hot
                .cache_conversation(conversation, version, CONVERSATION_CACHE_TTL)
                .await;
            if let Err(error) = stored {
                tracing::debug!(conversation_id = id, %error, "conversation cache store failed");
            }
        }
        Ok(loaded)
    }

    async fn append_messages(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        let appended = self.inner.append_messages(id, key_id, messages).await;
        // Even after an error: the commit may have landed before the connection failed.
        if !messages.is_empty() {
            self.invalidate(id).await;
        }
        appended
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool> {
        let deleted = self.inner.delete_conversation(id).await;
        self.invalidate(id).await;
        deleted
    }

    async fn upsert_document(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool> {
        self.inner.upsert_document(doc, chunks).await
    }

    async fn delete_document(&self, id: &str) -> Result<bool> {
        self.inner.delete_document(id).await
    }

    async fn list_documents(&self) -> Result<Vec<DocumentInfo>> {
        self.inner.list_documents().await
    }

    async fn search_chunks(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        self.inner.search_chunks(query, top_k).await
    }

    async fn upsert_document_with_vectors(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: ChunkVectors,
    ) -> Result<bool> {
        self.inner
            .upsert_document_with_vectors(doc, chunks, vectors)
            .await
    }

    async fn chunk_vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        self.inner.chunk_vectors(model, limit).await
    }

    async fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        self.inner.chunks_by_id(ids).await
    }

    async fn create_dataset(&self, table: &TableData) -> Result<DatasetInfo> {
        self.inner.create_dataset(table).await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>> {
        self.inner.list_datasets().await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        self.inner.get_dataset(name).await
    }

    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        self.inner.query_dataset(sql, max_rows, timeout).await
    }

    async fn record_usage(&self, usage: &UsageRecord) -> Result<()> {
        self.inner.record_usage(usage).await
    }

    async fn record_usage_batch(&self, batch: &[UsageRecord]) -> Result<()> {
        self.inner.record_usage_batch(batch).await
    }

    async fn usage_summary(&self, key_id: Option<&str>) -> Result<Vec<UsageSummary>> {
        self.inner.usage_summary(key_id).await
    }

    async fn usage_between(
        &self,
        key_id: Option<&str>,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<UsageSummary>> {
        self.inner.usage_between(key_id, from, until).await
    }

    async fn claim_idempotency(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim> {
        self.inner.claim_idempotency(key_id, key).await
    }

    async fn complete_idempotency(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.inner.complete_idempotency(key_id, key, response).await
    }

    async fn release_idempotency(&self, key_id: &str, key: &str) -> Result<()> {
        self.inner.release_idempotency(key_id, key).await
    }
}
