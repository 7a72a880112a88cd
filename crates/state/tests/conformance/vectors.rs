//! Chunk vectors: stored with their chunks, replaced with them, deleted with them.

use super::{chunk, doc};
use agentmesh_state::{ChunkVectors, State, StateError};
use std::collections::HashMap;

fn vectors(model: &str, vs: &[[f32; 3]]) -> ChunkVectors {
    ChunkVectors {
        model: model.into(),
        vectors: vs.iter().map(|v| v.to_vec()).collect(),
    }
}

/// Text of each stored chunk of `model` -> its vector.
async fn stored(state: &State, model: &str) -> HashMap<String, Vec<f32>> {
    let db = &state.db;
    let all = db.chunk_vectors(model, 1_000).await.unwrap();
    let ids: Vec<i64> = all.iter().map(|v| v.chunk_id).collect();
    let chunks: HashMap<i64, String> = db
        .chunks_by_id(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, c)| (id, format!("{}:{}", c.document_id, c.text)))
        .collect();
    assert_eq!(chunks.len(), ids.len(), "every vector has its chunk");
    all.into_iter()
        .map(|v| (chunks[&v.chunk_id].clone(), v.vector))
        .collect()
}

pub(super) async fn chunk_vectors_follow_their_chunks(state: &State) {
    let db = &state.db;
    let two = vec![chunk("A", "alpha text"), chunk("A > B", "beta text")];
    let replaced = db
        .upsert_document_with_vectors(
            doc("d1", "One"),
            two.clone(),
            vectors("m", &[[1.0, 0.0, 0.0], [0.0, 1.0, -0.5]]),
        )
        .await
        .unwrap();
    assert!(!replaced);
    db.upsert_document_with_vectors(
        doc("d2", "Two"),
        vec![chunk("C", "gamma text")],
        vectors("m", &[[0.0, 0.0, 1.0]]),
    )
    .await
    .unwrap();
    db.upsert_document(doc("plain", "No vectors"), vec![chunk("P", "plain")])
        .await
        .unwrap();

    let got = stored(state, "m").await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got["d1:beta text"],
        vec![0.0, 1.0, -0.5],
        "f32 values round-trip"
    );
    assert!(db
        .chunk_vectors("other-model", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.chunk_vectors("m", 2).await.unwrap().len(), 2, "limit");
    let hits = db.search_chunks("alpha", 5).await.unwrap();
    assert_eq!(hits[0].text, "alpha text", "full text sees the same chunks");

    // Re-ingesting replaces the document's vectors with its new chunks' vectors.
    let replaced = db
        .upsert_document_with_vectors(
            doc("d1", "One v2"),
            vec![chunk("A", "delta text")],
            vectors("m", &[[0.5, 0.5, 0.0]]),
        )
        .await
        .unwrap();
    assert!(replaced);
    let got = stored(state, "m").await;
    let mut keys: Vec<&str> = got.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["d1:delta text", "d2:gamma text"]);
    assert_eq!(got["d1:delta text"], vec![0.5, 0.5, 0.0]);

    // Re-ingesting without vectors drops the old ones too.
    db.upsert_document(doc("d2", "Two v2"), vec![chunk("C", "gamma again")])
        .await
        .unwrap();
    assert_eq!(stored(state, "m").await.len(), 1);

    // Deleting removes them.
    assert!(db.delete_document("d1").await.unwrap());
    assert!(db.chunk_vectors("m", 10).await.unwrap().is_empty());
    assert!(db.chunks_by_id(&[]).await.unwrap().is_empty());
    assert!(db.chunks_by_id(&[i64::MAX]).await.unwrap().is_empty());

    // Vectors that do not fit are refused and nothing is stored.
    for bad in [
        vectors("m", &[[1.0, 0.0, 0.0]]),
        ChunkVectors {
            model: "m".into(),
            vectors: vec![vec![1.0], vec![1.0, 2.0]],
        },
        vectors("", &[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        vectors("m", &[[f32::INFINITY, 0.0, 0.0], [1.0, 0.0, 0.0]]),
    ] {
        let err = db
            .upsert_document_with_vectors(doc("bad", "Bad"), two.clone(), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::Invalid(_)), "{err:?}");
    }
    let ids: Vec<String> = db
        .list_documents()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert!(!ids.contains(&"bad".to_string()), "{ids:?}");
}
