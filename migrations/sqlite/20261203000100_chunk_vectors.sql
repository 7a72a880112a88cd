-- Embedding vectors of chunks: f32 little-endian bytes, one per chunk, tagged with the
-- embeddings model that made it. They go with their chunk (foreign keys are on).
CREATE TABLE chunk_vectors (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    model    TEXT NOT NULL,
    vector   BLOB NOT NULL
);
CREATE INDEX chunk_vectors_model_idx ON chunk_vectors (model, chunk_id);
