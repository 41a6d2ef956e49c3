"""Step 6 (vector) with the real model and its own collection on the stack's milvus-lite server:
chunks, pages, failures, resume, search.

The documents are uploaded by the real uploader step into a chunk store in a tmp folder, and the
vector step reads them back through `ChunkedReader`, as in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF

from services.core.config import Settings
from services.core.events import SECURITY_RECORDED, UPLOAD_COMPLETED, VECTORS_INDEXED, VECTORS_PROGRESSED, Event
from services.core.step import Interrupted
from services.core.steplog import StepLog
from services.vector.adapters import TEXT_MAX
from services.vector.embedding import Embedder, Vectors
from services.vector.step import VectorStep
from services.vector.text import chunk_pages, iter_pdf_pages, iter_text_blocks
from tests.documents import paragraph, pdf_file, text_file
from tests.integration.test_uploader import Crash, Harness, harness, make_settings, submission

BATCH = 4
PASSAGE = (
    "The harbour master kept a ledger of every steamship that entered the port, and on the ninth of March "
    "he recorded that the Aurora arrived from Lisbon carrying cork, olive oil and forty passengers."
)


pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, stack: Settings) -> Settings:
    tmp = tmp_path_factory.mktemp("vector")
    return make_settings(tmp, milvus_collection=f"{stack.milvus_collection}_step", embed_batch=BATCH)


class CountingEmbedder:
    """The real embedder, noting the chunk texts it was given (to measure re-work after a crash)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> Vectors:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def embedder(step: VectorStep) -> Iterator[CountingEmbedder]:
    real = step.embedder
    counting = CountingEmbedder(real)
    step.embedder = counting
    yield counting
    step.embedder = real


@pytest.fixture
def vector(step: VectorStep, settings: Settings, embedder: CountingEmbedder) -> Harness:
    return harness(step, settings, started=True)


@pytest.fixture
def uploader(settings: Settings) -> Harness:
    from services.uploader.step import UploaderStep

    return harness(UploaderStep.from_settings(settings), settings)


def secured(uploader: Harness, vector: Harness, source: Path) -> Event:
    """Uploads `source`; returns the SecurityRecorded event that starts the vector step (which
    has the submission, as it would from the submissions topic)."""
    sub = submission(source)
    uploader.feed(sub)
    vector.feed_from_another_topic(sub)
    vector.feed_from_another_topic(uploader.last(sub.document_id, UPLOAD_COMPLETED))  # it says the format
    return sub.follow(SECURITY_RECORDED, "security", document_uuid=sub.document_id, content_sha256="00" * 32)


def rows(step: VectorStep, doc: str) -> list[dict[str, Any]]:
    found = step.vectors.client.query(
        step.vectors.collection, filter=f'document_id == "{doc}"', output_fields=["chunk", "page", "text"]
    )
    return sorted(found, key=lambda r: r["chunk"])


def folder(settings: Settings, name: str) -> Path:
    path = settings.allowed_root / name
    path.mkdir(exist_ok=True)
    return path


