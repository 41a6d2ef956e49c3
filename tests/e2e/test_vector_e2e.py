"""The vector step in the running saga: what lands in Milvus, unreadable PDFs, and resume after SIGKILL (G4).

Milvus is the session's milvus-lite file, served by the vector service process; the test reaches it
through the endpoint that process publishes (as the CLI does).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF

from services.client import Client
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPENSATED, DOCUMENT_COMPLETED, VECTORS_INDEXED, VECTORS_PROGRESSED, Event
from services.core.store import StepStore
from services.operator.state import SagaReader
from services.vector.adapters import VectorIndex
from services.vector.embedding import load_embedder
from services.vector.text import chunk_pages, iter_pdf_pages, iter_text_blocks
from tests.documents import paragraph, pdf_file, text_file
from tests.e2e.stores import footprint
from tests.e2e.test_bad_input import outcomes
from tests.running import Services

pytestmark = pytest.mark.stack

PASSAGE = (
    "The harbour master kept a ledger of every steamship that entered the port, and on the ninth of March "
    "he recorded that the Aurora arrived from Lisbon carrying cork, olive oil and forty passengers."
)


def submit_all(paths: list[Path], **options: Any) -> list[Event]:
    async def run() -> list[Event]:
        async with Client() as client:
            subs = [await client.submit(p, title=p.stem, **options) for p in paths]
            return await outcomes(client, subs)

    return asyncio.run(run())


def indexed(document_id: str) -> dict[str, Any]:
    """The vector service's VectorsIndexed for the document, from its event store."""
    log = StepStore("vector", admin=True).step_log(document_id)
    found = list(log.emitted_of(VECTORS_INDEXED))
    assert len(found) == 1, found
    return dict(found[0].payload)


def pages_of(index: VectorIndex, document_id: str) -> set[int]:
    rows = index.client.query(index.collection, filter=f'document_id == "{document_id}"', output_fields=["page"])
    return {r["page"] for r in rows}


def test_a_pdf_with_scans_and_a_text_file_land_with_their_chunks_and_pages(services: Services, run_dir: Path) -> None:
    folder = run_dir / "vector-land"
    folder.mkdir()
    pages = [paragraph(500 + p, 1600) for p in range(5)]
    pages.insert(3, PASSAGE)
    pdf = pdf_file(folder, "ledger.pdf", pages, image_pages=2)
    text = text_file(folder, "minutes.txt", "\n\n".join(paragraph(600 + i, 1000) for i in range(9)))
    pdf_chunks = list(chunk_pages(iter_pdf_pages(lambda: pdf)))
    with open(text, "rb") as f:
        text_chunks = list(chunk_pages(iter_text_blocks(f)))

    pdf_done, text_done = submit_all([pdf, text], author="A. Clerk")
    assert [pdf_done.event_type, text_done.event_type] == [DOCUMENT_COMPLETED] * 2, services.logs()
    assert (pdf_done.payload["chunk_count"], text_done.payload["chunk_count"]) == (len(pdf_chunks), len(text_chunks))
    assert footprint(pdf_done.document_id).vectors == len(pdf_chunks)
    assert footprint(text_done.document_id).vectors == len(text_chunks)
    ledger = indexed(pdf_done.document_id)
    assert (ledger["chunk_count"], ledger["page_count"], ledger["pages_without_text"]) == (len(pdf_chunks), 8, 2)
    assert indexed(text_done.document_id)["pages_without_text"] == 0

    settings = Settings()  # now, with this run's environment (`stack` was made before it was applied)
    index = VectorIndex.of(settings).open()
    try:
        # Each chunk carries the page it starts on; the short passage page (4) starts no chunk of its own.
        assert pages_of(index, pdf_done.document_id) == {c.page for c in pdf_chunks} == {1, 2, 3, 5, 6}
        query = load_embedder(settings.embedder, model_dir=settings.model_dir).embed(  # type: ignore[arg-type]
            ["which ship did the harbour master record arriving from Lisbon in March"]
        )[0]
        hits = index.search(query.tolist(), k=3)
        in_text_doc = index.search(query.tolist(), k=3, document_id=text_done.document_id)
    finally:
        index.close()
    ours = [h for h in hits if h["document_id"] == pdf_done.document_id and "Aurora arrived from Lisbon" in h["text"]]
    assert ours, hits
    # asked of one document, the answer comes from that document only, however close another is
    assert in_text_doc and {h["document_id"] for h in in_text_doc} == {text_done.document_id}, in_text_doc


def encrypted_pdf(path: Path) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    pdf.add_page()
    pdf.multi_cell(0, 5, "confidential " * 80)
    pdf.output(str(path))
    return path


