"""The saga's messages: one generic envelope, the event names, and the saga's step order.

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


def document_id_for(source_uri: str, submitter: str, nonce: str = "") -> str:
    """A stable document id, so the same submission resubmitted maps to the same saga."""
    return str(uuid.uuid5(NAMESPACE, f"document/{submitter}/{source_uri}/{nonce}"))


# --- Event names ---------------------------------------------------------------------------
DOCUMENT_SUBMITTED = "DocumentSubmitted"
UPLOAD_STARTED = "UploadStarted"
CHUNK_STORED = "ChunkStored"
UPLOAD_PROGRESSED = "UploadProgressed"
UPLOAD_COMPLETED = "UploadCompleted"
INTEGRITY_VERIFIED = "IntegrityVerified"
SECURITY_RECORDED = "SecurityRecorded"
VECTORS_PROGRESSED = "VectorsProgressed"
VECTORS_INDEXED = "VectorsIndexed"
GRAPH_LINKED = "GraphLinked"
RELATIONAL_RECORDED = "RelationalRecorded"
DOCUMENT_COMPLETED = "DocumentCompleted"
DOCUMENT_COMPENSATED = "DocumentCompensated"
COMPENSATION_FAILED = "CompensationFailed"
DEAD_LETTER = "DeadLetter"

# The saga's steps in order, by the prefix of their Failed/Compensated events.
# Compensation walks this list backwards from the failed step.
STEPS: tuple[str, ...] = ("Upload", "Integrity", "Security", "Vectors", "Graph", "Relational")

# Which service owns each step.
STEP_SERVICE: dict[str, str] = {
    "Upload": "uploader",
    "Integrity": "verifier",
    "Security": "security",
    "Vectors": "vector",
    "Graph": "graph",
    "Relational": "relational",
}

SUCCESS_EVENT: dict[str, str] = {
    "Upload": UPLOAD_COMPLETED,
    "Integrity": INTEGRITY_VERIFIED,
    "Security": SECURITY_RECORDED,
    "Vectors": VECTORS_INDEXED,
    "Graph": GRAPH_LINKED,
    "Relational": RELATIONAL_RECORDED,
}

PROGRESS_EVENTS = frozenset({CHUNK_STORED, UPLOAD_PROGRESSED, VECTORS_PROGRESSED})
TERMINAL_EVENTS = frozenset({DOCUMENT_COMPLETED, DOCUMENT_COMPENSATED, COMPENSATION_FAILED})

# Who submits documents: the client principal (CLI, Python API, other systems).
SUBMITTER = "client"


def failed(step: str) -> str:
    return f"{step}Failed"


def compensated(step: str) -> str:
    return f"{step}Compensated"


FAILED_EVENTS = frozenset(failed(s) for s in STEPS)
COMPENSATED_EVENTS = frozenset(compensated(s) for s in STEPS)

ALL_EVENT_TYPES: tuple[str, ...] = (
    DOCUMENT_SUBMITTED, UPLOAD_STARTED, CHUNK_STORED, UPLOAD_PROGRESSED, UPLOAD_COMPLETED,
    INTEGRITY_VERIFIED, SECURITY_RECORDED, VECTORS_PROGRESSED, VECTORS_INDEXED, GRAPH_LINKED,
    RELATIONAL_RECORDED, DOCUMENT_COMPLETED, *sorted(FAILED_EVENTS), *sorted(COMPENSATED_EVENTS),
    DOCUMENT_COMPENSATED, COMPENSATION_FAILED,
)


def _owners() -> dict[str, str]:
    owners = {DOCUMENT_SUBMITTED: SUBMITTER, UPLOAD_STARTED: "uploader", CHUNK_STORED: "uploader",
              UPLOAD_PROGRESSED: "uploader", VECTORS_PROGRESSED: "vector",
              DOCUMENT_COMPLETED: STEP_SERVICE[STEPS[-1]], DOCUMENT_COMPENSATED: STEP_SERVICE[STEPS[0]]}
    for step, service in STEP_SERVICE.items():
        owners |= {SUCCESS_EVENT[step]: service, failed(step): service, compensated(step): service}
    return owners


# The one producer that may publish each event type (Kafka ACLs enforce it: each producer writes
# only its own topics). CompensationFailed is not here: any service whose undo fails emits it.
OWNER: dict[str, str] = _owners()