# --- documents land -----------------------------------------------------------------------------------
def test_a_multi_page_pdf_lands_with_every_chunk_and_its_page(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings
) -> None:
    pages = [paragraph(100 + p, 1800) for p in range(6)]
    source = pdf_file(folder(settings, "pdf"), "case.pdf", pages, image_pages=2)
    expected = list(chunk_pages(iter_pdf_pages(lambda: source)))
    assert len(expected) >= 2 * len(pages)  # ~1800 characters a page, 1000-character chunks, 100 overlap
    start = secured(uploader, vector, source)
    vector.feed(start)
    doc = start.document_id
    done = vector.last(doc, VECTORS_INDEXED).payload
    assert done["chunk_count"] == len(expected)
    assert (done["page_count"], done["pages_without_text"]) == (8, 2)  # the two scans are reported
    stored = rows(step, doc)
    assert step.vectors.count(doc) == len(expected)
    assert [(r["chunk"], r["page"], r["text"]) for r in stored] == [(c.index, c.page, c.text) for c in expected]
    assert {r["page"] for r in stored} == set(range(1, 7))
    progress = [e.payload for e in vector.log(doc).emitted_of(VECTORS_PROGRESSED)]
    assert [p["batch"] for p in progress] == list(range(1, -(-len(expected) // BATCH) + 1))
    assert progress[-1]["chunks_done"] == len(expected)


def test_a_text_file_lands_in_chunks(vector: Harness, uploader: Harness, step: VectorStep, settings: Settings) -> None:
    text = "\n\n".join(paragraph(200 + i, 900) for i in range(14))
    source = text_file(folder(settings, "text"), "minutes.txt", text)
    with open(source, "rb") as f:
        expected = list(chunk_pages(iter_text_blocks(f)))
    start = secured(uploader, vector, source)
    vector.feed(start)
    done = vector.last(start.document_id, VECTORS_INDEXED).payload
    assert done["chunk_count"] == len(expected) == step.vectors.count(start.document_id)
    assert [r["text"] for r in rows(step, start.document_id)] == [c.text[:TEXT_MAX] for c in expected]


def test_a_document_of_scans_only_is_indexed_with_no_chunks_and_says_so(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings
) -> None:
    source = pdf_file(folder(settings, "scans"), "scans.pdf", [], image_pages=3)
    start = secured(uploader, vector, source)
    vector.feed(start)
    done = vector.last(start.document_id, VECTORS_INDEXED).payload
    assert (done["chunk_count"], done["page_count"], done["pages_without_text"]) == (0, 3, 3)
    assert step.vectors.count(start.document_id) == 0


# --- documents that cannot be read ----------------------------------------------------------------------
def encrypted_pdf(path: Path) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    pdf.add_page()
    pdf.multi_cell(0, 5, "confidential " * 50)
    pdf.output(str(path))
    return path


def corrupt_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)  # a valid header, then garbage
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [(encrypted_pdf, "encrypted PDF: it needs a password"), (corrupt_pdf, "corrupt PDF: its content cannot be read")],
    ids=["encrypted", "corrupt"],
)
def test_an_unreadable_pdf_fails_with_a_clear_reason_and_leaves_no_vectors(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings, make: Any, reason: str
) -> None:
    source = make(folder(settings, "bad") / f"{uuid.uuid4().hex}.pdf")
    start = secured(uploader, vector, source)
    vector.feed(start)
    doc = start.document_id
    assert vector.emitted(doc) == ["VectorsFailed"]
    failed = vector.last(doc, "VectorsFailed").payload
    assert failed["reason"].startswith(reason), failed["reason"]
    assert failed["retryable"] is False
    assert step.vectors.count(doc) == 0


# --- resume (G4) ----------------------------------------------------------------------------------------
def long_pdf(settings: Settings, name: str, pages: int = 8) -> Path:
    return pdf_file(folder(settings, "long"), name, [paragraph(300 + p, 1900) for p in range(pages)])


def chunk_of(text: str, expected: list[str]) -> int:
    return expected.index(text)


def test_a_crash_mid_embedding_redoes_at_most_one_batch(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings, embedder: CountingEmbedder
) -> None:
    source = long_pdf(settings, "crash.pdf")
    expected = [c.text for c in chunk_pages(iter_pdf_pages(lambda: source))]
    start = secured(uploader, vector, source)
    doc = start.document_id

    def crash_at_third_checkpoint(log: StepLog) -> None:
        if sum(1 for _ in log.emitted_of(VECTORS_PROGRESSED)) == 3:
            raise Crash  # SIGKILL after batch 3 was embedded and upserted, before its checkpoint was recorded

    vector.on_checkpoint(crash_at_third_checkpoint)
    with pytest.raises(Crash):
        vector.feed(start, offset=1)
    before_crash = [chunk_of(t, expected) for t in embedder.texts]
    recorded = vector.log(doc).last_emitted(VECTORS_PROGRESSED)
    assert recorded is not None and recorded.payload["chunks_done"] == 2 * BATCH
    vector.checkpoints.clear()
    embedder.texts.clear()
    assert vector.feed(start, offset=1).action == "handled"  # Kafka redelivers the unfinished input
    after_restart = [chunk_of(t, expected) for t in embedder.texts]
    assert before_crash == list(range(3 * BATCH))
    assert after_restart == list(range(2 * BATCH, len(expected)))  # starts at the recorded chunks_done
    redone = set(before_crash) & set(after_restart)
    assert len(redone) == BATCH  # exactly the one batch whose checkpoint was lost
    progress = [e.payload for e in vector.log(doc).emitted_of(VECTORS_PROGRESSED)]
    assert [p["batch"] for p in progress] == list(range(1, len(progress) + 1))  # numbering continues
    assert progress[2]["chunks_done"] == 3 * BATCH
    assert vector.last(doc, VECTORS_INDEXED).payload["chunk_count"] == len(expected)
    assert step.vectors.count(doc) == len(expected)  # the redone batch was upserted over itself


def test_a_stopped_embedding_resumes_without_redoing_a_batch(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings, embedder: CountingEmbedder
) -> None:
    source = long_pdf(settings, "stop.pdf", pages=5)
    expected = [c.text for c in chunk_pages(iter_pdf_pages(lambda: source))]
    start = secured(uploader, vector, source)

    def stop_after_second_batch(log: StepLog) -> None:
        if sum(1 for _ in log.emitted_of(VECTORS_PROGRESSED)) == 2:
            vector.runtime.ctx.stopping.set()  # SIGTERM: the step stops at its next batch boundary

    vector.on_checkpoint(stop_after_second_batch)
    with pytest.raises(Interrupted):
        vector.feed(start, offset=1)
    vector.checkpoints.clear()
    vector.runtime.ctx.stopping.clear()
    vector.feed(start, offset=1)
    embedded = [chunk_of(t, expected) for t in embedder.texts]
    assert embedded == list(range(len(expected)))  # every chunk embedded exactly once
    assert step.vectors.count(start.document_id) == len(expected)


# --- idempotency, undo, search ---------------------------------------------------------------------------
def test_redelivery_changes_nothing_and_undo_removes_every_vector(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings, embedder: CountingEmbedder
) -> None:
    source = long_pdf(settings, "undo.pdf", pages=2)
    start = secured(uploader, vector, source)
    vector.feed(start, offset=1)
    doc = start.document_id
    count, embedded, emitted = step.vectors.count(doc), len(embedder.texts), vector.emitted(doc)
    assert vector.feed(start, offset=1).action == "redelivered"
    assert vector.feed(start, offset=2).action == "duplicate"
    assert (step.vectors.count(doc), len(embedder.texts), vector.emitted(doc)) == (count, embedded, emitted)
    failure = start.follow(
        "GraphFailed", "graph", step="Graph", reason="neo4j refused", retryable=False, error_type="PermanentError"
    )
    vector.feed(failure)
    vector.feed(failure)
    compensated = [e.payload for e in vector.log(doc).emitted_of("VectorsCompensated")]
    assert len(compensated) == 1 and compensated[0]["removed"] == count > 0
    assert step.vectors.count(doc) == 0


def test_search_finds_a_known_passage_in_the_top_three(
    vector: Harness, uploader: Harness, step: VectorStep, settings: Settings
) -> None:
    pages = [paragraph(400 + p, 1500) for p in range(3)]
    pages.insert(2, PASSAGE)
    source = pdf_file(folder(settings, "search"), "ledger.pdf", pages)
    start = secured(uploader, vector, source)
    vector.feed(start)
    query = step.embedder.embed(["which ship did the harbour master record arriving from Lisbon in March"])[0]
    hits = step.vectors.search(query.tolist(), k=3)
    ours = [h for h in hits if h["document_id"] == start.document_id and "Aurora arrived from Lisbon" in h["text"]]
    assert ours, hits
