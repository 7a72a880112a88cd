-- agentmesh schema, SQLite. Timestamps are RFC 3339 text in UTC.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    rpm_limit    INTEGER,
    tpm_limit    INTEGER,
    budget_usd   REAL,
    spent_usd    REAL NOT NULL DEFAULT 0,
    expires_at   TEXT,
    revoked_at   TEXT,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (conversation_id, position)
);

CREATE TABLE documents (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    source     TEXT NOT NULL,
    metadata   TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);

CREATE TABLE chunks (
    id          INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal     INTEGER NOT NULL,
    heading     TEXT NOT NULL,
    text        TEXT NOT NULL,
    UNIQUE (document_id, ordinal)
);

-- External-content FTS5 index over chunks, kept in step by triggers.
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    heading, text, content = 'chunks', content_rowid = 'id', tokenize = 'porter unicode61'
);
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, heading, text)
    VALUES ('delete', old.id, old.heading, old.text);
END;

-- Registry of uploaded CSV tables; the tables live in a separate database file.
CREATE TABLE datasets (
    name       TEXT PRIMARY KEY,
    columns    TEXT NOT NULL, -- JSON array of {name, type}
    row_count  INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE usage (
    request_id        TEXT PRIMARY KEY,
    key_id            TEXT NOT NULL,
    agent             TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL NOT NULL,
    latency_ms        INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    created_at        TEXT NOT NULL
);
CREATE INDEX usage_key_created_idx ON usage (key_id, created_at);
CREATE INDEX usage_created_idx ON usage (created_at);

CREATE TABLE idempotency (
    key_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('in_progress', 'done')),
    response   TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, key)
);
