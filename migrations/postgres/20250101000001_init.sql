-- agentmesh schema, Postgres.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    scopes       TEXT[] NOT NULL DEFAULT '{}',
    rpm_limit    BIGINT,
    tpm_limit    BIGINT,
    budget_usd   DOUBLE PRECISION,
    spent_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position        BIGINT NOT NULL,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, position)
);

CREATE TABLE documents (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    source     TEXT NOT NULL,
    metadata   JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chunks (
    id          BIGSERIAL PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal     INTEGER NOT NULL,
    heading     TEXT NOT NULL,
    text        TEXT NOT NULL,
    tsv         TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', heading), 'A')
        || setweight(to_tsvector('english', text), 'B')
    ) STORED,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_tsv_idx ON chunks USING GIN (tsv);

-- Registry of uploaded CSV tables; the tables themselves live in schema `datasets`.
CREATE TABLE datasets (
    name       TEXT PRIMARY KEY,
    columns    JSONB NOT NULL,
    row_count  BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE SCHEMA IF NOT EXISTS datasets;

CREATE TABLE usage (
    request_id        TEXT PRIMARY KEY,
    key_id            TEXT NOT NULL,
    agent             TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd          DOUBLE PRECISION NOT NULL,
    latency_ms        BIGINT NOT NULL,
    status            INTEGER NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX usage_key_created_idx ON usage (key_id, created_at);
CREATE INDEX usage_created_idx ON usage (created_at);

CREATE TABLE idempotency (
    key_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('in_progress', 'done')),
    response   JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, key)
);

-- A role that may only read schema `datasets`: dataset queries switch to it with
-- SET LOCAL ROLE, so even a schema-qualified `public.api_keys` is refused.
-- Roles are cluster-wide: creation tolerates a concurrent creator and a user
-- without CREATEROLE (the state layer then falls back to search_path isolation).
DO $$
BEGIN
    BEGIN
        CREATE ROLE agentmesh_datasets_reader NOLOGIN;
    EXCEPTION
        WHEN duplicate_object OR unique_violation THEN NULL;
        WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role agentmesh_datasets_reader';
    END;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentmesh_datasets_reader') THEN
        BEGIN
            GRANT USAGE ON SCHEMA datasets TO agentmesh_datasets_reader;
            IF NOT pg_has_role(current_user, 'agentmesh_datasets_reader', 'MEMBER') THEN
                EXECUTE format('GRANT agentmesh_datasets_reader TO %I', current_user);
            END IF;
        EXCEPTION
            WHEN insufficient_privilege OR unique_violation THEN
                RAISE NOTICE 'cannot grant agentmesh_datasets_reader';
        END;
    END IF;
END
$$;
