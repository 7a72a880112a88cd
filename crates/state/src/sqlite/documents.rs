//! Documents and FTS5 search over their chunks (porter stemming, bm25 ranking).

use super::{get_ts, ts, SqliteDatabase, BACKEND};
use crate::sqlerr::map;
use crate::vectors::{decode_rows, to_bytes};
use crate::{
    fts, ChunkVector, ChunkVectors, DocumentInfo, NewChunk, NewDocument, Result, ScoredChunk,
};
use chrono::Utc;
use sqlx::Row;

/// The columns of a chunk as [`ScoredChunk`] needs them, plus its id.
const CHUNK_COLUMNS: &str = "SELECT c.id, c.document_id, d.title, d.source, c.heading, c.text \
     FROM chunks c JOIN documents d ON d.id = c.document_id";

impl SqliteDatabase {
    pub(super) async fn upsert_doc(&self, doc: NewDocument, chunks: Vec<NewChunk>) -> Result<bool> {
        self.upsert_doc_with(doc, chunks, None).await
    }

    /// Stores the document, its chunks and, when given, their vectors in one transaction.
    pub(super) async fn upsert_doc_with(
        &self,
        doc: NewDocument,
        chunks: Vec<NewChunk>,
        vectors: Option<ChunkVectors>,
    ) -> Result<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        // Chunks go first so the FTS delete trigger sees each one.
        sqlx::query("DELETE FROM chunks WHERE document_id = ?1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;
        let replaced = sqlx::query("DELETE FROM documents WHERE id = ?1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
            > 0;
        sqlx::query(
            "INSERT INTO documents (id, title, source, metadata, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&doc.id)
        .bind(&doc.title)
        .bind(&doc.source)
        .bind(sqlx::types::Json(&doc.metadata))
        .bind(ts(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(map(BACKEND))?;

        let numbered: Vec<(i64, &NewChunk)> = (0..).zip(chunks.iter()).collect();
        let mut ids: Vec<(i64, i64)> = Vec::with_capacity(chunks.len());
        for batch in numbered.chunks(1_000) {
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO chunks (document_id, ordinal, heading, text) ",
            );
            builder.push_values(batch, |mut b, (ordinal, chunk)| {
                b.push_bind(&doc.id)
                    .push_bind(*ordinal)
                    .push_bind(&chunk.heading)
                    .push_bind(&chunk.text);
            });
            builder.push(" RETURNING id, ordinal");
            let rows = builder
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(map(BACKEND))?;
            for row in rows {
                let id = row.try_get("id").map_err(map(BACKEND))?;
                let ordinal = row.try_get("ordinal").map_err(map(BACKEND))?;
                ids.push((id, ordinal));
            }
        }
        if let Some(vectors) = vectors {
            ids.sort_by_key(|(_, ordinal)| *ordinal);
            let rows: Vec<(i64, Vec<u8>)> = ids
                .iter()
                .zip(&vectors.vectors)
                .map(|((id, _), v)| (*id, to_bytes(v)))
                .collect();
            for batch in rows.chunks(500) {
                let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO chunk_vectors (chunk_id, model, vector) ",
                );
                builder.push_values(batch, |mut b, (id, bytes)| {
                    b.push_bind(*id)
                        .push_bind(&vectors.model)
                        .push_bind(bytes.as_slice());
                });
                builder
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(map(BACKEND))?;
            }
        }
        tx.commit().await.map_err(map(BACKEND))?;
        Ok(replaced)
    }

    pub(super) async fn delete_doc(&self, id: &str) -> Result<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map(BACKEND))?;
        sqlx::query("DELETE FROM chunks WHERE document_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;
        let deleted = sqlx::query("DELETE FROM documents WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
            > 0;
        tx.commit().await.map_err(map(BACKEND))?;
        Ok(deleted)
    }

    pub(super) async fn list_docs(&self) -> Result<Vec<DocumentInfo>> {
        let rows = sqlx::query(
            "SELECT d.id, d.title, d.source, d.metadata, d.created_at, \
             (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id) AS chunks \
             FROM documents d ORDER BY d.created_at, d.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        rows.iter()
            .map(|r| {
                let chunks: i64 = r.try_get("chunks")?;
                let metadata: sqlx::types::Json<serde_json::Value> = r.try_get("metadata")?;
                Ok(DocumentInfo {
                    id: r.try_get("id")?,
                    title: r.try_get("title")?,
                    source: r.try_get("source")?,
                    chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
                    metadata: metadata.0,
                    created_at: get_ts(r, "created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }

    /// Chunks matching any of the query's words; headings weigh twice the body.
    pub(super) async fn search(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        let Some(matcher) = fts::fts5_query(query) else {
            return Ok(Vec::new());
        };
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT c.document_id, d.title, d.source, c.heading, c.text, \
             -bm25(chunks_fts, 2.0, 1.0) AS score \
             FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid \
             JOIN documents d ON d.id = c.document_id \
             WHERE chunks_fts MATCH ?1 ORDER BY score DESC, c.id LIMIT ?2",
        )
        .bind(matcher)
        .bind(i64::try_from(top_k).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        rows.iter()
            .map(|r| {
                Ok(ScoredChunk {
                    document_id: r.try_get("document_id")?,
                    title: r.try_get("title")?,
                    source: r.try_get("source")?,
                    heading: r.try_get("heading")?,
                    text: r.try_get("text")?,
                    score: r.try_get("score")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }
    /// Up to `limit` stored vectors of `model`, in chunk order.
    pub(super) async fn vectors(&self, model: &str, limit: usize) -> Result<Vec<ChunkVector>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT chunk_id, vector FROM chunk_vectors WHERE model = ?1 \
             ORDER BY chunk_id LIMIT ?2",
        )
        .bind(model)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map(BACKEND))?;
        Ok(decode_rows(rows))
    }

    /// The chunks with these ids, scored 0.
    pub(super) async fn chunks_with_ids(&self, ids: &[i64]) -> Result<Vec<(i64, ScoredChunk)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(ids.len());
        for batch in ids.chunks(500) {
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(CHUNK_COLUMNS);
            builder.push(" WHERE c.id IN (");
            let mut list = builder.separated(", ");
            for id in batch {
                list.push_bind(*id);
            }
            builder.push(")");
            let found = builder
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(map(BACKEND))?;
            rows.extend(found);
        }
        rows.iter()
            .map(|r| {
                let chunk = ScoredChunk {
                    document_id: r.try_get("document_id")?,
                    title: r.try_get("title")?,
                    source: r.try_get("source")?,
                    heading: r.try_get("heading")?,
                    text: r.try_get("text")?,
                    score: 0.0,
                };
                Ok((r.try_get("id")?, chunk))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }
}
