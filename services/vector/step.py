"""Step 6: stream text out of the stored document, chunk it, embed it in batches, upsert to Milvus.

Extraction runs in its own thread ahead of the embedder (bounded queue), so the pipeline
costs little more than the model itself. A PDF of more than `UDS3_VECTOR_ITEM_PAGES` pages is
fanned out: `handle` plans page-range work items (`items.py`) and any vector process embeds
them (`work`); the worker that finishes the last one emits `VectorsIndexed`. Chunking restarts
at every item, here too when one process does all of them, so a vector's id (document, item,
chunk) is the same however many workers took part.

Resume: inline, each batch is a checkpoint (VectorsProgressed) and a crashed step skips the
chunks already upserted; a work item keeps its progress in the ledger. Either way at most one
batch is redone, and upserts by deterministic id make a redone batch change nothing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

from eventsourcing.persistence import IntegrityError as EventStoreConflict

from services.core import logs, messages, metrics, tracing
from services.core.chunkstore import Chunks, chunks_of
from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import (
    UPLOAD_COMPLETED,
    VECTOR_ITEM_REQUESTED,
    VECTORS_INDEXED,
    VECTORS_PROGRESSED,
    Event,
)
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog, event_of
from services.core.validation import PDF, TEXT
from services.vector.adapters import TEXT_MAX, VectorIndex, Vectors, chunk_key
from services.vector.embedding import Embedder, load_embedder
from services.vector.items import Fenced, ItemLedger, Items, Totals, plan_items
from services.vector.ocr import Ocr
from services.vector.text import (
    Chunk,
    CorruptPdf,
    EncryptedPdf,
    UnreadableDocument,
    chunk_pages,
    iter_pdf_pages,
    iter_text_blocks,
    page_count,
)

_END = object()

logger = logging.getLogger("vector")


class Piece(NamedTuple):
    """A chunk on its way to the index: its place in the document's stream (for resume), the
    work item it belongs to (for its id), and OCR's confidence when its first page was a scan."""

    ordinal: int
    item: int
    chunk: Chunk
    ocr_confidence: float | None = None


