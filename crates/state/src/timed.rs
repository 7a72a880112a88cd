//! A [`Database`] whose every call is bounded by a client-side timeout.
//!
//! The pool's acquire timeout bounds waiting for a connection, but not a
//! statement on a connection already held: a Postgres that accepts
//! connections and then stops answering (paused VM, half-open TCP, a network
//! partition after the handshake) would hold the request until TCP gives up.
//! Here each call gets a deadline; past it the call is dropped (sqlx closes
//! the connection, a transaction in flight is rolled back by the server) and
//! the caller gets [`StateError::Unavailable`], which the gateway answers 503.

use crate::{
    ApiKey, ChunkVector, ChunkVectors, Conversation, Database, DatasetInfo, DocumentInfo,
    IdempotencyClaim, NewApiKey, NewChunk, NewDocument, NewMessage, QueryResult, Result,
    ScoredChunk, StateError, StoredResponse, TableData, UsageRecord, UsageSummary,
};
use async_trait::async_trait;
use chrono::NaiveDate;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Counts database calls cut by their client-side timeout, by backend.
pub const CALL_TIMEOUTS: &str = "agentmesh_state_database_call_timeouts_total";

/// How long each kind of database call may take before it is abandoned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CallTimeouts {
    /// Key lookups, conversations, ledger, idempotency: single-row work.
    pub(crate) normal: Duration,
    /// Ingestion (a document and its chunks, a dataset and its rows), usage
    /// reports over the whole ledger, and migrations.
    pub(crate) long: Duration,
}

pub(crate) struct TimedDatabase {
    inner: Arc<dyn Database>,
    limits: CallTimeouts,
}

impl TimedDatabase {
    pub(crate) fn new(inner: Arc<dyn Database>, limits: CallTimeouts) -> Self {
        Self { inner, limits }
    }

    async fn bound<T>(
        &self,
        limit: Duration,
        call: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        bounded(self.inner.backend(), limit, call, work).await
    }
}

/// `work`, or [`StateError::Unavailable`] when it has not finished after `limit`.
pub(crate) async fn bounded<T>(
    backend: &'static str,
    limit: Duration,
    call: &'static str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!(CALL_TIMEOUTS, "backend" => backend).increment(1);
            tracing::debug!(backend, call, ?limit, "database call timed out");
            Err(StateError::Unavailable {
                backend,
                message: format!("{call}: no answer within {limit:?}"),
            })
        }
    }
}

#[async_trait]
impl Database for TimedDatabase {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.bound(self.limits.normal, "ping", self.inner.ping())
            .await
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKey> {
        let work = self.inner.create_key(key);
        self.bound(self.limits.normal, "create_key", work).await
    }

