"""The relational service's port: the same assertions against the in-memory and the PostgreSQL
adapter, so a test that uses the in-memory one tests what production does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.core.config import Settings
from services.relational.adapters import Documents, DocumentsTable, InMemoryDocuments
from services.relational.row import DocumentRow

pytestmark = pytest.mark.stack
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["in-memory", "postgresql"])
def documents(request: pytest.FixtureRequest, stack: Settings) -> Iterator[Documents]:
    port: Documents = InMemoryDocuments() if request.param == "in-memory" else \
        DocumentsTable(stack.pg_dsn(*stack.service_role("relational")))
    port.open()
    yield port
    port.close()


def row(**changes: object) -> DocumentRow:
    base = DocumentRow(
        document_id=str(uuid.uuid4()), saga_id=str(uuid.uuid4()), title="T", author=None, organisation="O",
        case_number=None, content_type="application/pdf", source_uri="file:///inbox/a.pdf", size_bytes=10,
        page_count=2, chunk_count=3, content_sha256="ab" * 32, security_level="internal", metadata={"k": "v"},
        status="completed", submitted_at=T0, completed_at=T0 + timedelta(seconds=5))
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_row_reads_back_as_written(documents: Documents) -> None:
    written = row()
    documents.upsert(written)
    found = documents.get(written.document_id)
    assert found is not None and found.pop("updated_at") is not None
    assert found == written.columns()


def test_an_upsert_replaces_the_row_but_keeps_its_first_completion(documents: Documents) -> None:
    first = row()
    documents.upsert(first)
    documents.upsert(replace(first, title="Changed", completed_at=T0 + timedelta(hours=1)))
    found = documents.get(first.document_id)
    assert found is not None and (found["title"], found["completed_at"]) == ("Changed", first.completed_at)


def test_delete_removes_the_row_once(documents: Documents) -> None:
    written, other = row(), row()
    documents.upsert(written)
    documents.upsert(other)
    assert documents.delete(written.document_id) == 1
    assert documents.delete(written.document_id) == 0
    assert documents.get(written.document_id) is None and documents.get(other.document_id) is not None
    documents.delete(other.document_id)
