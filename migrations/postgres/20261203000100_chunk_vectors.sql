-- Embedding vectors of chunks: f32 little-endian bytes (no pgvector here), one per chunk,
-- tagged with the embeddings model that made it. They go with their chunk: re-ingesting
-- or deleting a document deletes its chunks, which deletes their vectors.
CREATE TABLE chunk_vectors (
    chunk_id BIGINT PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    model    TEXT NOT NULL,
    vector   BYTEA NOT NULL
);
CREATE INDEX chunk_vectors_model_idx ON chunk_vectors (model, chunk_id);
