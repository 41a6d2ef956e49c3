"""Step 6: stream text out of the stored document, chunk it, embed it in batches, upsert to Milvus.

Extraction runs in its own thread ahead of the embedder (bounded queue), so the pipeline
costs little more than the model itself. Each batch is a checkpoint (VectorsProgressed):
after a crash the step skips the chunks already upserted and redoes at most one batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

from services.core import logs, messages, metrics, tracing
from services.core.chunkstore import Chunks, chunks_of
from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import UPLOAD_COMPLETED, VECTORS_INDEXED, VECTORS_PROGRESSED, Event
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.core.validation import PDF, TEXT
from services.vector.adapters import TEXT_MAX, VectorIndex, Vectors, chunk_key
from services.vector.embedding import Embedder, load_embedder
from services.vector.text import (
    Chunk,
    CorruptPdf,
    EncryptedPdf,
    UnreadableDocument,
    chunk_pages,
    iter_pdf_pages,
    iter_text_blocks,
)

_END = object()

logger = logging.getLogger("vector")


class VectorStep(Step):
    service = "vector"

    def __init__(self, chunks: Chunks, vectors: Vectors, embedder: Embedder) -> None:
        self.chunks, self.vectors, self.embedder = chunks, vectors, embedder

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStep:
        embedder = load_embedder(settings.embedder, model_dir=settings.model_dir)  # type: ignore[arg-type]
        return cls(chunks_of(settings), VectorIndex.of(settings), embedder)

    def start(self) -> None:
        self.vectors.open()

    def stop(self) -> None:
        self.vectors.close()

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        if log.has_emitted(VECTORS_INDEXED):
            return
        upload = log.last_received(UPLOAD_COMPLETED)  # the uploader decided the format from the bytes
        decided = messages.UploadCompleted.of(upload).content_type if upload else None
        if not decided:  # an UploadCompleted of schema version 1 does not say: the stored bytes do
            with self.chunks.open(event.document_id) as f:
                decided = PDF if f.read(5) == b"%PDF-" else TEXT
        is_pdf = decided == PDF
        last = log.last_emitted(VECTORS_PROGRESSED)
        progressed = messages.VectorsProgressed.of(last) if last else None
        done = progressed.chunks_done if progressed else 0
        batch_no = progressed.batch if progressed else 0
        stats = _Stats()
        started = time.monotonic()
        chunks = self._chunks(event.document_id, is_pdf, stats, ctx.settings)
        # closing(): a failure or stop ends the extractor thread now, not when the generator is collected.
        with contextlib.closing(_batches(chunks, ctx.settings.embed_batch, ctx)) as batches:
            for batch in batches:
                if batch[-1].index < done:
                    continue  # upserted before the crash
                batch = [c for c in batch if c.index >= done]
                # One line per batch, before the work: after a crash, the log shows what was redone.
                logs.info(logger, "embedding", doc=event.document_id, first=batch[0].index, last=batch[-1].index)
                with tracing.span("embed batch", first=batch[0].index, last=batch[-1].index):
                    vectors = self.embedder.embed([c.text for c in batch])
                    self.vectors.upsert([_row(event.document_id, c, v) for c, v in zip(batch, vectors, strict=True)])
                metrics.EMBEDDED_CHUNKS.inc(len(batch))
                done = batch[-1].index + 1
                batch_no += 1
                elapsed = max(time.monotonic() - started, 1e-6)
                log.emit_event(
                    event.follow(
                        VECTORS_PROGRESSED,
                        self.service,
                        seq=batch_no,
                        pages_done=stats.pages,
                        pages_total=stats.pages_total,
                        chunks_done=done,
                        chunks_per_second=stats.embedded(len(batch)) / elapsed,
                        batch=batch_no,
                    )
                )
                ctx.checkpoint(log)
        log.emit_event(
            event.follow(
                VECTORS_INDEXED,
                self.service,
                collection=self.vectors.collection,
                chunk_count=done,
                page_count=stats.pages,
                pages_without_text=stats.pages_without_text,
                embedding_model=self.embedder.name,
            )
        )

    def _chunks(self, document_id: str, is_pdf: bool, stats: _Stats, settings: Settings) -> Iterator[Chunk]:
        def opener() -> Any:
            return self.chunks.open(document_id)

        pages = iter_pdf_pages(opener) if is_pdf else _text_pages(opener())
        return chunk_pages(stats.count(pages), size=settings.text_chunk_chars, overlap=settings.text_chunk_overlap)

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        removed = self.vectors.delete_document(log.document_id)
        return Undone(f"deleted {removed} vectors", removed)


def _text_pages(stream: Any) -> Iterator[Any]:
    with stream:
        yield from iter_text_blocks(stream)


class _Stats:
    """Counts pages as they stream past (for progress and the final event)."""

    def __init__(self) -> None:
        self.pages = 0
        self.pages_total = 0
        self.pages_without_text = 0
        self.chunks = 0

    def count(self, pages: Iterator[Any]) -> Iterator[Any]:
        for page in pages:
            self.pages += 1
            self.pages_total = max(self.pages_total, getattr(page, "total", 0) or self.pages)
            if not page.has_text:
                self.pages_without_text += 1
            yield page

    def embedded(self, n: int) -> int:
        self.chunks += n
        return self.chunks


def _batches(chunks: Iterator[Chunk], size: int, ctx: Context) -> Generator[list[Chunk], None, None]:
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
        batch: list[Chunk] = []
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


def _row(document_id: str, chunk: Chunk, vector: Any) -> dict[str, Any]:
    return {
        "id": chunk_key(document_id, chunk.index),
        "document_id": document_id,
        "page": chunk.page,
        "chunk": chunk.index,
        "text": chunk.text[:TEXT_MAX],
        "vector": vector.tolist(),
    }
