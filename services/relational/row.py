"""The metadata row of a document and its completion facts, from the saga's events (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from services.core import messages
from services.core.errors import PermanentError
from services.core.events import Event
from services.core.validation import DEFAULT_SECURITY_LEVEL

TABLE = "relational.documents"
COMPLETED = "completed"


@dataclass(frozen=True)
class DocumentRow:
    document_id: str
    saga_id: str
    title: str | None
    author: str | None
    organisation: str | None
    case_number: str | None
    content_type: str
    source_uri: str
    size_bytes: int
    page_count: int
    chunk_count: int
    content_sha256: str
    security_level: str
    metadata: Mapping[str, str]
    status: str
    submitted_at: datetime
    completed_at: datetime

    def columns(self) -> dict[str, Any]:
        return asdict(self)


def _require(facts: Mapping[str, Event | None]) -> dict[str, Event]:
    missing = sorted(name for name, e in facts.items() if e is None)
    if missing:
        raise PermanentError(f"events not received before GraphLinked: {', '.join(missing)}")
    return {name: e for name, e in facts.items() if e is not None}


def document_row(submission: Event | None, upload: Event | None, security: Event | None,
                 vectors: Event | None, now: datetime) -> DocumentRow:
    """The row; refuses facts that disagree (G2: every store names the same content)."""
    f = _require({"DocumentSubmitted": submission, "UploadCompleted": upload,
                   "SecurityRecorded": security, "VectorsIndexed": vectors})
    sub = messages.DocumentSubmitted.of(f["DocumentSubmitted"])
    up = messages.UploadCompleted.of(f["UploadCompleted"])
    vec = messages.VectorsIndexed.of(f["VectorsIndexed"])
    sha = messages.SecurityRecorded.of(f["SecurityRecorded"]).content_sha256
    if up.sha256.lower() != sha.lower():
        raise PermanentError(f"content hash disagrees: upload {up.sha256} vs security {sha}")
    return DocumentRow(
        document_id=f["DocumentSubmitted"].document_id,
        saga_id=f["DocumentSubmitted"].saga_id,
        title=sub.title,
        author=sub.author,
        organisation=sub.organisation,
        case_number=sub.case_number,
        content_type=up.content_type or sub.content_type or "application/octet-stream",
        source_uri=sub.source_uri,
        size_bytes=up.size_bytes,  # measured beats declared
        page_count=vec.page_count,
        chunk_count=vec.chunk_count,  # text chunks = vectors stored (not upload chunks)
        content_sha256=sha.lower(),
        security_level=sub.security_level or DEFAULT_SECURITY_LEVEL,
        metadata=dict(sub.metadata),
        status=COMPLETED,
        submitted_at=f["DocumentSubmitted"].occurred_at,
        completed_at=now,
    )
