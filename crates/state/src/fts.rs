//! Turning a user's free-text question into a safe full-text query.
//!
//! User text is never passed to a query parser as is: it is split into plain
//! words, stop words are dropped, and the words are OR-ed together so that a
//! long natural question still matches passages that contain some of its terms.

/// Upper bound on the words kept from one query, so a pasted page stays cheap.
const MAX_TERMS: usize = 32;

/// Common English words that carry no meaning for ranking.
const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "could", "did", "do", "does",
    "for", "from", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my",
    "of", "on", "or", "our", "should", "so", "than", "that", "the", "their", "them", "then",
    "there", "these", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your",
];

/// Lower-cased alphanumeric words of `query`, without stop words or duplicates.
pub(crate) fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let words = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty());
    for word in words {
        let word = word.to_lowercase();
        if STOP_WORDS.contains(&word.as_str()) || out.contains(&word) {
            continue;
        }
        out.push(word);
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

/// An FTS5 MATCH expression: every word quoted as a string (inner quotes
/// doubled), OR-ed together, so FTS syntax in user text is inert.
pub(crate) fn fts5_query(query: &str) -> Option<String> {
    let terms = terms(query);
    let quoted: Vec<String> = terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    (!quoted.is_empty()).then(|| quoted.join(" OR "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn operators_become_plain_words() {
        let q = fts5_query(r#""foo" AND (bar* OR -baz):"#);
        assert_eq!(q.as_deref(), Some(r#""foo" OR "bar" OR "baz""#));
        assert_eq!(terms("pods' & !nodes:*"), vec!["pods", "nodes"]);
    }

    #[test]
    fn stop_words_only_is_empty() {
        assert_eq!(fts5_query("what is the"), None);
        assert!(terms("  ?! ").is_empty());
    }

    #[test]
    fn duplicates_and_case_fold() {
        assert_eq!(terms("Pod pod POD restart"), vec!["pod", "restart"]);
    }
}
