"""The domain of every service: one `StepLog` aggregate per (service, document).

A service's history for a document is the saga events it received and emitted, in order.
Its state (what was done, where a long step stopped, which inputs were handled) is a fold
over that history, so it is rebuilt from the event store alone (guarantees G4, G5).
This module does no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from services.core import tracing
from services.core.events import DOCUMENT_COMPENSATED, DOCUMENT_COMPLETED, NAMESPACE, Event

# The ends after which nothing acts on a document (CompensationFailed is not one: an operator
# re-drives it to DocumentCompensated).
ENDINGS = frozenset({DOCUMENT_COMPLETED, DOCUMENT_COMPENSATED})


def message_of(e: Event) -> dict[str, Any]:
    """A JSON-friendly dict of an event, as the event store keeps it."""
    return {
        "event_type": e.event_type,
        "event_id": e.event_id,
        "document_id": e.document_id,
        "saga_id": e.saga_id,
        "causation_id": e.causation_id,
        "correlation_id": e.correlation_id,
        "occurred_at": e.occurred_at.isoformat(),
        "producer": e.producer,
        "schema_version": e.schema_version,
        "payload": dict(e.payload),
    }


def event_of(m: Mapping[str, Any]) -> Event:
    return Event(
        event_type=m["event_type"],
        document_id=m["document_id"],
        saga_id=m["saga_id"],
        payload=m["payload"],
        event_id=m["event_id"],
        causation_id=m["causation_id"],
        correlation_id=m["correlation_id"],
        occurred_at=datetime.fromisoformat(m["occurred_at"]),
        producer=m["producer"],
        schema_version=m["schema_version"],
    )


class StepLog(Aggregate):
    """What one service has received and emitted for one document."""

    @staticmethod
    def create_id(service: str, document_id: str) -> uuid.UUID:
        return log_id(service, document_id)

    @event("Opened")
    def __init__(self, service: str, document_id: str) -> None:
        self.service = service
        self.document_id = document_id
        self.received: list[dict[str, Any]] = []
        self.emitted: list[dict[str, Any]] = []
        self.processed: list[str] = []
        self.refused: list[dict[str, Any]] = []
        self.repaired: list[dict[str, Any]] = []

    @event("Received")
    def receive(self, message: dict[str, Any]) -> None:
        """An input worth remembering (e.g. the submission whose metadata a step needs)."""
        self.received.append(message)

    @event("Emitted")
    def emit(self, message: dict[str, Any]) -> None:
        """An output: the relay publishes it to Kafka after it is recorded (outbox)."""
        self.emitted.append(message)

    @event("Processed")
    def mark_processed(self, event_id: str) -> None:
        """The inbox: this input is fully handled. Checkpoints of a long step do not set it,
        so a crashed step's input is handled again and resumes from its last checkpoint."""
        self.processed.append(event_id)

    @event("Refused")
    def refuse(self, message: dict[str, Any]) -> None:
        """An input not acted on (the saga had ended), kept with the reason."""
        self.refused.append(message)

    @event("Repaired")
    def record_repair(self, message: dict[str, Any]) -> None:
        """An operator's repair ran this step's forward work again (`uds3 audit repair`)."""
        self.repaired.append(message)

    # --- queries (pure) --------------------------------------------------------------------
    def emit_event(self, e: Event) -> None:
        self.emit(tracing.traced(message_of(e)))

    def traceparent_of(self, event_id: str) -> str | None:
        """The trace context a received input was recorded with (to carry a parked trigger's trace on)."""
        return next((m.get("traceparent") for m in self.received if m["event_id"] == event_id), None)

    def has_emitted(self, event_type: str) -> bool:
        return any(m["event_type"] == event_type for m in self.emitted)

    def emitted_of(self, event_type: str) -> Iterator[Event]:
        return (event_of(m) for m in self.emitted if m["event_type"] == event_type)

    def last_emitted(self, event_type: str) -> Event | None:
        found = [m for m in self.emitted if m["event_type"] == event_type]
        return event_of(found[-1]) if found else None

    def last_received(self, event_type: str) -> Event | None:
        found = [m for m in self.received if m["event_type"] == event_type]
        return event_of(found[-1]) if found else None

    def has_received(self, event_id: str) -> bool:
        return any(m["event_id"] == event_id for m in self.received)

    def knows(self, event_id: str) -> bool:
        """Received or emitted it (a service gets its own events back from the topic)."""
        return self.has_received(event_id) or any(m["event_id"] == event_id for m in self.emitted)

    def ended(self) -> str | None:
        """How the saga ended, as far as this service has seen (its own ending or one it received)."""
        return next((m["event_type"] for m in (*self.emitted, *self.received) if m["event_type"] in ENDINGS), None)

    def received_types(self) -> set[str]:
        return {m["event_type"] for m in self.received}

    def waiting(self, triggers: frozenset[str]) -> list[Event]:
        """Received triggers of the forward work not yet handled (parked until `needs` are in)."""
        return [event_of(m) for m in self.received
                if m["event_type"] in triggers and m["event_id"] not in self.processed]

    def handled(self, event_id: str) -> bool:
        """True when this input was fully handled before (a duplicate delivery)."""
        return event_id in self.processed

    def submission(self) -> Event | None:
        """The first submission of the document (a later one is a duplicate)."""
        subs = [m for m in self.received if m["event_type"] == "DocumentSubmitted"]
        return event_of(subs[0]) if subs else None


def log_id(service: str, document_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"steplog/{service}/{document_id}")