def test_encrypted_and_corrupt_pdfs_fail_with_a_clear_reason_and_leave_nothing(
    services: Services, run_dir: Path
) -> None:
    folder = run_dir / "vector-bad"
    folder.mkdir()
    encrypted = encrypted_pdf(folder / "sealed.pdf")
    corrupt = folder / "damaged.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 64)  # a PDF header, then garbage
    results = submit_all([encrypted, corrupt])
    for outcome, reason in zip(results, ["encrypted PDF: it needs a password", "corrupt PDF"], strict=True):
        assert outcome.event_type == DOCUMENT_COMPENSATED, (outcome, services.logs())
        assert outcome.payload["failed_step"] == "Vectors"
        assert reason in outcome.payload["reason"], outcome.payload["reason"]
        state = SagaReader().state(outcome.document_id)
        assert state.steps == {
            "Upload": "compensated",
            "Integrity": "compensated",
            "Security": "compensated",
            "Vectors": "failed",
        }, state
        assert footprint(outcome.document_id).empty


EMBEDDING = re.compile(r"embedding doc=(?P<doc>\S+) item=(?P<item>\d+) first=(?P<first>\d+) last=(?P<last>\d+)")


def embedded_ranges(log: Path, document_id: str, start: int = 0, end: int | None = None) -> list[range]:
    """The chunk ranges the vector service started to embed, from its log (one line per batch)."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(None if end is None else end - start).decode(errors="replace")
    return [
        range(int(m["first"]), int(m["last"]) + 1)
        for m in EMBEDDING.finditer(text)
        if m["doc"] == document_id
    ]


def test_a_vector_service_killed_mid_embedding_resumes_and_redoes_at_most_one_batch(
    services: Services, run_dir: Path, stack: Settings
) -> None:
    folder = run_dir / "vector-kill"
    folder.mkdir()
    source = text_file(folder, "long.txt", "\n\n".join(paragraph(700 + i, 1000) for i in range(160)))
    with open(source, "rb") as f:
        total = len(list(chunk_pages(iter_text_blocks(f))))
    batch = int(services.env.get("UDS3_EMBED_BATCH", Settings().embed_batch))
    assert total >= 5 * batch
    vector_events = StepStore("vector", stack, admin=True)

    async def run() -> tuple[Event, int, int]:
        """Submits, SIGKILLs the vector service once two batches are recorded, restarts it, waits.

        Returns the outcome, the vector log's size and the recorded chunks_done at the kill.
        """
        async with Client() as client:
            sub = await client.submit(source, title="vector-kill")
            deadline = time.monotonic() + 180
            while len(list(vector_events.step_log(sub.document_id).emitted_of(VECTORS_PROGRESSED))) < 2:
                assert time.monotonic() < deadline, services.logs()
                await asyncio.sleep(0.02)
            services.procs["vector"].kill()
            log_end = services.procs["vector"].log_path.stat().st_size
            at_kill = vector_events.step_log(sub.document_id)
            last = at_kill.last_emitted(VECTORS_PROGRESSED)
            assert last is not None and not at_kill.has_emitted(VECTORS_INDEXED), "the kill came too late"
            services.restart("vector")  # SIGKILLed already: starts a new process
            return (await outcomes(client, [sub]))[0], log_end, last.payload["chunks_done"]

    outcome, log_end, done_at_kill = asyncio.run(run())
    doc = outcome.document_id
    assert outcome.event_type == DOCUMENT_COMPLETED, (outcome, services.logs())
    log_path = services.procs["vector"].log_path
    before = embedded_ranges(log_path, doc, end=log_end)
    after = embedded_ranges(log_path, doc, start=log_end)
    started_before = {i for r in before for i in r}
    started_after = [i for r in after for i in r]
    redone = started_before & set(started_after)
    print(f"\nSIGKILL with {done_at_kill} of {total} chunks recorded: {len(redone)} chunks redone (batch {batch})")
    assert after and after[0].start == done_at_kill  # the restart begins at the last checkpoint
    assert started_after == list(range(done_at_kill, total))  # and embeds the rest once, in order
    assert len(redone) <= batch  # at most the one batch whose checkpoint was lost
    progress = [e.payload for e in vector_events.step_log(doc).emitted_of(VECTORS_PROGRESSED)]
    assert [p["batch"] for p in progress] == list(range(1, len(progress) + 1))  # each batch number once
    assert progress[-1]["chunks_done"] == total == outcome.payload["chunk_count"]
    assert footprint(doc).vectors == total
