//! Deterministic embeddings: texts that share words get close vectors.
//!
//! Each lowercase word (a run of letters or digits, minus a few stop words) adds 1 to a
//! hashed dimension, and each character trigram of the word (padded as `<word>`) adds a
//! little to another one, so related spellings ("pod", "pods") are close too. Signs come
//! from the hash, so unrelated words cancel out rather than pile up. The vector is
//! L2-normalised; a text without words is the zero vector.

use serde_json::{json, Value};

use crate::plan::count_words;

/// Dimension when neither the script nor the request sets one.
pub const DEFAULT_DIM: usize = 256;
/// Largest `dimensions` a request may ask for.
pub const MAX_DIM: usize = 8192;

const TRIGRAM_WEIGHT: f32 = 0.25;
const STOP_WORDS: [&str; 16] = [
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "in", "is", "it", "of", "on", "the",
    "to",
];

/// A checked `/v1/embeddings` request.
#[derive(Debug)]
pub(crate) struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub dim: usize,
}

impl EmbedRequest {
    /// Checks the request's shape; the error names the field.
    pub fn parse(
        body: &Value,
        default_model: &str,
        default_dim: usize,
    ) -> Result<EmbedRequest, String> {
        let obj = body.as_object().ok_or("the body must be a JSON object")?;
        let model = match obj.get("model") {
            None | Some(Value::Null) => default_model.to_string(),
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err("model must be a string".into()),
        };
        let inputs = match obj.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(format!("input[{i}] must be a string")),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err("input must not be empty".into()),
            _ => return Err("input must be a string or an array of strings".into()),
        };
        match obj.get("encoding_format") {
            None | Some(Value::Null) => {}
            Some(Value::String(f)) if f == "float" => {}
            Some(_) => return Err("encoding_format: the mock only sends \"float\"".into()),
        }
        let dim = match obj.get("dimensions") {
            None | Some(Value::Null) => default_dim,
            Some(value) => value
                .as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .filter(|d| (1..=MAX_DIM).contains(d))
                .ok_or_else(|| format!("dimensions must be an integer from 1 to {MAX_DIM}"))?,
        };
        Ok(EmbedRequest { model, inputs, dim })
    }

    /// The answer body, leaving out the last `short_by` vectors (a broken provider).
    pub fn answer(&self, short_by: usize) -> Value {
        let keep = self.inputs.len().saturating_sub(short_by);
        let data: Vec<Value> = self.inputs[..keep]
            .iter()
            .enumerate()
            .map(|(index, text)| {
                json!({"object": "embedding", "index": index, "embedding": embed(text, self.dim)})
            })
            .collect();
        let tokens: u32 = self.inputs.iter().map(|t| count_words(t)).sum();
        json!({"object": "list", "data": data, "model": self.model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    }
}

/// The vector of `text` in `dim` dimensions (see the module doc).
pub fn embed(text: &str, dim: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dim.max(1)];
    let lower = text.to_lowercase();
    let words = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !STOP_WORDS.contains(w));
    for word in words {
        add(&mut vector, word.as_bytes(), 1.0);
        let padded: Vec<char> = format!("<{word}>").chars().collect();
        for gram in padded.windows(3) {
            let gram: String = gram.iter().collect();
            add(&mut vector, gram.as_bytes(), TRIGRAM_WEIGHT);
        }
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn add(vector: &mut [f32], feature: &[u8], weight: f32) {
    let hash = fnv1a(feature);
    let len = vector.len() as u64;
    let slot = usize::try_from(hash % len).unwrap_or(0);
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    vector[slot] += sign * weight;
}

/// FNV-1a, 64 bits: stable across runs and platforms (unlike the std hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn shared_words_are_close_and_vectors_are_unit_length() {
        let query = embed("How do I restart a pod?", DEFAULT_DIM);
        let near = embed("Restarting the pod after a crash", DEFAULT_DIM);
        let far = embed("Quarterly sales of beverages by region", DEFAULT_DIM);
        assert_eq!(query.len(), DEFAULT_DIM);
        let norm: f32 = query.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!(cosine(&query, &near) > cosine(&query, &far) + 0.2);
        // Deterministic, case-insensitive, and stop words carry nothing.
        assert_eq!(embed("Pod restart", 64), embed("the pod RESTART", 64));
        assert!(embed("the of", 8).iter().all(|x| *x == 0.0));
        // Trigrams make inflections related.
        let pods = embed("pods", DEFAULT_DIM);
        assert!(cosine(&embed("pod", DEFAULT_DIM), &pods) > 0.1);
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let parse = |body: Value| EmbedRequest::parse(&body, "m", DEFAULT_DIM);
        let one = parse(json!({"input": "hello"})).unwrap();
        assert_eq!(
            (one.model.as_str(), one.inputs.len(), one.dim),
            ("m", 1, 256)
        );
        let custom = parse(json!({"model": "e", "input": ["a", "b"], "dimensions": 8})).unwrap();
        assert_eq!((custom.inputs.len(), custom.dim), (2, 8));
        assert_eq!(
            parse(json!({"input": []})).unwrap_err(),
            "input must not be empty"
        );
        assert_eq!(
            parse(json!({"input": ["a", 3]})).unwrap_err(),
            "input[1] must be a string"
        );
        assert!(parse(json!({"input": "a", "dimensions": 0}))
            .unwrap_err()
            .starts_with("dimensions"));
        assert!(parse(json!({"input": "a", "encoding_format": "base64"}))
            .unwrap_err()
            .starts_with("encoding_format"));
        let answer = custom.answer(1);
        assert_eq!(answer["data"].as_array().unwrap().len(), 1);
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
    }
}