class VectorStep(Step):
    service = "vector"

    def __init__(self, chunks: Chunks, vectors: Vectors, embedder: Embedder, items: Items | None = None,
                 ocr: Ocr | None = None) -> None:
        self.chunks, self.vectors, self.embedder, self.items, self.ocr = chunks, vectors, embedder, items, ocr

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStep:
        embedder = load_embedder(settings.embedder, threads=settings.embed_threads or None,  # type: ignore[arg-type]
                                 model_dir=settings.model_dir)
        items = ItemLedger(settings.pg_dsn(*settings.service_role(cls.service)))
        ocr = Ocr(settings.ocr_langs, settings.ocr_dpi, settings.ocr_min_chars) if settings.ocr else None
        return cls(chunks_of(settings), VectorIndex.of(settings), embedder, items, ocr)

    def start(self) -> None:
        self.vectors.open()
        if self.items is not None:
            self.items.open()

    def stop(self) -> None:
        self.vectors.close()
        if self.items is not None:
            self.items.close()
        if self.ocr is not None:
            self.ocr.close()

    # --- the saga step: inline, or planned as work items ------------------------------------
    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        if log.has_emitted(VECTORS_INDEXED) or log.has_emitted(VECTOR_ITEM_REQUESTED):
            return  # done, or fanned out (the workers finish it)
        doc = event.document_id
        pages = self._page_count(doc, log)
        ranges = plan_items(pages, ctx.settings.vector_item_pages) if pages else []
        if len(ranges) > 1 and self.items is not None and not ctx.inline:
            self.items.plan(doc, len(ranges), pages, ctx.settings.vector_item_pages)
            for n, r in enumerate(ranges):
                log.emit_event(event.follow(VECTOR_ITEM_REQUESTED, self.service, seq=n, item=n, items=len(ranges),
                                            first_page=r.start + 1, last_page=r.stop, pages_total=pages))
            logs.info(logger, "fanned out", doc=doc, items=len(ranges), pages=pages)
            return
        last = log.last_emitted(VECTORS_PROGRESSED)
        progressed = messages.VectorsProgressed.of(last) if last else None
        done = progressed.chunks_done if progressed else 0
        batch_no = progressed.batch if progressed else 0
        stats = _Stats(pages)
        started = time.monotonic()

        def checkpoint(batch: list[Piece]) -> None:
            nonlocal batch_no
            batch_no += 1
            elapsed = max(time.monotonic() - started, 1e-6)
            log.emit_event(event.follow(
                VECTORS_PROGRESSED, self.service, seq=batch_no, pages_done=stats.pages, pages_total=stats.pages_total,
                chunks_done=batch[-1].ordinal + 1, chunks_per_second=stats.embedded(len(batch)) / elapsed,
                batch=batch_no, pages_ocr=stats.pages_ocr))
            ctx.checkpoint(log)

        whole: list[range | None] = list(ranges) if ranges else [None]
        pieces = self._pieces(doc, whole, stats, ctx.settings)
        count = self._embed(doc, pieces, done, ctx, upsert=lambda rows, _done: self.vectors.upsert(rows),
                            after=checkpoint)
        log.emit_event(self._indexed(event, count, stats.pages, stats.pages_without_text, stats.pages_ocr))

    def _page_count(self, document_id: str, log: StepLog) -> int:
        """Pages of a PDF, 0 for plain text (one item, read in blocks)."""
        upload = log.last_received(UPLOAD_COMPLETED)  # the uploader decided the format from the bytes
        decided = messages.UploadCompleted.of(upload).content_type if upload else None
        if not decided:  # an UploadCompleted of schema version 1 does not say: the stored bytes do
            with self.chunks.open(document_id) as f:
                decided = PDF if f.read(5) == b"%PDF-" else TEXT
        if decided != PDF:
            return 0
        try:
            return page_count(lambda: self.chunks.open(document_id))
        except UnreadableDocument as e:
            raise PermanentError(_reason(e)) from e

    def _indexed(self, trigger: Event, chunks: int, pages: int, pages_without_text: int, pages_ocr: int) -> Event:
        return trigger.follow(VECTORS_INDEXED, self.service, collection=self.vectors.collection, chunk_count=chunks,
                              page_count=pages, pages_without_text=pages_without_text, pages_ocr=pages_ocr,
                              embedding_model=self.embedder.name)

    # --- one work item, in any vector process ------------------------------------------------
    def work(self, item: Event, ctx: Context) -> None:
        """Embeds one item's pages (resuming after its last stored batch), then adds the
        document's progress and, after the last item, `VectorsIndexed` to its log. A redelivered
        item that is done only repeats that last part, which its log makes a no-op."""
        assert self.items is not None, "work items come only from a step with a ledger"
        doc, n = item.document_id, messages.VectorItemRequested.of(item).item
        state = self.items.state(doc, n)
        if state is None or state.fenced:
            logs.info(logger, "item dropped", doc=doc, item=n, why="fenced" if state else "no such item planned")
            return
        # The pages come from the plan, never from the event: an item touches only its own range.
        pages = plan_items(state.pages, state.item_pages)[n]
        try:
            if state.done:
                totals = self.items.totals(doc)
            else:
                stats = _Stats(state.pages)
                pieces = self._pieces(doc, [pages], stats, ctx.settings, first_item=n)
                ledger = self.items
                count = self._embed(doc, pieces, state.chunks_done, ctx, upsert=lambda rows, done: ledger.write_batch(
                    doc, n, done, lambda: self.vectors.upsert(rows)))
                totals = self.items.finish(doc, n, count, stats.pages, stats.pages_without_text, stats.pages_ocr)
        except Fenced:
            logs.info(logger, "item stopped", doc=doc, item=n, why="fenced")
            return
        if totals is not None:
            self._fan_in(item, totals, ctx)

    def _fan_in(self, item: Event, totals: Totals, ctx: Context) -> None:
        """The document's progress after this item and, once all are done, its one VectorsIndexed
        (deterministic ids: a second finisher or a redelivery finds them in the log)."""
        while True:
            log = ctx.log_of(item.document_id)
            trigger = next((event_of(m) for m in log.received if m["event_id"] == item.causation_id), None)
            if trigger is None or log.ended() or log.has_emitted(VECTORS_INDEXED) or \
                    log.has_emitted(f"{self.step}Failed"):
                return
            progress = trigger.follow(
                VECTORS_PROGRESSED, self.service, seq=totals.items_done, pages_done=totals.pages,
                pages_total=_pages_of(log, totals), chunks_done=totals.chunks,
                chunks_per_second=totals.chunks / max(totals.seconds, 1e-6), batch=totals.items_done,
                pages_ocr=totals.pages_ocr)
            if not log.knows(progress.event_id):
                log.emit_event(progress)
            if totals.complete:
                log.emit_event(self._indexed(trigger, totals.chunks, totals.pages, totals.pages_without_text,
                                             totals.pages_ocr))
                log.mark_processed(trigger.event_id)
            try:
                ctx.checkpoint(log)
                return
            except EventStoreConflict:  # another worker or the saga consumer wrote it first: decide again
                continue

    # --- shared by both paths ------------------------------------------------------------------
    def _pieces(self, document_id: str, ranges: list[range | None], stats: _Stats, settings: Settings,
                first_item: int = 0) -> Iterator[Piece]:
        """The chunks of the given items, in order, chunked per item (None: the whole text file)."""
        def opener() -> Any:
            return self.chunks.open(document_id)

        ocr = self.ocr.for_document(document_id, self.items) if self.ocr else None
        ordinal = 0
        for n, pages in enumerate(ranges, start=first_item):
            source = iter_pdf_pages(opener, pages=pages, ocr=ocr) if pages is not None else _text_pages(opener())
            for chunk in chunk_pages(stats.count(source), size=settings.text_chunk_chars,
                                     overlap=settings.text_chunk_overlap):
                yield Piece(ordinal, n, chunk, stats.ocr_confidence(chunk.page))
                ordinal += 1

    def _embed(self, document_id: str, pieces: Iterator[Piece], done: int, ctx: Context,
               upsert: Callable[[list[dict[str, Any]], int], None],
               after: Callable[[list[Piece]], None] = lambda batch: None) -> int:
        """Embeds and upserts the pieces from `done` on, in batches; returns how many there were."""
        count = done
        # closing(): a failure or stop ends the extractor thread now, not when the generator is collected.
        with contextlib.closing(_batches(pieces, ctx.settings.embed_batch, ctx)) as batches:
            for batch in batches:
                count = batch[-1].ordinal + 1
                if count <= done:
                    continue  # upserted before the crash
                batch = [p for p in batch if p.ordinal >= done]
                first, last = batch[0], batch[-1]
                # One line per batch, before the work: after a crash, the log shows what was redone.
                logs.info(logger, "embedding", doc=document_id, item=first.item, first=first.chunk.index,
                          last=last.chunk.index)
                with tracing.span("embed batch", item=first.item, first=first.chunk.index, last=last.chunk.index):
                    vectors = self.embedder.embed([p.chunk.text for p in batch])
                    upsert([_row(document_id, p, v) for p, v in zip(batch, vectors, strict=True)], count)
                metrics.EMBEDDED_CHUNKS.inc(len(batch))
                after(batch)
        return count

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        # Fence first: a work item writing a batch now finishes it, and none writes after.
        if self.items is not None:
            self.items.fence(log.document_id)
        removed = self.vectors.delete_document(log.document_id)
        if self.items is not None:
            self.items.forget_readings(log.document_id)  # what OCR read of its scans
        return Undone(f"deleted {removed} vectors", removed)


