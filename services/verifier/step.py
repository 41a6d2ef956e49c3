"""Step 4: re-read the stored chunks as a stream and check every hash (read only)."""

from __future__ import annotations

import hashlib

from services.core import messages
from services.core.chunkstore import Chunks, chunks_of
from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import INTEGRITY_VERIFIED, Event
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog


class IntegrityMismatch(PermanentError):
    pass


class VerifierStep(Step):
    service = "verifier"

    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks

    @classmethod
    def from_settings(cls, settings: Settings) -> VerifierStep:
        return cls(chunks_of(settings))

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        if log.has_emitted(INTEGRITY_VERIFIED):
            return
        upload = messages.UploadCompleted.of(event)
        streamed = upload.sha256
        sub = log.submission()
        declared = messages.DocumentSubmitted.of(sub).declared_sha256 if sub else None
        if declared and declared.lower() != streamed:
            raise IntegrityMismatch(f"declared sha256 {declared} does not match the uploaded content {streamed}")
        whole = hashlib.sha256()
        size = 0
        try:
            refs = self.chunks.manifest(event.document_id)
        except FileNotFoundError as e:
            raise IntegrityMismatch("the upload's manifest is missing from the chunk store") from e
        if len(refs) != upload.chunk_count:
            raise IntegrityMismatch(f"manifest lists {len(refs)} chunks, the upload reported {upload.chunk_count}")
        for ref in refs:
            ctx.check_stop()
            try:
                data = self.chunks.get(event.document_id, ref.index)
            except FileNotFoundError as e:
                raise IntegrityMismatch(f"chunk {ref.index} is missing from the chunk store") from e
            if hashlib.sha256(data).hexdigest() != ref.sha256 or len(data) != ref.length:
                raise IntegrityMismatch(f"chunk {ref.index} is corrupted (its sha256 changed after upload)")
            whole.update(data)
            size += len(data)
        if whole.hexdigest() != streamed:
            raise IntegrityMismatch(f"whole-file sha256 {whole.hexdigest()} differs from the upload's {streamed}")
        log.emit_event(
            event.follow(INTEGRITY_VERIFIED, self.service, sha256=streamed, chunks_checked=len(refs), size_bytes=size)
        )

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        return Undone("nothing to undo: verification only reads")
