"""Guarantees G1/G2/G3 on the happy path: six service processes, real Kafka and stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.client import Client, Submission
from services.compose import build_step
from services.core import codec, topics
from services.core.config import Settings
from services.core.saga import SERVICES
from services.core.steplog import event_of
from services.operator.state import SagaReader
from tests.documents import paragraph, pdf_file, text_file
from tests.e2e.stores import content, footprint
from tests.running import Services

pytestmark = pytest.mark.stack


async def submit_and_wait(client: Client, paths: list[Path], timeout: float = 240) -> dict[str, tuple[Submission, Any]]:
    subs = [await client.submit(p, title=p.stem, author="A. Clerk", case_number="C-1") for p in paths]
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(client.wait(s.document_id, s.submitted_at_ms) for s in subs)), timeout
    )
    return {s.document_id: (s, o) for s, o in zip(subs, outcomes, strict=True)}


def make_documents(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        if i % 2:
            paths.append(pdf_file(folder, f"doc{i}.pdf", [paragraph(i * 10 + p, 1500) for p in range(3)]))
        else:
            paths.append(text_file(folder, f"doc{i}.txt", paragraph(i, 200)))
    return paths


async def count_messages(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(**settings.kafka("admin"))
    await consumer.start()
    try:
        parts = [
            TopicPartition(t.name, p)
            for t in (*topics.SAGA_TOPICS, topics.COMPLETIONS)
            for p in consumer.partitions_for_topic(t.name) or range(t.partitions)
        ]
        ends = await consumer.end_offsets(parts)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_twenty_documents_complete_with_every_store_in_agreement(
    services: Services, run_dir: Path, stack: Settings
) -> None:
    folder = run_dir / "happy"
    folder.mkdir()
    async with Client() as client:
        results = await submit_and_wait(client, make_documents(folder, 20))
    outcomes = [o.event_type for _, o in results.values()]  # type: ignore[attr-defined]
    assert outcomes == ["DocumentCompleted"] * 20, services.logs()
    reader = SagaReader()
    for doc, (_, done) in results.items():
        f = footprint(doc)
        chunk_count = done.payload["chunk_count"]  # type: ignore[attr-defined]
        assert f.chunks == 1 and f.graph_nodes == 1 and f.relational_rows == 1 and f.security_records == 1, f
        assert chunk_count >= 1 and f.vectors == chunk_count, (doc, f, chunk_count)
        assert reader.state(doc).status == "Completed"
    await assert_one_partition_per_document_in_causal_order(stack, set(results))


async def assert_one_partition_per_document_in_causal_order(settings: Settings, docs: set[str]) -> None:
    """G6: on each producer's topic a document's events share one partition, in causal order
    there; every cause of an event was published (on its producer's topic) before it."""
    where: dict[str, tuple[str, int]] = {}  # event id -> (topic, offset)
    partitions: dict[tuple[str, str], set[int]] = {}
    events = []
    for record in await topics.read_all(settings, *topics.SAGA_TOPICS):
        try:
            event = codec.decode(record.value)
        except codec.UndecodableEvent:
            continue  # poison from the dead-letter tests (G8)
        if event.document_id in docs:
            partitions.setdefault((event.document_id, record.topic), set()).add(record.partition)
            where[event.event_id] = (record.topic, record.offset)
            events.append(event)
    for event in events:
        if event.causation_id is None:
            continue
        assert event.causation_id in where, f"{event.event_type} names a cause never published"
        (cause_topic, cause_offset), (topic, offset) = where[event.causation_id], where[event.event_id]
        assert cause_topic != topic or cause_offset < offset, event.event_type
    assert {doc for doc, _ in partitions} == docs
    assert all(len(p) == 1 for p in partitions.values())


async def test_redelivery_from_offset_zero_changes_nothing(services: Services, run_dir: Path, stack: Settings) -> None:
    folder = run_dir / "redelivery"
    folder.mkdir()
    async with Client() as client:
        results = await submit_and_wait(client, make_documents(folder, 4))
    before = {doc: footprint(doc) for doc in results}
    messages_before = await count_messages(stack)
    services.stop()
    await reset_groups_to_zero(stack)
    services.start_stopped()
    await wait_groups_caught_up(stack)  # every service re-read the whole topic from offset 0
    assert await count_messages(stack) == messages_before, "redelivery emitted new events"
    assert {doc: footprint(doc) for doc in results} == before


async def test_every_event_published_again_is_recognised_by_its_id_and_changes_no_store(
    services: Services, run_dir: Path, stack: Settings
) -> None:
    """A relay that published twice, an operator's `uds3 resume`: the same events again, at new
    offsets, so no tracked position hides them. Every service's inbox (`StepLog.processed`)
    recognises each by its id: no event is emitted, no log grows, no store changes a field."""
    folder = run_dir / "republish"
    folder.mkdir()
    async with Client() as client:
        results = await submit_and_wait(client, make_documents(folder, 3))
    reader = SagaReader()
    before = {doc: content(doc) for doc in results}
    logs_before = {doc: len(reader.messages(doc)) for doc in results}
    messages_before = await count_messages(stack)
    events = [event_of(m) for doc in results for m in reader.state(doc).history]
    async with Client(principal="admin") as admin:
        for event in events:
            await admin.republish(event)
    copies = sum(len(topics.topics_for(e.event_type, e.producer)) for e in events)
    await wait_groups_caught_up(stack)
    assert await count_messages(stack) == messages_before + copies, "a republished event made a service emit"
    assert {doc: len(reader.messages(doc)) for doc in results} == logs_before
    assert {doc: content(doc) for doc in results} == before


def event_partitions() -> list[TopicPartition]:
    return [TopicPartition(t.name, p) for t in topics.SAGA_TOPICS for p in range(t.partitions)]


async def reset_groups_to_zero(settings: Settings, timeout: float = 90) -> None:
    """Rewinds every service's group to offset 0. Stopped static members stay in their group
    until the session timeout, and Kafka refuses outside commits until then: retry."""
    deadline = asyncio.get_running_loop().time() + timeout
    for service in SERVICES:
        while True:
            consumer = AIOKafkaConsumer(
                **settings.kafka("admin"),
                group_id=f"{topics.PREFIX}-{service}",
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                consumer.assign(event_partitions())
                await consumer.commit({tp: 0 for tp in event_partitions()})
                break
            except KafkaError:
                assert asyncio.get_running_loop().time() < deadline, f"could not rewind {service}"
                await asyncio.sleep(2)
            finally:
                await consumer.stop()


async def wait_groups_caught_up(settings: Settings, timeout: float = 180) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka("admin"))
    probe = AIOKafkaConsumer(**settings.kafka("admin"))
    await admin.start()
    await probe.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            ends = await probe.end_offsets(event_partitions())
            behind = []
            for service in SERVICES:
                committed = await admin.list_consumer_group_offsets(f"{topics.PREFIX}-{service}")
                reads = {t.name for t in topics.consumed(build_step(service, settings).inputs)}
                behind += [
                    service for tp, end in ends.items()
                    if tp.topic in reads and (committed.get(tp).offset if committed.get(tp) else 0) < end
                ]
            if not behind:
                return
            assert asyncio.get_running_loop().time() < deadline, f"still behind: {sorted(set(behind))}"
            await asyncio.sleep(1)
    finally:
        await probe.stop()
        await admin.close()
