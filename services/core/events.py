"""The saga's messages: one generic envelope and the event names (the step order and who emits
what are in the saga table, `saga.py`).

The Avro schemas in `schemas/` are the single source of truth for each event's payload;
in Python every event is one `Event` whose `payload` holds the schema's own fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1

# Namespace for deterministic ids (uuid5): replays and redeliveries derive the same ids.
NAMESPACE = uuid.UUID("6f1c4a52-3d0e-4a8e-9b1c-2f5b8d3e7a10")


@dataclass(frozen=True)
class Event:
    """One saga event: the shared envelope plus the event's own fields (`payload`)."""

    event_type: str
    document_id: str
    saga_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = ""
    causation_id: str | None = None
    correlation_id: str = ""
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    producer: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.event_id:
            object.__setattr__(self, "event_id", str(uuid.uuid4()))
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.saga_id)

    def follow(self, event_type: str, producer: str, seq: int = 0, **payload: Any) -> Event:
        """The next event caused by this one, with a deterministic id.

        The id depends only on (this event's id, the new type, seq): a handler that runs
        twice for the same input emits events with the same ids, so duplicates are visible.
        """
        return Event(
            event_type=event_type,
            document_id=self.document_id,
            saga_id=self.saga_id,
            payload=payload,
            event_id=str(uuid.uuid5(NAMESPACE, f"{self.event_id}/{event_type}/{seq}")),
            causation_id=self.event_id,
            correlation_id=self.correlation_id,
            producer=producer,
        )

    def with_payload(self, **changes: Any) -> Event:
        return replace(self, payload={**self.payload, **changes})


# --- Event names ---------------------------------------------------------------------------
DOCUMENT_SUBMITTED = "DocumentSubmitted"
UPLOAD_STARTED = "UploadStarted"
CHUNK_STORED = "ChunkStored"
UPLOAD_PROGRESSED = "UploadProgressed"
UPLOAD_COMPLETED = "UploadCompleted"
INTEGRITY_VERIFIED = "IntegrityVerified"
SECURITY_RECORDED = "SecurityRecorded"
VECTORS_PROGRESSED = "VectorsProgressed"
VECTOR_ITEM_REQUESTED = "VectorItemRequested"
VECTORS_INDEXED = "VectorsIndexed"
GRAPH_LINKED = "GraphLinked"
RELATIONAL_RECORDED = "RelationalRecorded"
DOCUMENT_COMPLETED = "DocumentCompleted"
DOCUMENT_COMPENSATED = "DocumentCompensated"
COMPENSATION_FAILED = "CompensationFailed"
DEAD_LETTER = "DeadLetter"

PROGRESS_EVENTS = frozenset({CHUNK_STORED, UPLOAD_PROGRESSED, VECTORS_PROGRESSED})
TERMINAL_EVENTS = frozenset({DOCUMENT_COMPLETED, DOCUMENT_COMPENSATED, COMPENSATION_FAILED})
# Work items a step fans out to its own workers (a work topic of their own, never the saga's topics).
WORK_EVENTS = frozenset({VECTOR_ITEM_REQUESTED})
