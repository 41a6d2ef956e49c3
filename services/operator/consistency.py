"""The consistency audit (G2): does every store agree with the event store, document by document?

`check()` is a pure comparison of an `Inventory` (what the event store says about each
document, and what each store holds); `gather()` does the reading (chunk store, Milvus,
Neo4j, PostgreSQL and the six event stores); `audit()` is both. The rules:

* **Completed**: chunk store, vectors, graph node, relational row and security record all
  exist; the stored chunk count equals the upload's, the vector count equals the text
  chunk count of DocumentCompleted / VectorsIndexed (and of the relational row), and every
  store names the same content hash as the saga.
* **Compensated**: nothing is left anywhere.
* **CompensationFailed**: what is left is expected (the event names it); reported as a note
  for the operator (`uds3 saga retry`), not as a violation.
* **Running / Compensating**: in flight, anything goes.
* **Unknown** (the event store has no saga for the document): anything stored is an orphan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core.config import Settings
from services.core.events import (
    COMPENSATION_FAILED,
    DOCUMENT_COMPLETED,
    UPLOAD_COMPLETED,
    VECTORS_INDEXED,
)

STORES = ("chunks", "vectors", "graph", "relational", "security")
IN_FLIGHT = frozenset({"Running", "Compensating"})


@dataclass(frozen=True)
class SagaFacts:
    """What the event store says about one document."""

    status: str  # Completed, Compensated, CompensationFailed, Running, Compensating, Unknown
    upload_chunks: int | None = None  # UploadCompleted.chunk_count (5 MB chunks)
    text_chunks: int | None = None  # DocumentCompleted / VectorsIndexed chunk_count (= vectors)
    content_sha256: str | None = None
    remaining: tuple[str, ...] = ()  # CompensationFailed: steps whose work is still in place


@dataclass(frozen=True)
class Held:
    """What one store holds for one document: how many items, and the content hash it names."""

    count: int = 1
    sha256: str | None = None


@dataclass
class Inventory:
    """The inputs of the audit: the sagas, and per store what it holds per document."""

    sagas: dict[str, SagaFacts] = field(default_factory=dict)
    chunks: dict[str, Held] = field(default_factory=dict)  # upload chunks + manifest hash
    vectors: dict[str, Held] = field(default_factory=dict)  # vector count
    graph: dict[str, Held] = field(default_factory=dict)  # Document node (not a placeholder)
    relational: dict[str, Held] = field(default_factory=dict)  # row; count = its chunk_count
    security: dict[str, Held] = field(default_factory=dict)  # identity record

    def held(self, document_id: str) -> dict[str, Held]:
        """The stores that hold something for the document."""
        found = {}
        for store in STORES:
            h = getattr(self, store).get(document_id)
            if h is not None and (store != "vectors" or h.count > 0):
                found[store] = h
        return found

    def documents(self) -> list[str]:
        ids: set[str] = set(self.sagas)
        for store in STORES:
            ids.update(getattr(self, store))
        return sorted(ids)


@dataclass(frozen=True)
class Violation:
    document_id: str
    kind: str  # missing, mismatch, leftover, orphan
    detail: str
    stores: tuple[str, ...] = ()  # of a completed document: the stores that disagree (what a repair redoes)

    def __str__(self) -> str:
        return f"{self.document_id} {self.kind}: {self.detail}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    notes: list[Violation] = field(default_factory=list)  # not violations: needs an operator
    statuses: Counter[str] = field(default_factory=Counter)
    documents: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "statuses": dict(self.statuses),
            "violations": [v.__dict__ for v in self.violations],
            "notes": [n.__dict__ for n in self.notes],
        }


def check(inv: Inventory) -> Report:
    """Every G2 violation in the inventory (pure)."""
    report = Report()
    for doc in inv.documents():
        saga = inv.sagas.get(doc, SagaFacts("Unknown"))
        report.statuses[saga.status] += 1
        report.documents += 1
        held = inv.held(doc)
        if saga.status == "Completed":
            report.violations += _check_completed(doc, saga, held)
        elif saga.status == "Compensated":
            if held:
                report.violations.append(Violation(doc, "leftover", f"compensated, but still in {_names(held)}"))
        elif saga.status == "CompensationFailed":
            left = _names(held) if held else "nothing"
            report.notes.append(Violation(
                doc, "compensation-failed",
                f"left in {left} (remaining steps: {', '.join(saga.remaining) or '?'}); re-drive: uds3 saga retry"))
        elif saga.status in IN_FLIGHT:
            continue
        elif held:
            report.violations.append(Violation(doc, "orphan", f"no saga in the event store, but in {_names(held)}"))
    return report


def _check_completed(doc: str, saga: SagaFacts, held: Mapping[str, Held]) -> list[Violation]:
    out: list[Violation] = []
    expect_vectors = saga.text_chunks
    required = [s for s in STORES if not (s == "vectors" and expect_vectors == 0)]
    missing = [s for s in required if s not in held]
    if missing:
        out.append(Violation(doc, "missing", f"completed, but nothing in {', '.join(missing)}", tuple(missing)))
    chunks = held.get("chunks")
    if chunks and saga.upload_chunks is not None and chunks.count != saga.upload_chunks:
        recorded = saga.upload_chunks
        out.append(Violation(doc, "mismatch", f"{chunks.count} stored chunks, the upload recorded {recorded}",
                             ("chunks",)))
    vectors = held.get("vectors")
    count = vectors.count if vectors else 0
    if expect_vectors is not None and count != expect_vectors and "vectors" not in missing:
        out.append(Violation(doc, "mismatch", f"vector count {count} != chunk_count {expect_vectors}", ("vectors",)))
    row = held.get("relational")
    if row and expect_vectors is not None and row.count != expect_vectors:
        out.append(Violation(doc, "mismatch", f"relational chunk_count {row.count} != {expect_vectors}",
                             ("relational",)))
    if saga.content_sha256:
        for store, h in held.items():
            if h.sha256 is not None and h.sha256.lower() != saga.content_sha256.lower():
                out.append(Violation(
                    doc, "mismatch", f"{store} names content {h.sha256[:12]}, the saga {saga.content_sha256[:12]}",
                    (store,)))
    return out


def _names(held: Mapping[str, Held]) -> str:
    return ", ".join(f"{s} ({h.count})" if s in ("chunks", "vectors") else s for s, h in held.items())


# --- gathering (real I/O) ---------------------------------------------------------------------
def saga_facts(state: Any) -> SagaFacts:
    """The facts the audit needs from a folded saga (services.operator.state.SagaState)."""
    if not state.history:
        return SagaFacts("Unknown")
    last: dict[str, dict[str, Any]] = {}
    for m in state.history:
        last[m["event_type"]] = m["payload"]
    upload = last.get(UPLOAD_COMPLETED, {})
    done = last.get(DOCUMENT_COMPLETED) or last.get(VECTORS_INDEXED) or {}
    failed = last.get(COMPENSATION_FAILED, {})
    text_chunks = done.get("chunk_count")
    return SagaFacts(
        status=state.status,
        upload_chunks=upload.get("chunk_count"),
        text_chunks=int(text_chunks) if text_chunks is not None else None,
        content_sha256=upload.get("sha256") or last.get(DOCUMENT_COMPLETED, {}).get("content_sha256"),
        remaining=tuple(failed.get("remaining") or ()),
    )


def gather(settings: Settings | None = None, documents: Iterable[str] | None = None) -> Inventory:
    """Reads every store. With `documents`, only those documents (shared stores stay quick and
    other runs' documents out of it); without, everything every store holds."""

    import psycopg
    from neo4j import GraphDatabase

    from services.core.chunkstore import chunks_of
    from services.operator.state import SagaReader
    from services.vector.adapters import VectorIndex

    s = settings or Settings()
    scope = sorted(set(documents)) if documents is not None else None
    inv = Inventory()

    chunk_store = chunks_of(s)
    for doc in scope if scope is not None else chunk_store.documents():
        n, sha = chunk_store.chunk_count(doc), chunk_store.whole_sha256(doc)
        if n or sha is not None:
            inv.chunks[doc] = Held(n, sha)

    index = VectorIndex.of(s).open()
    try:
        for doc, n in index.documents().items():
            if scope is None or doc in scope:
                inv.vectors[doc] = Held(n)
    finally:
        index.close()

    with GraphDatabase.driver(s.neo4j_uri, auth=(s.neo4j_user, s.neo4j_password)) as driver:
        query = "MATCH (d:Document {deployment: $dep}) WHERE NOT coalesce(d.placeholder, false)"  # ours only
        query += " AND d.id IN $ids" if scope is not None else ""
        records = driver.execute_query(query + " RETURN d.id AS id, d.sha256 AS sha", dep=s.deployment,
                                       ids=scope or []).records
        for r in records:
            inv.graph[r["id"]] = Held(1, r["sha"])

    with psycopg.connect(s.pg_dsn()) as conn:
        where = " WHERE document_id = ANY(%s)" if scope is not None else ""
        params = (scope,) if scope is not None else ()
        for doc, sha, chunk_count in conn.execute(
                "SELECT document_id, content_sha256, chunk_count FROM relational.documents" + where, params):
            inv.relational[doc] = Held(chunk_count, sha)
        for doc, sha in conn.execute("SELECT document_id, content_sha256 FROM security.identities" + where, params):
            inv.security[doc] = Held(1, sha)

    reader = SagaReader(s)
    known = scope if scope is not None else sorted(set(reader.document_ids()) | set(inv.documents()))
    for doc in known:
        inv.sagas[doc] = saga_facts(reader.state(doc))
    return inv


def audit(settings: Settings | None = None, documents: Iterable[str] | None = None) -> Report:
    return check(gather(settings, documents))
