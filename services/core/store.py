"""Each service's event store: an eventsourcing `ProcessApplication` on PostgreSQL.

One schema per service (its own role owns it: least privilege). The application records
a step's new events and the Kafka position that caused them in one transaction
(`Tracking("kafka:<topic>:<partition>", offset + 1)`), which is what makes effects
exactly-once (G3). The outbox relay's published position is a tracking record too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.system import ProcessApplication

from services.core.config import Settings
from services.core.steplog import StepLog, log_id

OUTBOX = "outbox"


def kafka_position(topic: str, partition: int) -> str:
    return f"kafka:{topic}:{partition}"


def store_env(service: str, settings: Settings, *, admin: bool = False) -> dict[str, str]:
    user, password = (settings.pg_admin_user, settings.pg_admin_password) if admin else settings.service_role(service)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": settings.pg_database,
        "POSTGRES_HOST": settings.pg_host,
        "POSTGRES_PORT": str(settings.pg_port),
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": password,
        "POSTGRES_SCHEMA": service,
        "POSTGRES_POOL_SIZE": "4",
        "CREATE_TABLE": "n" if admin else "y",
        # A service waits out a database restart; an operator's read (`uds3 status`) fails fast.
        "POSTGRES_CONNECT_TIMEOUT": "5" if admin else "30",
    }


def open_store(service: str, settings: Settings) -> StepStore:
    """The service's event store, its tables created on first use. Replicas starting together
    would race to create them (`type ... already exists`): one creates at a time, under an
    advisory lock of the service's."""
    with psycopg.connect(settings.pg_dsn(*settings.service_role(service))) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"uds3 event store {service}",))
        return StepStore(service, settings)  # the lock goes with the connection


class StepStore(ProcessApplication[uuid.UUID]):
    """The event store of one service; `name` (the service) names its tables."""

    def __init__(
        self, service: str, settings: Settings | None = None, *, admin: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.name = service
        # `env` replaces the PostgreSQL settings, e.g. {"PERSISTENCE_MODULE": "eventsourcing.popo"} in unit tests.
        super().__init__(env=env if env is not None else store_env(service, settings or Settings(), admin=admin))

    def step_log(self, document_id: str) -> StepLog:
        """The service's log for a document, opened on first use."""
        try:
            found: StepLog = self.repository.get(log_id(self.name, document_id))
            return found
        except Exception as e:  # AggregateNotFoundError: the first event for this document
            if type(e).__name__ != "AggregateNotFoundError":
                raise
            return StepLog(self.name, document_id)

    def record(self, log: StepLog, tracking: Tracking | None = None) -> bool:
        """Records the log's new events (and the position, if given) atomically.

        Returns False when the position was recorded before: a redelivered message, whose
        effects are already in the store.
        """
        return self.record_all([log], tracking)

    def record_all(self, logs: Iterable[StepLog], tracking: Tracking | None = None) -> bool:
        """`record` for several documents' logs in one transaction (a consumer batch)."""
        processing: ProcessingEvent[uuid.UUID] = ProcessingEvent(tracking)
        for log in logs:
            processing.collect_events(log)
        if not processing.events and tracking is None:
            return True
        try:
            self._record(processing)
        except IntegrityError:
            if tracking is not None and self.already_tracked(tracking):
                return False
            raise
        return True

    def already_tracked(self, tracking: Tracking) -> bool:
        last = self.recorder.max_tracking_id(tracking.application_name)
        return last is not None and last >= tracking.notification_id

    def position(self, name: str) -> int | None:
        return self.recorder.max_tracking_id(name)

    def unpublished(self, limit: int = 500) -> Iterator[tuple[int, dict[str, Any]]]:
        """Emitted messages recorded after the outbox position (the relay's work)."""
        start = (self.position(OUTBOX) or 0) + 1
        for n in self.recorder.select_notifications(start=start, limit=limit):
            if n.topic.endswith("StepLog.Emitted"):
                domain_event = self.mapper.to_domain_event(n)
                yield n.id, domain_event.message  # type: ignore[attr-defined]
            else:
                yield n.id, {}

    def mark_published(self, notification_id: int) -> None:
        with contextlib.suppress(IntegrityError):  # another replica or run already moved it further
            self.recorder.insert_tracking(Tracking(OUTBOX, notification_id))


class BatchAborted(Exception):
    """Nothing of the batch is recorded: it is redone one input at a time."""


class Batch:
    """A consumer batch's view of the event store: each document's log is read once, and every
    change the batch makes is recorded in one transaction with its last position (`commit`)."""

    def __init__(self, store: StepStore) -> None:
        self.store = store
        self.logs: dict[str, StepLog] = {}
        self.earlier: set[str] = set()  # documents whose logs earlier inputs of the batch changed

    def next_input(self) -> None:
        self.earlier = set(self.logs)

    def forget(self, document_id: str) -> None:
        """Drops what the current input did to a document's log, so its failure is handled as a
        single input's would be. If an earlier input of the batch changed that log too, the two
        cannot be told apart: the batch fails (and is redone one input at a time)."""
        if document_id in self.earlier:
            raise BatchAborted(f"document {document_id} failed after an earlier input of its batch")
        self.logs.pop(document_id, None)

    def step_log(self, document_id: str) -> StepLog:
        if document_id not in self.logs:
            self.logs[document_id] = self.store.step_log(document_id)
        return self.logs[document_id]

    def record(self, log: StepLog, tracking: Tracking | None = None) -> bool:
        """Kept for the commit; True, as the commit records it or raises."""
        self.logs[log.document_id] = log
        return True

    def commit(self, tracking: Tracking) -> bool:
        """False when another consumer recorded this position first (nothing is recorded)."""
        return self.store.record_all(self.logs.values(), tracking)
