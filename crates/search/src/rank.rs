//! Re-ranks full-text hits by document: a passage also earns from the other
//! passages of its document that match, so a page that covers the question in
//! several sections outranks one lucky paragraph elsewhere.
//!
//! The backends score chunks alone (BM25 on both; with embeddings, the
//! search agent's fused RRF score instead). Here each document's evidence is
//! `s1 + 0.3 s2` over its best chunk scores, and every chunk of the document
//! is lifted by the same bonus, so a document's best chunk scores exactly its
//! document score. A title that names the query's words adds a share of the
//! best hit's score.
//! The weights were chosen on the k8s dev questions only (docs/search.md);
//! heavier sibling weights favour long pages that repeat common words.

use agentmesh_state::ScoredChunk;
use std::collections::HashMap;

/// Chunks fetched from the database per result asked for.
const CANDIDATES_PER_RESULT: usize = 4;
/// Fewest chunks fetched: enough that a document's other hits are seen, and the
/// same for every `top_k` up to 50, so the first results do not depend on `top_k`.
const MIN_CANDIDATES: usize = 200;
/// Weight of a document's 2nd, 3rd, ... best chunk.
const SIBLING_WEIGHTS: [f64; 1] = [0.3];
/// Bonus of a document whose title holds every query word, as a share of the best hit.
const TITLE_WEIGHT: f64 = 0.5;
/// Words too common to say anything when they appear in a title.
const STOP_WORDS: &[&str] = &[
    "and", "are", "can", "does", "for", "from", "how", "into", "the", "this", "that", "what",
    "when", "why", "with", "you", "your",
];

/// How many chunks to fetch for `top_k` results.
pub fn candidates(top_k: usize) -> usize {
    top_k
        .saturating_mul(CANDIDATES_PER_RESULT)
        .max(MIN_CANDIDATES)
}

/// The `top_k` best of `hits` (best first) once each has its document's bonus.
pub fn by_document(query: &str, mut hits: Vec<ScoredChunk>, top_k: usize) -> Vec<ScoredChunk> {
    let bonus = sibling_bonus(&hits);
    let best = hits.iter().map(|h| h.score).fold(0.0, f64::max);
    let terms = words(query);
    for hit in &mut hits {
        let title = TITLE_WEIGHT * best * title_match(&terms, &hit.title);
        hit.score += bonus.get(&hit.document_id).copied().unwrap_or(0.0) + title;
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(top_k);
    hits
}

/// Share of the query's words found in `title` (words match on a shared stem).
fn title_match(terms: &[String], title: &str) -> f64 {
    if terms.is_empty() {
        return 0.0;
    }
    let title = words(title);
    let found = terms
        .iter()
        .filter(|t| title.iter().any(|w| same_stem(t, w)));
    found.count() as f64 / terms.len() as f64
}

/// Lower-cased words of three letters or more, without common function words.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase);
    for w in all {
        if w.chars().count() >= 3 && !STOP_WORDS.contains(&w.as_str()) && !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Equal, or sharing their first six letters (autoscaler, autoscaling).
fn same_stem(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('s'), b.trim_end_matches('s'));
    if a == b {
        return true;
    }
    let prefix = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    prefix >= 6
}

/// Per document: the weighted scores of its chunks after the best one.
fn sibling_bonus(hits: &[ScoredChunk]) -> HashMap<String, f64> {
    let mut scores: HashMap<&str, Vec<f64>> = HashMap::new();
    for hit in hits {
        scores.entry(&hit.document_id).or_default().push(hit.score);
    }
    scores
        .into_iter()
        .map(|(id, mut s)| {
            s.sort_by(|a, b| b.total_cmp(a));
            let rest = s.iter().skip(1).zip(SIBLING_WEIGHTS);
            (id.to_string(), rest.map(|(s, w)| s * w).sum())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, heading: &str, score: f64) -> ScoredChunk {
        ScoredChunk {
            document_id: doc.into(),
            title: doc.into(),
            source: String::new(),
            heading: heading.into(),
            text: String::new(),
            score,
        }
    }

    fn order(hits: &[ScoredChunk]) -> Vec<String> {
        hits.iter()
            .map(|h| format!("{}#{}", h.document_id, h.heading))
            .collect()
    }

    #[test]
    fn a_document_with_several_hits_overtakes_one_lucky_chunk() {
        let hits = vec![
            hit("lucky", "a", 9.0),
            hit("broad", "a", 8.0),
            hit("broad", "b", 4.0),
            hit("broad", "c", 2.0),
            hit("broad", "d", 1.0),
        ];
        let ranked = by_document("", hits, 3);
        assert_eq!(order(&ranked), ["broad#a", "lucky#a", "broad#b"]);
        assert_eq!(
            ranked[0].score,
            8.0 + 0.3 * 4.0,
            "only the best sibling counts"
        );
    }

    #[test]
    fn single_hits_keep_their_order_and_scores() {
        let hits = vec![hit("x", "a", 3.0), hit("y", "a", 2.0), hit("z", "a", 1.0)];
        let ranked = by_document("", hits.clone(), 2);
        assert_eq!(order(&ranked), ["x#a", "y#a"]);
        assert_eq!(ranked[1].score, 2.0);
        assert!(by_document("q", Vec::new(), 5).is_empty());
    }

    #[test]
    fn a_title_naming_the_query_lifts_its_document() {
        let mut hits = vec![hit("memo", "a", 3.0), hit("scaler", "a", 2.8)];
        hits[1].title = "Horizontal Pod Autoscaling".into();
        let ranked = by_document("why does the autoscaler not scale?", hits.clone(), 2);
        assert_eq!(order(&ranked), ["scaler#a", "memo#a"]);
        let ranked = by_document("why is the memo late?", hits, 2);
        assert_eq!(order(&ranked), ["memo#a", "scaler#a"]);
        assert!(same_stem("autoscaler", "autoscaling"));
        assert!(!same_stem("pods", "podcast"));
    }

    #[test]
    fn candidates_grow_with_top_k() {
        assert_eq!(candidates(5), MIN_CANDIDATES);
        assert_eq!(candidates(50), 200);
        assert_eq!(candidates(60), 240);
    }
}
