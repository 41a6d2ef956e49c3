"""The vector service's port (`Vectors`): the same assertions against the in-memory adapter and
Milvus (the stack's milvus-lite server), so a test that uses the in-memory one tests what
production does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services.core.config import Settings
from services.core.validation import InvalidInput
from services.vector.adapters import DIM, InMemoryVectors, VectorIndex, Vectors, chunk_key

pytestmark = pytest.mark.stack


@pytest.fixture(params=["in-memory", "milvus"])
def vectors(request: pytest.FixtureRequest, stack: Settings) -> Iterator[Vectors]:
    if request.param == "in-memory":
        yield InMemoryVectors()
        return
    index = VectorIndex(stack.milvus_uri, f"{stack.milvus_collection}_contract").open()
    yield index
    index.drop()
    index.close()


def axis(i: int) -> list[float]:
    """A unit vector along axis i: its nearest neighbour is unambiguous."""
    return [1.0 if d == i else 0.0 for d in range(DIM)]


def rows(doc: str, chunks: range) -> list[dict[str, Any]]:
    return [{"id": chunk_key(doc, 0, i), "document_id": doc, "page": 1 + i // 2, "chunk": i, "text": f"{doc} {i}",
             "vector": axis(i)} for i in chunks]


def test_rows_are_counted_and_found_by_their_vector(vectors: Vectors) -> None:
    doc, other = str(uuid.uuid4()), str(uuid.uuid4())
    vectors.upsert(rows(doc, range(4)))
    vectors.upsert(rows(other, range(4, 6)))
    assert (vectors.count(doc), vectors.count(other)) == (4, 2)
    best = vectors.search(axis(2), k=1)[0]
    assert (best["document_id"], best["chunk"], best["page"], best["text"]) == (doc, 2, 2, f"{doc} 2")
    assert (best["ocr"], best["ocr_confidence"]) == (False, 0.0)  # not given: a typed page
    assert best["score"] == pytest.approx(1.0, abs=1e-3)
    assert {h["document_id"] for h in vectors.search(axis(2), k=10, document_id=other)} == {other}


def test_a_chunk_read_by_ocr_says_so_with_its_confidence(vectors: Vectors) -> None:
    doc = str(uuid.uuid4())
    vectors.upsert([{**row, "ocr": True, "ocr_confidence": 91.5} for row in rows(doc, range(7, 8))])
    (hit,) = vectors.search(axis(7), k=1, document_id=doc)
    assert (hit["ocr"], hit["ocr_confidence"]) == (True, pytest.approx(91.5))


def test_an_upsert_of_the_same_keys_replaces_them(vectors: Vectors) -> None:
    """A replayed batch writes the same deterministic ids: nothing is added."""
    doc = str(uuid.uuid4())
    vectors.upsert(rows(doc, range(3)))
    vectors.upsert(rows(doc, range(3)))
    assert vectors.count(doc) == 3


def test_delete_removes_one_documents_rows_only(vectors: Vectors) -> None:
    doc, other = str(uuid.uuid4()), str(uuid.uuid4())
    vectors.upsert(rows(doc, range(3)))
    vectors.upsert(rows(other, range(2)))
    assert vectors.delete_document(doc) == 3
    assert vectors.delete_document(doc) == 0
    assert vectors.documents() == {other: 2}


def test_a_document_id_that_is_not_a_uuid_is_refused(vectors: Vectors) -> None:
    doc = str(uuid.uuid4())
    vectors.upsert(rows(doc, range(2)))
    for act in (vectors.count, vectors.delete_document, lambda d: vectors.search(axis(0), 5, d)):
        with pytest.raises(InvalidInput):
            act('" || id != "')
    assert vectors.count(doc) == 2