    async fn find_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let work = self.inner.find_key_by_hash(secret_hash);
        self.bound(self.limits.normal, "find_key_by_hash", work)
            .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        self.bound(self.limits.normal, "get_key", self.inner.get_key(id))
            .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.bound(self.limits.normal, "list_keys", self.inner.list_keys())
            .await
    }

    async fn rotate_key(&self, id: &str, secret_hash: &str, prefix: &str) -> Result<ApiKey> {
        let work = self.inner.rotate_key(id, secret_hash, prefix);
        self.bound(self.limits.normal, "rotate_key", work).await
    }

    async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        let work = self.inner.revoke_key(id);
        self.bound(self.limits.normal, "revoke_key", work).await
    }

    async fn touch_key(&self, id: &str) -> Result<()> {
        let work = self.inner.touch_key(id);
        self.bound(self.limits.normal, "touch_key", work).await
    }

    async fn has_admin_key(&self) -> Result<bool> {
        let work = self.inner.has_admin_key();
        self.bound(self.limits.normal, "has_admin_key", work).await
    }

    async fn load_conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let work = self.inner.load_conversation(id);
        self.bound(self.limits.normal, "load_conversation", work)
            .await
    }

    async fn append_messages(&self, id: &str, key_id: &str, messages: &[NewMessage]) -> Result<()> {
        let work = self.inner.append_messages(id, key_id, messages);
        self.bound(self.limits.normal, "append_messages", work)
            .await
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool> {
        let work = self.inner.delete_conversation(id);
        self.bound(self.limits.normal, "delete_conversation", work)
            .await
    }

    async fn upsert_document(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool> {
        let work = self.inner.upsert_document(doc, chunks);
        self.bound(self.limits.long, "upsert_document", work).await
    }

    async fn delete_document(&self, id: &str) -> Result<bool> {
        let work = self.inner.delete_document(id);
        self.bound(self.limits.normal, "delete_document", work)
            .await
    }

    async fn list_documents(&self) -> Result<Vec<DocumentInfo>> {
        let work = self.inner.list_documents();
        self.bound(self.limits.normal, "list_documents", work).await
    }

    async fn search_chunks(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        let work = self.inner.search_chunks(query, top_k);
        self.bound(self.limits.normal, "search_chunks", work).await
    }

    async fn upsert_document_with_vectors(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: ChunkVectors,
    ) -> Result<bool> {
        let work = self
            .inner
            .upsert_document_with_vectors(doc, chunks, vectors);
        self.bound(self.limits.long, "upsert_document_with_vectors", work)
            .await
    }

    async fn chunk_vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        let work = self.inner.chunk_vectors(model, limit);
        self.bound(self.limits.normal, "chunk_vectors", work).await
    }

    async fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        let work = self.inner.chunks_by_id(ids);
        self.bound(self.limits.normal, "chunks_by_id", work).await
    }

    async fn create_dataset(&self, table: &TableData) -> Result<DatasetInfo> {
        let work = self.inner.create_dataset(table);
        self.bound(self.limits.long, "create_dataset", work).await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>> {
        let work = self.inner.list_datasets();
        self.bound(self.limits.normal, "list_datasets", work).await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        let work = self.inner.get_dataset(name);
        self.bound(self.limits.normal, "get_dataset", work).await
    }

    /// Bounded by the query's own statement timeout plus the normal limit, so
    /// the server's cancellation (a `Timeout`) normally arrives first.
    async fn query_dataset(
        &self,
        sql: &str,
        max_rows: usize,
        timeout: Duration,
    ) -> Result<QueryResult> {
        let limit = timeout.saturating_add(self.limits.normal);
        let work = self.inner.query_dataset(sql, max_rows, timeout);
        self.bound(limit, "query_dataset", work).await
    }

    async fn record_usage(&self, usage: &UsageRecord) -> Result<()> {
        let work = self.inner.record_usage(usage);
        self.bound(self.limits.normal, "record_usage", work).await
    }

    async fn record_usage_batch(&self, batch: &[UsageRecord]) -> Result<()> {
        let work = self.inner.record_usage_batch(batch);
        self.bound(self.limits.normal, "record_usage_batch", work)
            .await
    }

    async fn usage_summary(&self, key_id: Option<&str>) -> Result<Vec<UsageSummary>> {
        let work = self.inner.usage_summary(key_id);
        self.bound(self.limits.long, "usage_summary", work).await
    }

    async fn usage_between(
        &self,
        key_id: Option<&str>,
        from: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<UsageSummary>> {
        let work = self.inner.usage_between(key_id, from, until);
        self.bound(self.limits.long, "usage_between", work).await
    }

    async fn claim_idempotency(&self, key_id: &str, key: &str) -> Result<IdempotencyClaim> {
        let work = self.inner.claim_idempotency(key_id, key);
        self.bound(self.limits.normal, "claim_idempotency", work)
            .await
    }

    async fn complete_idempotency(
        &self,
        key_id: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        let work = self.inner.complete_idempotency(key_id, key, response);
        self.bound(self.limits.normal, "complete_idempotency", work)
            .await
    }

    async fn release_idempotency(&self, key_id: &str, key: &str) -> Result<()> {
        let work = self.inner.release_idempotency(key_id, key);
        self.bound(self.limits.normal, "release_idempotency", work)
            .await
    }
}
