"""Bad input against the six real services: refused files, a wrong declared hash, a duplicate submission.

A refusal ends the saga at the first step with the reason; a hash mismatch fails the verifier and the
uploader's compensation deletes the chunks; the same document id submitted twice is ingested once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.client import Client, Submission
from services.core import codec, topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPENSATED, DOCUMENT_COMPLETED, DOCUMENT_SUBMITTED, Event
from services.core.store import StepStore
from services.operator.state import SagaReader
from tests.documents import paragraph, pdf_file, text_file
from tests.e2e.stores import footprint
from tests.running import Services

pytestmark = pytest.mark.stack

TIMEOUT = 180


async def outcomes(client: Client, subs: list[Submission]) -> list[Event]:
    return list(
        await asyncio.wait_for(asyncio.gather(*(client.wait(s.document_id, s.submitted_at_ms) for s in subs)), TIMEOUT)
    )


async def terminal_events(settings: Settings, document_id: str) -> list[str]:
    """Every terminal event of the document on the completions topic (what downstream systems see)."""
    consumer = AIOKafkaConsumer(**settings.kafka("admin"), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topics.COMPLETIONS.name, p) for p in range(topics.COMPLETIONS.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: list[str] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    if r.key == document_id.encode():
                        found.append(codec.decode(r.value).event_type)
        return found
    finally:
        await consumer.stop()


def test_refused_files_end_the_saga_at_the_first_step_with_the_reason(
    services: Services, run_dir: Path, tmp_path: Path
) -> None:
    inside = run_dir / "refused"
    inside.mkdir()
    outside = tmp_path / "elsewhere.pdf"  # not under UDS3_ALLOWED_ROOT (the run's folder)
    outside.write_bytes(b"%PDF-1.7\n% a file in the wrong place\n")
    empty = inside / "empty.pdf"
    empty.write_bytes(b"")
    png = inside / "photo.pdf"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(256))
    (inside / "escape").symlink_to(tmp_path)
    cases = {
        empty: "the file is empty",
        png: "named .pdf but not a PDF",
        inside / "missing.pdf": "no such file",
        inside: "is a directory",
    }
    # The client stages a file from outside the inbox; a publisher that bypasses it is refused.
    published = {
        outside: "outside the allowed root",
        inside / "escape" / "elsewhere.pdf": "outside the allowed root",  # a symlink escape
    }

    async def run() -> list[Event]:
        async with Client() as client:
            subs = [await client.submit(path, title=f"refused {path.name}") for path in cases]
            since = int(time.time() * 1000)
            for path in published:
                event = Event(DOCUMENT_SUBMITTED, str(uuid.uuid4()), str(uuid.uuid4()), {
                    "source_uri": path.as_uri(), "size_bytes": 1, "content_type": "application/pdf",
                    "submitter": "bypass", "security_level": "internal", "title": f"refused {path.name}"})
                await client.republish(event)
                subs.append(Submission(event.document_id, event.saga_id, event.event_id, since))
            return await outcomes(client, subs)

    results = asyncio.run(run())
    for (path, reason), outcome in zip([*cases.items(), *published.items()], results, strict=True):
        assert outcome.event_type == DOCUMENT_COMPENSATED, (path, outcome)
        assert outcome.payload["failed_step"] == "Upload"
        assert reason in outcome.payload["reason"], (path, outcome.payload["reason"])
        assert footprint(outcome.document_id).empty
        state = SagaReader().state(outcome.document_id)
        assert state.status == "Compensated" and state.steps == {"Upload": "failed"}, state


def test_a_wrong_declared_hash_fails_integrity_and_the_chunks_are_deleted(services: Services, run_dir: Path) -> None:
    folder = run_dir / "wrong-hash"
    folder.mkdir()
    source = pdf_file(folder, "declared.pdf", [paragraph(7, 1200), paragraph(8, 1200)])
    wrong = "ab" * 32

    async def run() -> Event:
        async with Client() as client:
            sub = await client.submit(source, title="wrong declared hash", declared_sha256=wrong)
            return (await outcomes(client, [sub]))[0]

    outcome = asyncio.run(run())
    assert outcome.event_type == DOCUMENT_COMPENSATED, outcome
    assert outcome.payload["failed_step"] == "Integrity"
    assert f"declared sha256 {wrong} does not match" in outcome.payload["reason"]
    state = SagaReader().state(outcome.document_id)
    assert state.steps == {"Upload": "compensated", "Integrity": "failed"}, state
    upload_undone = [m for m in state.history if m["event_type"] == "UploadCompensated"]
    assert upload_undone and upload_undone[0]["payload"]["removed"] == 1  # the chunk was there, and was deleted
    assert footprint(outcome.document_id).empty


def test_the_same_document_submitted_twice_is_ingested_once(
    services: Services, run_dir: Path, stack: Settings
) -> None:
    folder = run_dir / "duplicate"
    folder.mkdir()
    source = text_file(folder, "twice.txt", " ".join(paragraph(900 + i, 900) for i in range(4)))
    doc = str(uuid.uuid4())

    async def submit_twice_then_again() -> tuple[Event, list[Submission]]:
        async with Client() as client:
            first = await client.submit(source, title="twice", document_id=doc)
            second = await client.submit(source, title="twice", document_id=doc)  # while the first is running
            outcome = (await outcomes(client, [first]))[0]
            third = await client.submit(source, title="twice", document_id=doc)  # after it completed
            return outcome, [first, second, third]

    outcome, subs = asyncio.run(submit_twice_then_again())
    assert outcome.event_type == DOCUMENT_COMPLETED, (outcome, services.logs())
    uploader = StepStore("uploader", stack, admin=True)
    deadline = time.monotonic() + 60
    while not uploader.step_log(doc).refused:  # the uploader has seen all three: the third after the end
        assert time.monotonic() < deadline, services.logs()
        time.sleep(0.2)
    log = uploader.step_log(doc)
    assert [s["saga_id"] for s in _submissions(uploader, doc)] == [s.saga_id for s in subs[:2]]
    assert [(m["saga_id"], m["reason"]) for m in log.refused] == [
        (subs[2].saga_id, "the saga had already ended (DocumentCompleted)")]
    assert [m["event_type"] for m in log.emitted].count("UploadCompleted") == 1
    time.sleep(2)  # were a second saga running, its events would be on their way by now
    assert asyncio.run(terminal_events(stack, doc)) == [DOCUMENT_COMPLETED]
    state = SagaReader().state(doc)
    assert [m["event_type"] for m in state.history].count(DOCUMENT_COMPLETED) == 1
    assert {m["saga_id"] for m in state.history if m["event_type"] != DOCUMENT_SUBMITTED} == {subs[0].saga_id}
    f = footprint(doc)
    chunk_count = outcome.payload["chunk_count"]
    assert (f.chunks, f.graph_nodes, f.relational_rows, f.security_records) == (1, 1, 1, 1), f
    assert chunk_count >= 4 and f.vectors == chunk_count, (f, chunk_count)


def _submissions(store: StepStore, doc: str) -> list[dict[str, Any]]:
    return [m for m in store.step_log(doc).received if m["event_type"] == DOCUMENT_SUBMITTED]
