"""Listens to this run's topics and keeps every event with the time it arrived (bench clock).

Starts at the end of each topic, so it sees only what happens after `start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.core import codec, topics
from services.core.config import Settings
from services.core.events import TERMINAL_EVENTS, Event


@dataclass(frozen=True)
class Seen:
    event: Event
    received: float  # time.perf_counter() when the bench got it
    wall: float  # time.time() then (to compare with the events' occurred_at)
    topic: str


class Tap:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.seen: dict[str, list[Seen]] = defaultdict(list)
        self.changed = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tap:
        self.consumer = AIOKafkaConsumer(
            **self.settings.kafka("admin"),
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
        )
        await self.consumer.start()
        parts = [TopicPartition(t.name, p) for t in (*topics.SAGA_TOPICS, *topics.PROGRESS_TOPICS, topics.COMPLETIONS)
                 for p in range(t.partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:
            await self.consumer.position(tp)  # resolve "end" now, before anything is submitted
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            now, wall = time.perf_counter(), time.time()
            for records in batches.values():
                for record in records:
                    event = codec.decode(record.value)
                    self.seen[event.document_id].append(Seen(event, now, wall, record.topic))
            if batches:
                self.changed.set()
                self.changed = asyncio.Event()

    def first(self, document_id: str, event_type: str) -> Seen | None:
        return next((s for s in self.seen.get(document_id, []) if s.event.event_type == event_type), None)

    async def wait_for(self, document_ids: list[str], event_types: set[str], timeout: float,
                       topic: str | None = None, check: Callable[[], None] | None = None) -> dict[str, Seen]:
        """The first of `event_types` (on `topic`, if given) for each document.

        Raises as soon as a document fails or ends otherwise, or `check()` raises (a service died).
        """
        deadline = time.monotonic() + timeout
        found: dict[str, Seen] = {}
        checked: dict[str, int] = {}  # how many of each document's records were looked at
        while True:
            for doc in document_ids:
                if doc in found:
                    continue
                seen = self.seen.get(doc, [])
                start, checked[doc] = checked.get(doc, 0), len(seen)
                for s in seen[start:]:
                    if s.event.event_type in event_types and topic in (None, s.topic):
                        found[doc] = s
                        break
                    if s.event.event_type in TERMINAL_EVENTS - event_types or s.event.event_type.endswith("Failed"):
                        raise RuntimeError(f"{doc}: {s.event.event_type} {dict(s.event.payload)}")
            if len(found) == len(document_ids):
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(document_ids) - len(found)} documents without {event_types} after {timeout}s")
            if self.task is not None and self.task.done():
                self.task.result()  # the listener failed: raise its error
            if check is not None:
                check()
            changed = self.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 1.0))

