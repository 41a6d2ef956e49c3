-- Runs as the admin role (services.operator.provision); {schema} and {role} are quoted identifiers.
-- The fan-out ledger of large documents (services/vector/items.py): one plan per document, one row
-- per work item. The plan row is also the fence: workers hold it FOR SHARE while they write a
-- batch of vectors, and an undo sets `fenced` (waiting for those batches) before it deletes.
CREATE TABLE IF NOT EXISTS {schema}.item_plans (
    document_id text PRIMARY KEY,
    items       integer NOT NULL CHECK (items > 0),
    pages       integer NOT NULL CHECK (pages > 0),
    item_pages  integer NOT NULL CHECK (item_pages > 0),
    fenced      boolean NOT NULL DEFAULT false,
    planned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.items (
    document_id        text NOT NULL REFERENCES {schema}.item_plans ON DELETE CASCADE,
    item               integer NOT NULL CHECK (item >= 0),
    chunks_done        integer NOT NULL DEFAULT 0,
    pages_done         integer NOT NULL DEFAULT 0,
    pages_without_text integer NOT NULL DEFAULT 0,
    done               boolean NOT NULL DEFAULT false,
    PRIMARY KEY (document_id, item)
);
ALTER TABLE {schema}.item_plans OWNER TO {role};
ALTER TABLE {schema}.items OWNER TO {role};
