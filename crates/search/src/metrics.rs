//! The search agent's metrics.

/// Searches answered from full text alone because the vector side failed, by reason
/// (`embed`: the embeddings call failed or timed out; `store`: reading vectors failed;
/// `too_many_vectors`: the corpus is over the brute-force limit).
pub const EMBEDDING_FALLBACKS: &str = "agentmesh_search_embedding_fallbacks_total";

pub fn describe() {
    metrics::describe_counter!(
        EMBEDDING_FALLBACKS,
        "Searches answered from full text only because the vector side failed, by reason."
    );
}

pub fn embedding_fallback(reason: &'static str) {
    metrics::counter!(EMBEDDING_FALLBACKS, "reason" => reason).increment(1);
}
