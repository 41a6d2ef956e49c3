"""What each store holds for a document, read directly from the real stores (for G2 checks)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from neo4j import GraphDatabase

from services.core.chunkstore import ChunkStore, chunks_of
from services.core.config import Settings
from services.vector.adapters import VectorIndex


@dataclass(frozen=True)
class Footprint:
    chunks: int
    vectors: int
    graph_nodes: int
    relational_rows: int
    security_records: int

    @property
    def empty(self) -> bool:
        return not any((self.chunks, self.vectors, self.graph_nodes, self.relational_rows, self.security_records))


def vector_count(document_id: str, s: Settings) -> int:
    index = VectorIndex.of(s).open()
    try:
        return index.count(document_id)
    finally:
        index.close()


def footprint(document_id: str, settings: Settings | None = None) -> Footprint:
    s = settings or Settings()
    vectors = vector_count(document_id, s)
    with GraphDatabase.driver(s.neo4j_uri, auth=(s.neo4j_user, s.neo4j_password)) as driver:
        nodes = driver.execute_query(
            "MATCH (d:Document {deployment: $dep, id: $id}) WHERE NOT coalesce(d.placeholder, false) "
            "RETURN count(d) AS n", dep=s.deployment, id=document_id).records[0]["n"]
    with psycopg.connect(s.pg_dsn()) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM relational.documents WHERE document_id = %s", (document_id,)
        ).fetchone()
        records = conn.execute(
            "SELECT count(*) FROM security.identities WHERE document_id = %s", (document_id,)
        ).fetchone()
    return Footprint(
        chunks_of(s).chunk_count(document_id),
        vectors,
        nodes,
        rows[0] if rows else 0,
        records[0] if records else 0,
    )


def content(document_id: str, settings: Settings | None = None) -> dict[str, object]:
    """What each store holds for the document, field by field (times of writing left out)."""
    from services.core.validation import uuid_id
    from services.graph.adapters import GraphStore

    s = settings or Settings()
    doc = uuid_id("document id", document_id)
    index = VectorIndex.of(s).open()
    try:
        assert index.client is not None
        rows = index.client.query(index.collection, filter=f'document_id == "{doc}"',
                                  output_fields=["id", "chunk", "page", "text"])
        vectors = sorted((r["id"], r["chunk"], r["page"], r["text"]) for r in rows)
    finally:
        index.close()
    graph = GraphStore.of(s)
    graph.open()
    try:
        node, relations = graph.node("Document", doc), graph.relations(doc)
    finally:
        graph.close()
    with psycopg.connect(s.pg_dsn()) as conn:
        row = conn.execute("SELECT * FROM relational.documents WHERE document_id = %s", (doc,)).fetchone()
        identity = conn.execute("SELECT identity, content_sha256, classification, submitter FROM "
                                "security.identities WHERE document_id = %s", (doc,)).fetchone()
        names = [d.name for d in conn.execute("SELECT * FROM relational.documents LIMIT 0").description or []]
    kept = {k: v for k, v in zip(names, row or (), strict=False) if k != "updated_at"}
    chunks = ChunkStore(s.chunk_store_dir)
    manifest = chunks.folder(doc) / "manifest.json"
    return {"chunks": manifest.read_text() if manifest.exists() else None, "vectors": vectors,
            "graph": (node, relations), "relational": kept, "security": identity}
