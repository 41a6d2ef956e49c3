"""G8 poison messages: undecodable bytes on the events topic go to the dead-letter topic with
the reason and where they came from; every service keeps going; the CLI lists, shows and
re-drives them."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
import typer
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from services.cli.ops import dlq_app, group_letters, read_letters
from services.client import Client
from services.compose import build_step
from services.core import codec, topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPLETED, DOCUMENT_SUBMITTED, Event
from services.core.saga import SERVICES
from tests.documents import paragraph, text_file
from tests.running import Services

pytestmark = pytest.mark.stack


async def produce(settings: Settings, key: str, value: bytes, topic: str = topics.SUBMISSIONS.name) -> tuple[int, int]:
    """Publishes as admin (the broker lets it write anywhere), as a compromised principal would
    on its own topic: what the consumers' own checks catch."""
    producer = AIOKafkaProducer(**settings.kafka("admin"))
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=key.encode())
        return meta.partition, meta.offset
    finally:
        await producer.stop()


def unknown_fingerprint_frame() -> bytes:
    """A well-formed DocumentSubmitted whose schema fingerprint no registry version has."""
    valid = codec.encode(Event(DOCUMENT_SUBMITTED, str(uuid.uuid4()), str(uuid.uuid4()), {
        "source_uri": "file:///nowhere.txt", "size_bytes": 1, "content_type": "text/plain", "submitter": "x"}))
    return valid[:2] + bytes(8) + valid[codec.HEADER_SIZE:]


def readers(topic_name: str) -> list[str]:
    """The services that consume a topic (each reads the topics that carry its inputs)."""
    return sorted(s for s in SERVICES
                  if topic_name in {t.name for t in topics.consumed(build_step(s, Settings()).inputs)})


async def letters_for(settings: Settings, origin: tuple[str, int, int], count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in await read_letters(settings) if x.origin == origin]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(1)


async def dlq_cli(*args: str) -> Result:
    app = typer.Typer()
    app.add_typer(dlq_app, name="dlq")
    return await asyncio.to_thread(CliRunner().invoke, app, ["dlq", *args])


async def test_poison_messages_are_dead_lettered_and_the_services_keep_going(
    services: Services, stack: Settings, run_dir: Path
) -> None:
    key = f"poison-{uuid.uuid4()}"
    garbage = b"\x00not an avro frame\xff" + os.urandom(40)
    frame = unknown_fingerprint_frame()
    garbage_at = (topics.SUBMISSIONS.name, *await produce(stack, key, garbage))
    frame_at = (topics.SUBMISSIONS.name, *await produce(stack, key, frame))

    for origin, value, reason in ((garbage_at, garbage, "bad marker"), (frame_at, frame, "unknown schema fingerprint")):
        found = await letters_for(stack, origin, len(SERVICES))
        groups = sorted(x.event.payload["consumer_group"] for x in found)
        assert groups == sorted(f"{topics.PREFIX}-{s}" for s in SERVICES), services.logs()
        for x in found:
            p = x.event.payload
            assert p["original"] == value
            assert reason in p["error"]
            assert (p["topic"], p["partition"], p["offset"]) == origin
            assert x.key == key.encode() and x.event.document_id == key
            assert x.event.producer in SERVICES

    # the consumers moved on: a document submitted after the poison completes
    folder = run_dir / "after-poison"
    folder.mkdir()
    async with Client() as client:
        sub = await client.submit(text_file(folder, "ok.txt", paragraph(7, 400)), title="after poison")
        outcome = await asyncio.wait_for(client.wait(sub.document_id, sub.submitted_at_ms), 120)
    assert outcome.event_type == DOCUMENT_COMPLETED, services.logs()

    # the CLI: one row per bad message, with its origin and the groups that parked it
    listed = await dlq_cli("list")
    assert listed.exit_code == 0, listed.output
    assert "message(s)" in listed.output
    rows = [json.loads(line) for line in (await dlq_cli("list", "--json")).output.splitlines()]
    mine = [r for r in rows if r["key"] == key]
    assert [(r["origin"]["topic"], r["origin"]["partition"], r["origin"]["offset"]) for r in mine] == [
        garbage_at, frame_at]
    assert all(len(r["groups"]) == len(SERVICES) and len(r["dlq_offsets"]) == len(SERVICES) for r in mine)
    assert "bad marker" in mine[0]["errors"][0] and "unknown schema fingerprint" in mine[1]["errors"][0]
    groups = group_letters(await read_letters(stack))
    garbage_group = next(g for g in groups if g.first.origin == garbage_at)
    assert len(garbage_group.letters) == len(SERVICES)

    shown = await dlq_cli("show", str(garbage_group.letters[-1].offset))
    assert shown.exit_code == 0, shown.output
    assert "bad marker" in shown.output
    assert garbage[:16].hex(" ") in shown.output  # the head of the original bytes, in hex
    assert f"{garbage_at[1]}@{garbage_at[2]}" in shown.output

    # re-drive: the original bytes go back to their topic (still poison: parked again, at a new offset)
    frame_group = next(g for g in groups if g.first.origin == frame_at)
    redriven = await dlq_cli("redrive", str(frame_group.first.offset))
    assert redriven.exit_code == 0, redriven.output
    deadline = time.monotonic() + 60
    while True:
        again = [x for x in await read_letters(stack)
                 if x.event.payload["original"] == frame and x.origin != frame_at]
        if len(again) >= len(SERVICES) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert len(again) == len(SERVICES)
    assert {x.origin[:2] for x in again} == {frame_at[:2]}  # same topic and partition
    assert all(x.origin[2] > frame_at[2] for x in again)

    missing = await dlq_cli("show", "999999999")
    assert missing.exit_code == 2

