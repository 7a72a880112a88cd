//! Embedding vectors of chunks, stored as bytes (f32 little-endian) beside the chunks:
//! neither backend has a vector type here, so similarity is computed by the caller.

use crate::{Result, StateError};

/// The vectors of one document's chunks from one embeddings model:
/// `vectors[i]` belongs to the i-th chunk given with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkVectors {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
}

/// One stored vector and the chunk it belongs to (see [`crate::Database::chunks_by_id`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkVector {
    pub chunk_id: i64,
    pub vector: Vec<f32>,
}

impl ChunkVectors {
    /// Refuses vectors that do not fit `chunks` chunks: a wrong count, a ragged or empty
    /// vector, a value that is not finite, or no model name.
    pub fn check(&self, chunks: usize) -> Result<()> {
        let bad = |msg: String| Err(StateError::Invalid(msg));
        if self.model.trim().is_empty() {
            return bad("chunk vectors need the name of their model".into());
        }
        if self.vectors.len() != chunks {
            return bad(format!(
                "{} chunk vectors for {chunks} chunks",
                self.vectors.len()
            ));
        }
        let dim = self.vectors.first().map_or(0, Vec::len);
        for (i, v) in self.vectors.iter().enumerate() {
            if v.is_empty() || v.len() != dim {
                return bad(format!(
                    "chunk vector {i} has {} values, the first has {dim}",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return bad(format!("chunk vector {i} holds a value that is not finite"));
            }
        }
        Ok(())
    }
}

/// `vector` as stored: each value as 4 little-endian bytes.
pub(crate) fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector stored as `bytes`; None when the length is not a whole number of f32s.
pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    Some(values.collect())
}

/// Decodes stored rows, skipping (and logging) any whose bytes are damaged.
pub(crate) fn decode_rows(rows: Vec<(i64, Vec<u8>)>) -> Vec<ChunkVector> {
    rows.into_iter()
        .filter_map(|(chunk_id, bytes)| match from_bytes(&bytes) {
            Some(vector) => Some(ChunkVector { chunk_id, vector }),
            None => {
                tracing::warn!(chunk_id, bytes = bytes.len(), "stored chunk vector damaged");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_little_endian() {
        let v = vec![1.0f32, -0.5, 0.25];
        let bytes = to_bytes(&v);
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
        assert_eq!(from_bytes(&bytes), Some(v));
        assert_eq!(from_bytes(&[0, 0, 0]), None);
    }

    #[test]
    fn check_refuses_what_does_not_fit() {
        let ok = ChunkVectors {
            model: "m".into(),
            vectors: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        };
        assert!(ok.check(2).is_ok());
        assert!(ok.check(3).is_err());
        let ragged = ChunkVectors {
            vectors: vec![vec![1.0, 0.0], vec![1.0]],
            ..ok.clone()
        };
        assert!(ragged.check(2).is_err());
        let nan = ChunkVectors {
            vectors: vec![vec![f32::NAN, 0.0], vec![1.0, 0.0]],
            ..ok.clone()
        };
        assert!(nan.check(2).is_err());
        let unnamed = ChunkVectors {
            model: " ".into(),
            ..ok
        };
        assert!(unnamed.check(2).is_err());
    }
}
