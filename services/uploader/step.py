"""Steps 1-3: validate the file, start the operation, upload it in chunks (resumable)."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from services.core import messages, metrics, tracing
from services.core.chunkstore import ChunkRef, Chunks, chunks_of
from services.core.config import Settings
from services.core.events import (
    CHUNK_STORED,
    NAMESPACE,
    UPLOAD_COMPLETED,
    UPLOAD_PROGRESSED,
    UPLOAD_STARTED,
    Event,
)
from services.core.inbox import S3Inbox, inbox_of
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.uploader.validation import Refused, ValidFile, validate

PROGRESS_EVERY_S = 0.5

logger = logging.getLogger("uploader")


class UploaderStep(Step):
    service = "uploader"

    def __init__(self, chunks: Chunks, inbox: S3Inbox | None = None) -> None:
        self.chunks, self.inbox = chunks, inbox

    @classmethod
    def from_settings(cls, settings: Settings) -> UploaderStep:
        return cls(chunks_of(settings), inbox_of(settings))

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        first = log.submission()
        if first is not None and first.event_id != event.event_id:
            # Idempotent by document id: a second submission of the same document is not ingested twice.
            logger.warning("duplicate submission ignored doc=%s first_saga=%s", event.document_id, first.saga_id)
            return
        if log.has_emitted(UPLOAD_COMPLETED):
            return
        source = messages.DocumentSubmitted.of(event).source_uri
        valid = validate(source, ctx.settings.allowed_root, ctx.settings.max_file_bytes, self.inbox)
        last = log.last_emitted(UPLOAD_STARTED)
        started = messages.UploadStarted.of(last) if last else None
        # A resumed upload keeps the chunking it started with (UDS3_CHUNK_BYTES may have changed since).
        chunk_size = started.chunk_size if started else ctx.settings.chunk_bytes
        if started and started.total_bytes != valid.size:
            raise Refused(
                f"{valid.location}: changed while it was being uploaded ({started.total_bytes} bytes when "
                f"the upload started, {valid.size} now); submit it again once it is complete"
            )
        total_chunks = -(-valid.size // chunk_size)
        operation_id = str(uuid.uuid5(NAMESPACE, f"upload/{event.document_id}/{event.saga_id}"))
        if started is None:
            log.emit_event(
                event.follow(
                    UPLOAD_STARTED,
                    self.service,
                    operation_id=operation_id,
                    chunk_size=chunk_size,
                    total_bytes=valid.size,
                    total_chunks=total_chunks,
                )
            )  # recorded with the first chunk's checkpoint: until then a crash loses nothing to redo
        stored = {c.index: c for c in map(messages.ChunkStored.of, log.emitted_of(CHUNK_STORED))}
        refs, sha = self._upload(event, log, ctx, valid, chunk_size, operation_id, stored)
        manifest = self.chunks.write_manifest(event.document_id, refs, sha, valid.size)
        log.emit_event(
            event.follow(
                UPLOAD_COMPLETED,
                self.service,
                operation_id=operation_id,
                manifest_uri=manifest,
                sha256=sha,
                size_bytes=valid.size,
                chunk_count=len(refs),
                content_type=valid.content_type,  # decided here, once, from the bytes; later steps read it
            )
        )

    def _upload(
        self,
        event: Event,
        log: StepLog,
        ctx: Context,
        valid: ValidFile,
        chunk_size: int,
        operation_id: str,
        stored: dict[int, messages.ChunkStored],
    ) -> tuple[list[ChunkRef], str]:
        """Reads the file once in order (whole-file hash) while missing chunks are written.

        Reading and hashing the next chunks overlaps writing earlier ones. At most
        `upload_parallelism` writes are in flight (default 4), so memory stays flat and a crash
        redoes at most those: finished chunks are checkpointed as ChunkStored, in index order,
        all that are done in one checkpoint (one transaction instead of one per chunk).
        """
        size, whole = valid.size, hashlib.sha256()
        refs = [ChunkRef(i, c.offset, c.length, c.sha256) for i, c in stored.items()]
        pending: list[_Write] = []
        reporter = _Progress(event, log, size, self.service)
        done_bytes = sum(r.length for r in refs)
        with valid.open() as f, ThreadPoolExecutor(ctx.settings.upload_parallelism) as pool:
            for index in range(-(-size // chunk_size)):
                if ctx.stopping.is_set():
                    break  # stopping: record the chunks in flight below, then stop
                offset = index * chunk_size
                data = _read_full(f, chunk_size)
                whole.update(data)
                if index in stored:
                    continue
                while len(pending) >= ctx.settings.upload_parallelism:
                    done_bytes += self._finish(pending, event, log, ctx, operation_id, refs)
                    reporter.maybe_report(done_bytes)
                span = tracing.tracer.start_span("store chunk", attributes={"index": index, "bytes": len(data)})
                pending.append(_Write(index, offset, len(data), pool.submit(self.chunks.put, event.document_id, index,
                                                                            data), span))
            while pending:
                done_bytes += self._finish(pending, event, log, ctx, operation_id, refs)
                reporter.maybe_report(done_bytes)
        ctx.check_stop()  # a graceful stop leaves every written chunk recorded: the resume redoes none
        return refs, whole.hexdigest()

    def _finish(
        self,
        pending: list[_Write],
        event: Event,
        log: StepLog,
        ctx: Context,
        operation_id: str,
        refs: list[ChunkRef],
    ) -> int:
        """Waits for the oldest write, records it and every later one already done; returns their bytes."""
        finished = [pending.pop(0)]
        while pending and pending[0].future.done():
            finished.append(pending.pop(0))
        for w in finished:
            sha = w.future.result()
            w.span.end()
            refs.append(ChunkRef(w.index, w.offset, w.length, sha))
            log.emit_event(
                event.follow(
                    CHUNK_STORED,
                    self.service,
                    seq=w.index,
                    operation_id=operation_id,
                    index=w.index,
                    offset=w.offset,
                    length=w.length,
                    sha256=sha,
                )
            )
        ctx.checkpoint(log)
        stored = sum(w.length for w in finished)
        metrics.UPLOAD_BYTES.inc(stored)
        return stored

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        removed = self.chunks.delete(log.document_id)
        return Undone(f"deleted {removed} stored chunks", removed)


@dataclass(frozen=True)
class _Write:
    """A chunk write in flight, and its trace span (a child of the step's)."""

    index: int
    offset: int
    length: int
    future: Future[str]
    span: Any


def _read_full(f: BinaryIO, n: int) -> bytes:
    """n bytes, fewer only at the end: a network stream may return less per read than asked."""
    data = f.read(n)
    while 0 < len(data) < n and (more := f.read(n - len(data))):
        data += more
    return data


class _Progress:
    """UploadProgressed at most twice a second: enough for a live bar, little for Kafka."""

    def __init__(self, event: Event, log: StepLog, total: int, producer: str) -> None:
        self.event, self.log, self.total, self.producer = event, log, total, producer
        self.started = self.last = time.monotonic()
        self.seq = sum(1 for _ in log.emitted_of(UPLOAD_PROGRESSED))  # ids stay unique across resumes
        self.first_bytes: int | None = None

    def maybe_report(self, done: int) -> None:
        now = time.monotonic()
        if self.first_bytes is None:
            self.first_bytes = done
        if now - self.last < PROGRESS_EVERY_S and done < self.total:
            return
        self.last = now
        rate = (done - self.first_bytes) / max(now - self.started, 1e-6)
        self.seq += 1
        self.log.emit_event(
            self.event.follow(
                UPLOAD_PROGRESSED,
                self.producer,
                seq=self.seq,
                bytes_done=done,
                bytes_total=self.total,
                percent=100.0 * done / self.total,
                bytes_per_second=rate,
                eta_seconds=(self.total - done) / rate if rate > 0 else None,
            )
        )
