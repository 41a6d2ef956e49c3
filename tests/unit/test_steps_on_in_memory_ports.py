"""Each step's own logic on its in-memory port: no stack, milliseconds per test. The contract
tests (`test_*_contract.py`) show the in-memory ports behave as the real ones, so what holds
here holds in production; the integration tests run the same steps on the real stores."""

from __future__ import annotations

import uuid
from pathlib import Path

from services.core.chunkstore import InMemoryChunks
from services.core.config import Settings
from services.core.events import INTEGRITY_VERIFIED, UPLOAD_COMPLETED
from services.core.step import Context
from services.graph.adapters import InMemoryGraph
from services.graph.step import GraphStep
from services.relational.adapters import InMemoryDocuments
from services.relational.step import RelationalStep
from services.security.adapters import InMemorySecurityRecords
from services.security.audit import check_chain
from services.security.step import SecurityStep
from services.uploader.step import UploaderStep
from services.verifier.step import VerifierStep
from tests.integration import test_graph_store as graph_case
from tests.integration import test_relational_store as relational_case
from tests.integration import test_security_store as security_case
from tests.integration.test_uploader import binary_pdf, harness, make_settings, submission

SETTINGS = Settings()


def test_relational_step_upserts_once_and_undoes() -> None:
    step, doc = RelationalStep(InMemoryDocuments()), str(uuid.uuid4())
    events = relational_case.saga(doc)
    first = relational_case.run(step, SETTINGS, events)
    again = relational_case.run(step, SETTINGS, events)
    row = step.table.get(doc)
    assert row is not None and (row["title"], row["chunk_count"], row["status"]) == ("Row test", 8, "completed")
    assert [m["event_id"] for m in first.emitted] == [m["event_id"] for m in again.emitted]
    assert step.undo(first, Context(SETTINGS)).removed == 1 and step.table.get(doc) is None


def test_graph_step_links_a_shared_organisation_that_outlives_one_undo() -> None:
    graph = InMemoryGraph()
    step, docs = GraphStep(graph), [str(uuid.uuid4()) for _ in range(2)]
    for doc in docs:
        graph_case.run(step, SETTINGS, graph_case.saga(doc, organisation="Shared Org", author=f"A {doc[:8]}"))
    assert graph.node("Organisation", "Shared Org") is not None
    assert graph_case.undo(step, SETTINGS, docs[0]) > 0
    assert graph.node("Document", docs[0]) is None and graph.node("Organisation", "Shared Org") is not None
    graph_case.undo(step, SETTINGS, docs[1])
    assert graph.node("Organisation", "Shared Org") is None


def test_security_step_removes_the_identity_and_keeps_a_chained_trail() -> None:
    records = InMemorySecurityRecords()
    step, doc = SecurityStep(records), str(uuid.uuid4())
    _, log = security_case.run(step, SETTINGS, security_case.submitted(doc))
    assert records.identity(doc) is not None
    assert step.undo(log, Context(SETTINGS)).removed == 1 and records.identity(doc) is None
    assert len(records.entries(doc)) == 2 and check_chain(records.trail) == []


def test_the_verifier_finds_a_chunk_changed_after_upload(tmp_path: Path) -> None:
    settings, chunks = make_settings(tmp_path, chunk_bytes=64 * 1024), InMemoryChunks()
    uploader, verifier = harness(UploaderStep(chunks), settings), harness(VerifierStep(chunks), settings)
    good, bad = (submission(binary_pdf(settings.allowed_root / f"{n}.pdf", 3 * 64 * 1024 + 9)) for n in "ab")
    for sub in (good, bad):
        uploader.feed(sub)
        verifier.feed(sub)
    chunks.chunks[bad.document_id][1] = b"changed"
    for sub in (good, bad):
        verifier.feed(uploader.last(sub.document_id, UPLOAD_COMPLETED))
    assert verifier.emitted(good.document_id) == [INTEGRITY_VERIFIED]
    assert "chunk 1 is corrupted" in verifier.last(bad.document_id, "IntegrityFailed").payload["reason"]
