"""The trust boundary, end to end: hostile but well-formed events on the topic.

Every consumer checks each decoded event against the input rules (services/core/validation.py)
and dead-letters one that breaks a rule before any handler runs; an event for a saga that has
ended is refused by every step, so a late or forged failure cannot undo a completed document.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from services.client import Client
from services.core import codec, topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPLETED, DOCUMENT_SUBMITTED, Event
from services.core.store import StepStore
from services.operator.state import SagaReader
from tests.documents import paragraph, text_file
from tests.e2e.stores import footprint
from tests.e2e.test_bad_input import terminal_events
from tests.e2e.test_dead_letters import letters_for, produce, readers
from tests.running import Services

pytestmark = pytest.mark.stack


async def completed(folder: Path, name: str) -> str:
    async with Client() as client:
        sub = await client.submit(text_file(folder, name, paragraph(5, 400)), title=name)
        outcome = await asyncio.wait_for(client.wait(sub.document_id, sub.submitted_at_ms), 120)
    assert outcome.event_type == DOCUMENT_COMPLETED
    return sub.document_id


def _submission(document_id: str, source: Path, **changes: object) -> Event:
    payload = {"source_uri": source.as_uri(), "size_bytes": source.stat().st_size, "content_type": "text/plain",
               "submitter": "forger", "security_level": "internal", **changes}
    return Event(DOCUMENT_SUBMITTED, document_id, str(uuid.uuid4()), payload)


async def test_events_that_break_a_rule_are_dead_lettered_and_touch_nothing(
    services: Services, stack: Settings, run_dir: Path
) -> None:
    """Decodable but invalid: every consumer of its topic parks it with the rule it breaks before any handler
    runs; no path outside the chunk store is created, no other document's vectors are deleted."""
    folder = run_dir / "forged"
    folder.mkdir()
    source = text_file(folder, "forged.txt", paragraph(3, 300))
    victim = await completed(folder, "victim.txt")  # a document that must survive everything below
    escape = f"../escaped-{uuid.uuid4().hex[:8]}"
    before = footprint(victim)
    wildcard = f'{victim}" || document_id != "'
    forged = {
        "a path as document id": (escape, _submission(escape, source), "document_id must be a canonical UUID"),
        "a filter in the document id": (wildcard, Event("VectorsFailed", wildcard, str(uuid.uuid4()), {
            "step": "Vectors", "reason": "forged", "retryable": False, "error_type": "Forged"}),
            "document_id must be a canonical UUID"),
        "an unknown security level": (None, _submission(str(uuid.uuid4()), source, security_level="top-secret"),
                                      "security level must be one of"),
        "a key that is not its document id": (victim, _submission(str(uuid.uuid4()), source),
                                              "is not its document id"),
        "a progress event on the uploader's events topic": (None, Event("UploadProgressed", victim, str(uuid.uuid4()), {
            "bytes_done": 1, "bytes_total": 1, "percent": 100.0, "bytes_per_second": 1.0, "eta_seconds": None}),
            "UploadProgressed does not travel on"),
    }
    origins = {}
    for case, (key, event, _) in forged.items():
        owned = "UploadStarted" if event.event_type == "UploadProgressed" else event.event_type  # its producer's topic
        topic = topics.topic_for(owned, "admin")
        origins[case] = (topic.name, *await produce(stack, key or event.document_id, codec.encode(event), topic.name))
    for case, (_, event, reason) in forged.items():
        found = await letters_for(stack, origins[case], len(readers(origins[case][0])))
        assert sorted(x.event.producer for x in found) == readers(origins[case][0]), (case, services.logs())
        assert all(f"invalid {event.event_type}: " in x.event.payload["error"] and reason in x.event.payload["error"]
                   for x in found), (case, [x.event.payload["error"] for x in found])
    assert not (stack.chunk_store_dir / escape).resolve().exists()
    assert footprint(victim) == before and before.vectors > 0 and before.chunks > 0
    assert await terminal_events(stack, victim) == [DOCUMENT_COMPLETED]  # its saga did not move


async def test_an_ended_saga_stays_ended(services: Services, stack: Settings, run_dir: Path) -> None:
    """Well-formed events with valid ids for a completed document: a late failure of each later
    step, a compensation, a forward event. Every step that would act refuses them; no store
    changes, and the saga stays Completed (as announced to subscribers)."""
    folder = run_dir / "ended"
    folder.mkdir()
    doc = await completed(folder, "done.txt")
    before = footprint(doc)
    saga = SagaReader().state(doc).saga_id

    def failure(step: str) -> Event:
        return Event(f"{step}Failed", doc, saga, {"step": step, "reason": "forged", "retryable": False,
                                                 "error_type": "Forged"})

    forged = [  # (event, the service that would have acted on it)
        (failure("Relational"), "graph"), (failure("Graph"), "vector"), (failure("Vectors"), "security"),
        (Event("GraphCompensated", doc, saga, {"step": "Graph", "detail": "", "removed": 0, "failed_step": "Graph",
                                               "reason": "forged"}), "vector"),
        (Event("IntegrityVerified", doc, saga, {"sha256": "0" * 64, "chunks_checked": 1, "size_bytes": 1}), "security"),
    ]
    for event, _ in forged:  # each on its owner's topic: as that service's principal would publish it
        await produce(stack, doc, codec.encode(event), topics.topic_for(event.event_type, "admin").name)
    deadline = time.monotonic() + 60
    while True:
        refused = {s: {m["event_id"] for m in StepStore(s, stack, admin=True).step_log(doc).refused}
                   for s in {s for _, s in forged}}
        if all(e.event_id in refused[s] for e, s in forged) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert all(e.event_id in refused[s] for e, s in forged), (refused, services.logs())
    assert footprint(doc) == before
    assert await terminal_events(stack, doc) == [DOCUMENT_COMPLETED]
    state = SagaReader().state(doc)
    assert state.status == "Completed" and not state.errors