def _pages_of(log: StepLog, totals: Totals) -> int:
    item = log.last_emitted(VECTOR_ITEM_REQUESTED)
    return messages.VectorItemRequested.of(item).pages_total if item else totals.pages


def _text_pages(stream: Any) -> Iterator[Any]:
    with stream:
        yield from iter_text_blocks(stream)


class _Stats:
    """Counts pages as they stream past (for progress and the final event)."""

    def __init__(self, pages_total: int = 0) -> None:
        self.pages = 0
        self.pages_total = pages_total  # 0: not known ahead (a text file's blocks)
        self.pages_without_text = 0
        self.pages_ocr = 0
        self.chunks = 0
        self._confidence: dict[int, float] = {}  # OCR'd pages not yet behind the chunk being made

    def count(self, pages: Iterator[Any]) -> Iterator[Any]:
        for page in pages:
            self.pages += 1
            self.pages_total = max(self.pages_total, self.pages)
            if not page.has_text:
                self.pages_without_text += 1
            if getattr(page, "ocr", False):
                self.pages_ocr += 1
                self._confidence[page.number] = page.confidence
            yield page

    def ocr_confidence(self, page: int) -> float | None:
        """OCR's confidence of a chunk's first page, if OCR read it; forgets the pages before it."""
        for done in [p for p in self._confidence if p < page]:
            del self._confidence[done]
        return self._confidence.get(page)

    def embedded(self, n: int) -> int:
        self.chunks += n
        return self.chunks


def _batches(chunks: Iterator[Piece], size: int, ctx: Context) -> Generator[list[Piece], None, None]:
    """Batches of chunks, extracted by a thread running ahead (bounded: memory stays flat)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=4)
    abandoned = threading.Event()

    def put(item: Any) -> None:
        while not abandoned.is_set():
            try:
                return q.put(item, timeout=0.2)
            except queue.Full:
                continue

    def produce() -> None:
        batch: list[Piece] = []
        try:
            for c in chunks:
                batch.append(c)
                if len(batch) == size:
                    put(batch)
                    batch = []
                if abandoned.is_set():
                    return
            if batch:
                put(batch)
            put(_END)
        except UnreadableDocument as e:
            put(PermanentError(_reason(e)))
        except Exception as e:
            put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # closes the PDF here, in this thread: pypdfium2 is not thread-safe

    extractor = threading.Thread(target=produce, daemon=True, name="extract")
    extractor.start()
    try:
        while True:
            ctx.check_stop()
            item = q.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        abandoned.set()  # the consumer stopped early (failure, stop): let the extractor end
        extractor.join()  # before a retry starts another one (one PDFium user at a time)


def _reason(e: UnreadableDocument) -> str:
    """What a person reads in VectorsFailed: what is wrong with the document, in plain words."""
    if isinstance(e, EncryptedPdf):
        return f"encrypted PDF: it needs a password, submit a decrypted copy ({e})"
    if isinstance(e, CorruptPdf):
        return f"corrupt PDF: its content cannot be read ({e})"
    return f"unreadable document: {e}"


def _row(document_id: str, piece: Piece, vector: Any) -> dict[str, Any]:
    return {
        "id": chunk_key(document_id, piece.item, piece.chunk.index),
        "document_id": document_id,
        "page": piece.chunk.page,
        "chunk": piece.chunk.index,
        "text": piece.chunk.text[:TEXT_MAX],
        "ocr": piece.ocr_confidence is not None,
        "ocr_confidence": piece.ocr_confidence or 0.0,
        "vector": vector.tolist(),
    }
