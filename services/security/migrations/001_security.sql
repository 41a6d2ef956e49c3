-- Runs as the admin role (services.core.provision); {schema} and {role} are quoted identifiers.

-- The schema moves to the admin role: a schema owner may DROP any table in it, even one it
-- does not own, so the audit trail is only tamper-proof for the security role if the role
-- does not own the schema. It keeps USAGE and CREATE (its event store tables, which it
-- creates and owns itself, stay its own).
ALTER SCHEMA {schema} OWNER TO CURRENT_USER;
GRANT USAGE, CREATE ON SCHEMA {schema} TO {role};

-- One identity record per document; the service upserts and (on compensation) deletes it.
CREATE TABLE IF NOT EXISTS {schema}.identities (
    document_id    text PRIMARY KEY,
    identity       uuid NOT NULL UNIQUE,
    content_sha256 text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    classification text NOT NULL,
    submitter      text NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {schema}.identities OWNER TO {role};

-- Append-only, hash-chained audit trail. Owned by the admin role: the service may only
-- read and append (no UPDATE, DELETE, TRUNCATE), so it cannot rewrite history.
CREATE TABLE IF NOT EXISTS {schema}.audit_trail (
    seq         bigserial PRIMARY KEY,
    document_id text NOT NULL,
    event_id    text NOT NULL UNIQUE,   -- a redelivered event adds nothing
    event_type  text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL,
    prev_hash   text NOT NULL,
    entry_hash  text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_trail_document ON {schema}.audit_trail (document_id, seq);
REVOKE ALL ON {schema}.audit_trail FROM PUBLIC;
GRANT SELECT, INSERT ON {schema}.audit_trail TO {role};
GRANT USAGE ON SEQUENCE {schema}.audit_trail_seq_seq TO {role};
