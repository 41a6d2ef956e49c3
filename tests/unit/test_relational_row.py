"""The relational row and the completion facts (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.core.errors import PermanentError
from services.core.events import (
    DOCUMENT_SUBMITTED,
    SECURITY_RECORDED,
    UPLOAD_COMPLETED,
    VECTORS_INDEXED,
    Event,
)
from services.core.saga import completion
from services.core.steplog import StepLog, message_of
from services.relational.row import COMPLETED, document_row

SHA = "cd" * 32
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def facts(sha: str = SHA) -> tuple[Event, Event, Event, Event]:
    sub = Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", occurred_at=T0, payload={
        "source_uri": "/data/a.pdf", "size_bytes": 10, "content_type": "application/pdf", "title": "T",
        "author": "A", "organisation": None, "case_number": "C-1", "metadata": {"k": "v"},
        "security_level": "public", "submitter": "bob", "references": []})
    up = sub.follow(UPLOAD_COMPLETED, "uploader", operation_id="op", manifest_uri="m", sha256=sha, size_bytes=12345,
                    chunk_count=1, content_type="application/pdf")
    sec = up.follow(SECURITY_RECORDED, "security", identity="i", content_sha256=SHA, classification="public",
                    submitter="bob", audit_entry=1)
    vec = sec.follow(VECTORS_INDEXED, "vector", collection="c", page_count=3, chunk_count=9, pages_without_text=0,
                     embedding_model="m")
    return sub, up, sec, vec


def test_row_from_events() -> None:
    now = T0 + timedelta(seconds=5)
    row = document_row(*facts(), now=now)
    assert row.columns() == {
        "document_id": "doc-1", "saga_id": "saga-1", "title": "T", "author": "A", "organisation": None,
        "case_number": "C-1", "content_type": "application/pdf", "source_uri": "/data/a.pdf",
        "size_bytes": 12345, "page_count": 3, "chunk_count": 9, "content_sha256": SHA,
        "security_level": "public", "metadata": {"k": "v"}, "status": COMPLETED, "submitted_at": T0,
        "completed_at": now,
    }
    log = StepLog("relational", "doc-1")
    for e in facts():
        log.receive(message_of(e))
    assert completion(log, now) == {"content_sha256": SHA, "chunk_count": 9, "page_count": 3,
                                    "duration_ms": 5000}  # the runtime's DocumentCompleted agrees with the row


def test_disagreeing_hashes_are_refused() -> None:
    with pytest.raises(PermanentError, match="disagrees"):
        document_row(*facts(sha="ef" * 32), now=T0)


def test_missing_events_are_named() -> None:
    sub, up, _, vec = facts()
    with pytest.raises(PermanentError, match="SecurityRecorded"):
        document_row(sub, up, None, vec, now=T0)
