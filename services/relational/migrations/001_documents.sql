-- Runs as the admin role (services.core.provision); {schema} and {role} are quoted identifiers.
-- The table belongs to the relational role: it upserts (ON CONFLICT DO UPDATE) and deletes.
CREATE TABLE IF NOT EXISTS {schema}.documents (
    document_id    text PRIMARY KEY,
    saga_id        text NOT NULL,
    title          text,
    author         text,
    organisation   text,
    case_number    text,
    content_type   text NOT NULL,
    source_uri     text NOT NULL,
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),
    page_count     integer NOT NULL CHECK (page_count >= 0),
    chunk_count    integer NOT NULL CHECK (chunk_count >= 0),
    content_sha256 text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    security_level text NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL,
    submitted_at   timestamptz NOT NULL,
    completed_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS documents_case_number ON {schema}.documents (case_number);
CREATE INDEX IF NOT EXISTS documents_content_sha256 ON {schema}.documents (content_sha256);
ALTER TABLE {schema}.documents OWNER TO {role};
