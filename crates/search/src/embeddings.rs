//! Vector similarity beside full text, when an embeddings model is configured.
//!
//! Ingestion embeds every chunk (its heading path and text, 64 per call) and stores the
//! vectors with the chunks. A question is embedded too, compared by cosine with every
//! stored vector of the model (brute force in this process: there is no vector index,
//! see docs/search.md for the limit), and the vector ranking is blended with the
//! full-text ranking by reciprocal rank fusion. The vector side never fails a search:
//! when it cannot answer, the full-text ranking is used alone.

use crate::metrics;
use agentmesh_llm::{EmbedRequest, LlmClient, LlmError};
use agentmesh_state::{ChunkVector, ChunkVectors, NewChunk, ScoredChunk};
use anyhow::Context;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Names the embeddings model; unset or empty: full text only.
pub const MODEL_ENV: &str = "AGENTMESH_EMBEDDINGS_MODEL";
/// Bound on embedding a question, in milliseconds.
pub const QUERY_TIMEOUT_ENV: &str = "AGENTMESH_EMBEDDINGS_QUERY_TIMEOUT_MS";
/// Default bound on embedding a question: a slow provider costs a search this much at most.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Texts per embeddings call at ingestion.
pub const BATCH: usize = 64;
/// Most vectors compared per question. Past it the vector side is skipped (full text
/// only, counted as `too_many_vectors`): every question reads all vectors of the model.
pub const MAX_SCAN: usize = 20_000;
/// The constant of reciprocal rank fusion: a hit at rank r (from 1) earns 1 / (K + r).
pub const RRF_K: f64 = 60.0;

/// How the search agent uses embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// None: rank by full text only, store no vectors.
    pub embeddings_model: Option<String>,
    /// Bound on embedding a question (the caller's deadline may cut it shorter).
    pub query_timeout: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            embeddings_model: None,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }
}

impl SearchConfig {
    /// From `AGENTMESH_EMBEDDINGS_MODEL` and `AGENTMESH_EMBEDDINGS_QUERY_TIMEOUT_MS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let model = std::env::var(MODEL_ENV).unwrap_or_default();
        let model = Some(model.trim().to_string()).filter(|m| !m.is_empty());
        let query_timeout = match std::env::var(QUERY_TIMEOUT_ENV) {
            Ok(raw) if !raw.trim().is_empty() => {
                let ms: u64 = raw
                    .trim()
                    .parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .with_context(|| {
                        format!("{QUERY_TIMEOUT_ENV} must be a positive number of ms, got {raw:?}")
                    })?;
                Duration::from_millis(ms)
            }
            _ => DEFAULT_QUERY_TIMEOUT,
        };
        Ok(Self {
            embeddings_model: model,
            query_timeout,
        })
    }
}

/// Fails when no LLM provider serves `model`, so a misspelt model stops the agent at
/// start instead of refusing every ingest later (asks no provider anything).
pub async fn check_model(llm: &LlmClient, model: &str) -> anyhow::Result<()> {
    let probe = EmbedRequest {
        model: model.to_string(),
        ..EmbedRequest::default()
    };
    let checked = llm.embed(probe).await.map(drop);
    checked.with_context(|| format!("{MODEL_ENV}={model:?}"))
}

/// Calls the embeddings model and remembers whether the vector side is failing, so an
/// outage is logged at warn once, not once per search.
pub(crate) struct Embedder {
    llm: LlmClient,
    model: String,
    query_timeout: Duration,
    failing: AtomicBool,
}

/// Why the vector side gave no ranking.
#[derive(Debug)]
pub(crate) enum VectorFailure {
    Embed(LlmError),
    Store(agentmesh_state::StateError),
    TooManyVectors,
}

impl VectorFailure {
    fn reason(&self) -> &'static str {
        match self {
            Self::Embed(_) => "embed",
            Self::Store(_) => "store",
            Self::TooManyVectors => "too_many_vectors",
        }
    }
}

impl std::fmt::Display for VectorFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embed(e) => write!(f, "embeddings call failed: {e}"),
            Self::Store(e) => write!(f, "reading chunk vectors failed: {e}"),
            Self::TooManyVectors => write!(f, "more than {MAX_SCAN} chunk vectors to compare"),
        }
    }
}

