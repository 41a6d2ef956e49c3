"""Submitting documents to the running services and timing them from their events."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench.services import Services
from bench.tap import Seen, Tap
from services.client import Client
from services.core import topics
from services.core.events import (
    DOCUMENT_COMPLETED,
    GRAPH_LINKED,
    INTEGRITY_VERIFIED,
    RELATIONAL_RECORDED,
    SECURITY_RECORDED,
    UPLOAD_COMPLETED,
    UPLOAD_STARTED,
    VECTORS_INDEXED,
)

# The saga's milestones in order, each named by the stage that ends with it.
MILESTONES = [
    ("submit -> uploader starts", UPLOAD_STARTED),
    ("upload", UPLOAD_COMPLETED),
    ("integrity", INTEGRITY_VERIFIED),
    ("security", SECURITY_RECORDED),
    ("vectors", VECTORS_INDEXED),
    ("graph", GRAPH_LINKED),
    ("relational", RELATIONAL_RECORDED),
    ("completed (event made)", DOCUMENT_COMPLETED),
]


@dataclass
class Ingested:
    tap: Tap
    submitted: dict[str, float]  # document id -> time.perf_counter() just before its submit
    submitted_wall: dict[str, float]  # the same moment as time.time()
    done: dict[str, Seen]  # document id -> the awaited event, with its arrival time

    def latency(self, doc: str) -> float:
        """Seconds from submit to the awaited event's arrival at the bench."""
        return self.done[doc].received - self.submitted[doc]

    def occurred(self, doc: str, event_type: str) -> float:
        """When the event's producer made it (epoch seconds, millisecond precision)."""
        seen = self.tap.first(doc, event_type)
        if seen is None:
            raise RuntimeError(f"{doc}: no {event_type} seen")
        return seen.event.occurred_at.timestamp()

    def between(self, doc: str, first: str, last: str) -> float:
        return self.occurred(doc, last) - self.occurred(doc, first)

    def stages(self, doc: str) -> dict[str, float]:
        """Seconds of each stage of a completed saga, from the events' occurred_at (one clock)."""
        out, before = {}, self.submitted_wall[doc]
        for stage, event_type in MILESTONES:
            at = self.occurred(doc, event_type)
            out[stage] = at - before
            before = at
        out["completions topic -> bench"] = self.done[doc].wall - before
        return out


async def ingest(paths: list[Path], timeout: float, until: str = DOCUMENT_COMPLETED, completions: bool = True,
                 rate: float | None = None, running: Services | None = None, one_at_a_time: bool = False) -> Ingested:
    """Submits `paths` (all at once, `rate` per second, or each once the one before is done) and
    waits for `until` for each.

    With `completions`, `until` is awaited on the completions topic (what subscribers see).
    With `running`, gives up as soon as one of those services dies.
    """
    submitted: dict[str, float] = {}
    submitted_wall: dict[str, float] = {}
    done: dict[str, Seen] = {}
    topic = topics.COMPLETIONS.name if completions else None
    check = running.check_alive if running else None
    async with Tap() as tap, Client() as client:

        async def submit(path: Path) -> str:
            submitted_at, wall = time.perf_counter(), time.time()
            sub = await client.submit(path, title=path.stem, author="Bench Clerk", organisation="Bench Office",
                                      case_number="BENCH-1")
            submitted[sub.document_id], submitted_wall[sub.document_id] = submitted_at, wall
            return sub.document_id

        start = time.perf_counter()
        if rate or one_at_a_time:
            for i, path in enumerate(paths):
                if rate:
                    await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                doc = await submit(path)
                if one_at_a_time:
                    done |= await tap.wait_for([doc], {until}, timeout, topic=topic, check=check)
        else:  # all at once: many submissions in flight, so the client is not what sets the pace
            for group in range(0, len(paths), 32):
                await asyncio.gather(*(submit(p) for p in paths[group:group + 32]))
        done |= await tap.wait_for([d for d in submitted if d not in done], {until}, timeout, topic=topic,
                                   check=check)
    return Ingested(tap, submitted, submitted_wall, done)


def ingest_sync(paths: list[Path], timeout: float, until: str = DOCUMENT_COMPLETED, completions: bool = True,
                rate: float | None = None, running: Services | None = None, one_at_a_time: bool = False) -> Ingested:
    """`ingest`, from synchronous code."""
    return asyncio.run(ingest(paths, timeout, until, completions, rate, running, one_at_a_time))
