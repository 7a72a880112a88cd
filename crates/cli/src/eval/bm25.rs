//! A plain BM25 baseline over whole files, kept apart from the product's ranking.
//!
//! Nothing here is shared with the search agent: no chunks, no headings, no
//! stemming. Words are lower-cased alphanumeric runs with a few English stop
//! words dropped; scores are Okapi BM25 with the textbook `k1` and `b`.

use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Words that say nothing about a document's subject.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "in", "is", "it", "my", "of", "on", "or", "that", "the", "this", "to", "what", "when",
    "why", "with", "you",
];

struct Doc {
    id: String,
    len: f64,
    tf: HashMap<String, u32>,
}

/// Term statistics of a fixed set of documents.
pub struct Bm25 {
    docs: Vec<Doc>,
    df: HashMap<String, u32>,
    avg_len: f64,
}

/// Lower-cased alphanumeric words of `text` without stop words.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

impl Bm25 {
    /// Indexes `(id, text)` pairs.
    pub fn new(texts: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut docs = Vec::new();
        let mut df: HashMap<String, u32> = HashMap::new();
        for (id, text) in texts {
            let words = tokens(&text);
            let mut tf: HashMap<String, u32> = HashMap::new();
            for w in &words {
                *tf.entry(w.clone()).or_default() += 1;
            }
            for w in tf.keys() {
                *df.entry(w.clone()).or_default() += 1;
            }
            let len = words.len() as f64;
            docs.push(Doc { id, len, tf });
        }
        let total: f64 = docs.iter().map(|d| d.len).sum();
        let avg_len = (total / docs.len().max(1) as f64).max(1.0);
        Self { docs, df, avg_len }
    }

    /// Indexes every `.md`, `.markdown` and `.txt` file directly in `dir`; a
    /// document's id is its file name, as `agentmesh docs ingest` sets it.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let mut texts = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !path.is_file() || !matches!(ext, "md" | "markdown" | "txt") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let id = path.file_name().map(|n| n.to_string_lossy().into_owned());
            texts.push((id.unwrap_or_default(), text));
        }
        if texts.is_empty() {
            anyhow::bail!("{} holds no .md, .markdown or .txt files", dir.display());
        }
        Ok(Self::new(texts))
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Ids of the `n` best documents for `query`, best first (ties by id).
    pub fn rank(&self, query: &str, n: usize) -> Vec<String> {
        let mut terms = tokens(query);
        terms.sort();
        terms.dedup();
        let total = self.docs.len() as f64;
        let mut scored: Vec<(f64, &str)> = self
            .docs
            .iter()
            .map(|d| (self.score(d, &terms, total), d.id.as_str()))
            .filter(|(s, _)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(n)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    fn score(&self, doc: &Doc, terms: &[String], total: f64) -> f64 {
        let norm = K1 * (1.0 - B + B * doc.len / self.avg_len);
        terms
            .iter()
            .filter_map(|t| {
                let tf = f64::from(*doc.tf.get(t)?);
                let df = f64::from(self.df.get(t).copied().unwrap_or(0));
                let idf = (1.0 + (total - df + 0.5) / (df + 0.5)).ln();
                Some(idf * tf * (K1 + 1.0) / (tf + norm))
            })
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn index() -> Bm25 {
        Bm25::new([
            (
                "pods.md".into(),
                "A pod runs containers. Pods are scheduled.".into(),
            ),
            (
                "oom.md".into(),
                "OOMKilled: the container used more memory than its limit.".into(),
            ),
            (
                "nodes.md".into(),
                "Nodes run pods; the kubelet on each node.".into(),
            ),
        ])
    }

    #[test]
    fn rare_words_decide_the_ranking() {
        let ranked = index().rank("why was my container OOMKilled?", 3);
        assert_eq!(ranked.first().map(String::as_str), Some("oom.md"));
    }

    #[test]
    fn unmatched_documents_are_left_out() {
        assert_eq!(index().rank("kubelet", 3), ["nodes.md"]);
        assert!(index().rank("the of and", 3).is_empty());
    }

    #[test]
    fn tokens_fold_case_and_drop_stop_words() {
        assert_eq!(tokens("The Pod's CPU-limit"), ["pod", "s", "cpu", "limit"]);
    }
}
