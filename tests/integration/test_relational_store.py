"""The relational step against the real PostgreSQL: the row, idempotency, undo."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.core.config import Settings
from services.core.events import (
    DOCUMENT_SUBMITTED,
    GRAPH_LINKED,
    INTEGRITY_VERIFIED,
    RELATIONAL_RECORDED,
    SECURITY_RECORDED,
    UPLOAD_COMPLETED,
    VECTORS_INDEXED,
    Event,
)
from services.core.step import Context
from services.core.steplog import StepLog, message_of
from services.relational.step import RelationalStep

pytestmark = pytest.mark.stack
SHA = "7a" * 32


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    """The run's provisioned database; a stack that is down fails the run, it is never skipped."""
    return stack


@pytest.fixture(scope="module")
def step(settings: Settings) -> Iterator[RelationalStep]:
    s = RelationalStep.from_settings(settings)
    s.start()
    yield s
    s.stop()


def saga(doc: str) -> list[Event]:
    """The events before GraphLinked, GraphLinked last."""
    sub = Event(DOCUMENT_SUBMITTED, doc, str(uuid.uuid4()), producer="client", payload={
        "source_uri": f"/data/{doc}.pdf", "size_bytes": 100, "content_type": "application/pdf",
        "title": "Row test", "author": "Ada", "organisation": "ACME", "case_number": "C-1",
        "references": [], "metadata": {"k": "v"}, "security_level": "internal", "submitter": "bob"})
    up = sub.follow(UPLOAD_COMPLETED, "uploader", operation_id="op", manifest_uri="m", sha256=SHA,
                    size_bytes=100, chunk_count=1)
    ver = up.follow(INTEGRITY_VERIFIED, "verifier", sha256=SHA, chunks_checked=1, size_bytes=100)
    sec = ver.follow(SECURITY_RECORDED, "security", identity="i", content_sha256=SHA, classification="internal",
                     submitter="bob", audit_entry=1)
    vec = sec.follow(VECTORS_INDEXED, "vector", collection="c", chunk_count=8, page_count=2,
                     pages_without_text=0, embedding_model="m")
    return [sub, up, sec, vec, vec.follow(GRAPH_LINKED, "graph", node_id=doc, relations=3)]


def run(step: RelationalStep, settings: Settings, events: list[Event]) -> StepLog:
    log = StepLog("relational", events[0].document_id)
    for e in events:
        log.receive(message_of(e))
    step.handle(events[-1], log, Context(settings))
    return log


def test_row_lands_and_saga_completes(step: RelationalStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    events = saga(doc)
    log = run(step, settings, events)
    row = step.table.get(doc)
    assert row is not None
    assert (row["saga_id"], row["title"], row["content_sha256"], row["chunk_count"], row["page_count"],
            row["size_bytes"], row["metadata"], row["status"]) == (
        events[0].saga_id, "Row test", SHA, 8, 2, 100, {"k": "v"}, "completed")
    assert [m["event_type"] for m in log.emitted] == [RELATIONAL_RECORDED]  # the runtime then completes the saga
    recorded = log.last_emitted(RELATIONAL_RECORDED)
    assert recorded is not None and dict(recorded.payload) == {"table": "relational.documents", "row_id": doc}


def test_handling_twice_changes_nothing(step: RelationalStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    events = saga(doc)
    first = run(step, settings, events)
    row1 = step.table.get(doc)
    second = run(step, settings, events)
    row2 = step.table.get(doc)
    assert row1 is not None and row2 is not None
    assert [m["event_id"] for m in first.emitted] == [m["event_id"] for m in second.emitted]
    assert {k: v for k, v in row1.items() if k != "updated_at"} == {k: v for k, v in row2.items()
                                                                    if k != "updated_at"}


def test_undo_deletes_the_row(step: RelationalStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    log = run(step, settings, saga(doc))
    assert step.undo(log, Context(settings)).removed == 1
    assert step.table.get(doc) is None
    assert step.undo(log, Context(settings)).removed == 0
