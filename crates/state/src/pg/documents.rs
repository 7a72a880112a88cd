//! Documents and full-text search over their chunks (tsvector + GIN, BM25 scoring in SQL).

use super::{PgDatabase, BACKEND};
use crate::sqlerr::map;
use crate::vectors::{decode_rows, to_bytes};
use crate::{
    fts, ChunkVector, ChunkVectors, DocumentInfo, NewChunk, NewDocument, Result, ScoredChunk,
};
use sqlx::Row;

/// `$1`: plain alphanumeric words (from `fts::terms`); `$2`: how many results.
/// Terms are normalised by the same `english` configuration as the index, then
/// each is matched alone as a quoted lexeme, so no user text reaches a parser.
///
/// Okapi BM25 over chunks, as SQLite FTS5 scores them: k1 = 1.2, b = 0.75, a heading
/// occurrence (weight A) counting twice a body one; a chunk's length is its number of
/// distinct lexemes (`length(tsv)`), against the corpus average.
const SEARCH_SQL: &str = "\
WITH terms AS (
    SELECT DISTINCT lex FROM unnest(tsvector_to_array(to_tsvector('english', $1))) AS lex
), total AS (
    SELECT greatest(count(*), 1)::float8 AS n,
           greatest(avg(length(tsv)), 1)::float8 AS avglen
    FROM chunks
), weighted AS (
    SELECT terms.lex, q.q, total.avglen,
           ln(1 + (total.n - d.df + 0.5) / (d.df + 0.5)) AS idf
    FROM terms
    CROSS JOIN total
    CROSS JOIN LATERAL (SELECT to_tsquery('simple', quote_literal(terms.lex)) AS q) q
    CROSS JOIN LATERAL (SELECT count(*)::float8 AS df FROM chunks WHERE tsv @@ q.q) d
)
SELECT c.document_id, d.title, d.source, c.heading, c.text,
       sum(w.idf * t.tf * 2.2
           / (t.tf + 1.2 * (0.25 + 0.75 * length(c.tsv) / w.avglen)))::float8 AS score
FROM chunks c
JOIN weighted w ON c.tsv @@ w.q
CROSS JOIN LATERAL (
    SELECT sum(CASE wt WHEN 'A' THEN 2.0 ELSE 1.0 END)::float8 AS tf
    FROM unnest(c.tsv) u, unnest(u.weights) wt
    WHERE u.lexeme = w.lex
) t
JOIN documents d ON d.id = c.document_id
GROUP BY c.id, c.document_id, d.title, d.source, c.heading, c.text
ORDER BY score DESC, c.id
LIMIT $2";

/// The columns of a chunk as [`ScoredChunk`] needs them, plus its id.
const CHUNK_COLUMNS: &str = "SELECT c.id, c.document_id, d.title, d.source, c.heading, c.text \
     FROM chunks c JOIN documents d ON d.id = c.document_id";

impl PgDatabase {
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
        let mut tx = self.pool.begin().await.map_err(map(BACKEND))?;
        let replaced = sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?
            .rows_affected()
            > 0;
        sqlx::query("INSERT INTO documents (id, title, source, metadata) VALUES ($1, $2, $3, $4)")
            .bind(&doc.id)
            .bind(&doc.title)
            .bind(&doc.source)
            .bind(sqlx::types::Json(&doc.metadata))
            .execute(&mut *tx)
            .await
            .map_err(map(BACKEND))?;

        let numbered: Vec<(i32, &NewChunk)> = (0..).zip(chunks.iter()).collect();
        let mut ids: Vec<(i64, i32)> = Vec::with_capacity(chunks.len());
        for batch in numbered.chunks(1_000) {
            let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
                let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map(BACKEND))
    }

    /// Chunks matching any of the query's words, ranked by BM25 (see `SEARCH_SQL`): a
    /// rare word such as `oomkilled` outweighs one on every page such as `container`,
    /// repeats of a word saturate, and long chunks do not win by length alone.
    pub(super) async fn search(&self, query: &str, top_k: usize) -> Result<Vec<ScoredChunk>> {
        let terms = fts::terms(query);
        if terms.is_empty() || top_k == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SEARCH_SQL)
            .bind(terms.join(" "))
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
            "SELECT chunk_id, vector FROM chunk_vectors WHERE model = $1 \
             ORDER BY chunk_id LIMIT $2",
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
        let rows = sqlx::query(&format!("{CHUNK_COLUMNS} WHERE c.id = ANY($1)"))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(map(BACKEND))?;
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