impl Embedder {
    pub fn new(llm: LlmClient, model: String, query_timeout: Duration) -> Self {
        Self {
            llm,
            model,
            query_timeout,
            failing: AtomicBool::new(false),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// A vector per chunk, `BATCH` chunks per call, all within `deadline`.
    pub async fn chunks(
        &self,
        chunks: &[NewChunk],
        deadline: Option<Instant>,
    ) -> Result<ChunkVectors, LlmError> {
        let mut vectors = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(BATCH) {
            let request = EmbedRequest {
                model: self.model.clone(),
                input: batch.iter().map(chunk_text).collect(),
                deadline,
                ..EmbedRequest::default()
            };
            vectors.extend(self.llm.embed(request).await?.vectors);
        }
        Ok(ChunkVectors {
            model: self.model.clone(),
            vectors,
        })
    }

    /// The question's vector, within the query timeout or the caller's `deadline`.
    pub async fn query(&self, text: &str, deadline: Option<Instant>) -> Result<Vec<f32>, LlmError> {
        let own = Instant::now() + self.query_timeout;
        let deadline = deadline.map_or(own, |d| d.min(own));
        let request = EmbedRequest {
            model: self.model.clone(),
            input: vec![text.to_string()],
            deadline: Some(deadline),
            ..EmbedRequest::default()
        };
        let mut answer = self.llm.embed(request).await?;
        answer
            .vectors
            .pop()
            .ok_or_else(|| LlmError::InvalidResponse {
                provider: answer.provider,
                message: "no vector for the question".into(),
            })
    }

    /// Counts a search answered without vectors; warns at the start of an outage only.
    pub fn failed(&self, failure: &VectorFailure) {
        metrics::embedding_fallback(failure.reason());
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                model = %self.model,
                reason = failure.reason(),
                error = %failure,
                "vector search failing, ranking by full text only"
            );
        } else {
            tracing::debug!(reason = failure.reason(), error = %failure, "vector search failed");
        }
    }

    pub fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(model = %self.model, "vector search recovered");
        }
    }
}

/// What is embedded of a chunk: its heading path, then its text.
pub fn chunk_text(chunk: &NewChunk) -> String {
    format!("{}\n{}", chunk.heading, chunk.text)
}

/// Cosine similarity; 0 when either vector is all zeros or their lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// The `n` stored vectors most similar to `query` (cosine above 0), best first.
pub fn nearest(query: &[f32], stored: &[ChunkVector], n: usize) -> Vec<(i64, f64)> {
    let mut scored: Vec<(i64, f64)> = stored
        .iter()
        .map(|v| (v.chunk_id, cosine(query, &v.vector)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(n);
    scored
}

/// Reciprocal rank fusion of two rankings (each best first): a passage scores
/// Σ 1 / (RRF_K + rank) over the rankings it is in. Best first; on a tie the passage
/// that came first in `full_text` (then in `vector`) stays first.
pub fn fuse(full_text: Vec<ScoredChunk>, vector: Vec<ScoredChunk>) -> Vec<ScoredChunk> {
    let mut fused: Vec<ScoredChunk> = Vec::with_capacity(full_text.len() + vector.len());
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for ranking in [full_text, vector] {
        for (rank, mut hit) in ranking.into_iter().enumerate() {
            let earned = 1.0 / (RRF_K + rank as f64 + 1.0);
            let key = (
                hit.document_id.clone(),
                hit.heading.clone(),
                hit.text.clone(),
            );
            match seen.get(&key) {
                Some(&i) => fused[i].score += earned,
                None => {
                    hit.score = earned;
                    seen.insert(key, fused.len());
                    fused.push(hit);
                }
            }
        }
    }
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, text: &str) -> ScoredChunk {
        ScoredChunk {
            document_id: doc.into(),
            title: doc.into(),
            source: String::new(),
            heading: "h".into(),
            text: text.into(),
            score: 99.0,
        }
    }

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn nearest_keeps_the_n_most_similar_and_drops_the_unrelated() {
        let v = |chunk_id, vector: &[f32]| ChunkVector {
            chunk_id,
            vector: vector.to_vec(),
        };
        let stored = [
            v(1, &[0.0, 1.0]),
            v(2, &[1.0, 0.1]),
            v(3, &[1.0, 1.0]),
            v(4, &[-1.0, 0.0]),
            v(5, &[1.0]),
        ];
        let ids: Vec<i64> = nearest(&[1.0, 0.0], &stored, 5)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(nearest(&[1.0, 0.0], &stored, 1)[0].0, 2);
    }

    #[test]
    fn fusion_adds_reciprocal_ranks() {
        let text = vec![hit("a", "1"), hit("b", "1"), hit("c", "1")];
        let vector = vec![hit("c", "1"), hit("d", "1")];
        let fused = fuse(text, vector);
        let order: Vec<&str> = fused.iter().map(|h| h.document_id.as_str()).collect();
        assert_eq!(order, ["c", "a", "b", "d"]);
        let c = 1.0 / 63.0 + 1.0 / 61.0;
        assert!((fused[0].score - c).abs() < 1e-12);
        assert!((fused[1].score - 1.0 / 61.0).abs() < 1e-12);
        // Equal scores keep the full-text order first.
        let fused = fuse(vec![hit("x", "1")], vec![hit("y", "1")]);
        assert_eq!(fused[0].document_id, "x");
        assert!(fuse(Vec::new(), Vec::new()).is_empty());
    }

    #[test]
    fn one_passage_twice_in_a_document_is_not_merged_with_another() {
        let fused = fuse(vec![hit("a", "one"), hit("a", "two")], Vec::new());
        assert_eq!(fused.len(), 2);
    }
}
