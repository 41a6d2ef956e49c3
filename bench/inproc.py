"""The same saga in one process: the six runtimes' `process()` called in turn, no Kafka.

Every event a step records is taken from its event store (as the relay would) and handed to
all six runtimes (as each service's consumer would), in order, until nothing new is recorded.
The steps use the real stores (chunk store, Milvus collection, Neo4j, PostgreSQL); the event stores
are either the real PostgreSQL ones or eventsourcing's in-memory recorder.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from eventsourcing.persistence import Tracking

from services.compose import build_step
from services.core import topics
from services.core.config import Settings
from services.core.events import DOCUMENT_SUBMITTED, PROGRESS_EVENTS, TERMINAL_EVENTS, Event
from services.core.runtime import Runtime
from services.core.saga import SERVICES
from services.core.steplog import StepLog, event_of
from services.core.store import StepStore

IN_MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


class InProcess:
    def __init__(self, settings: Settings, event_store: str) -> None:
        assert event_store in ("postgres", "memory")
        self.settings, self.event_store = settings, event_store
        self.runtimes: list[Runtime] = []
        self.position = f"inproc:{topics.PREFIX}.saga:0"
        self.offsets = itertools.count(1)

    def __enter__(self) -> InProcess:
        try:
            for service in SERVICES:
                step = build_step(service, self.settings)
                env = IN_MEMORY if self.event_store == "memory" else None
                store = StepStore(service, self.settings, env=env)
                # the checkpoint records what the service does, minus the relay's publish
                rt = Runtime(step, self.settings, store=store, checkpoint=_recorder(store))
                step.start()
                self.runtimes.append(rt)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for rt in self.runtimes:
            rt.step.stop()
        self.runtimes.clear()

    def saga(self, submitted: Event) -> Event:
        """Runs one document's saga to its terminal event."""
        pending, terminal = deque([submitted]), None
        while pending:
            event = pending.popleft()
            if event.event_type in TERMINAL_EVENTS:
                terminal = event
            if event.event_type in PROGRESS_EVENTS:
                continue  # progress events: no service consumes them
            for rt in self.runtimes:
                rt.process(event, Tracking(self.position, next(self.offsets)))
                pending.extend(self._unpublished(rt.store))
        if terminal is None:
            raise RuntimeError(f"{submitted.document_id}: the saga stopped without a terminal event")
        return terminal

    @staticmethod
    def _unpublished(store: StepStore) -> list[Event]:
        batch = list(store.unpublished())
        if batch:
            store.mark_published(batch[-1][0])
        return [event_of(message) for _, message in batch if message]


def _recorder(store: StepStore) -> Callable[[StepLog], None]:
    def checkpoint(log: StepLog) -> None:
        store.record(log)

    return checkpoint


def submission(path: Path) -> Event:
    """The DocumentSubmitted event the client would publish for `path`."""
    doc = str(uuid.uuid4())
    return Event(
        event_type=DOCUMENT_SUBMITTED,
        document_id=doc,
        saga_id=str(uuid.uuid4()),
        producer="client",
        payload={
            "source_uri": path.absolute().as_uri(), "size_bytes": path.stat().st_size, "declared_sha256": None,
            "content_type": "text/plain", "title": path.stem, "author": "Bench Clerk",
            "organisation": "Bench Office", "case_number": "BENCH-1", "references": [], "metadata": {},
            "security_level": "internal", "submitter": "bench",
        },
    )
