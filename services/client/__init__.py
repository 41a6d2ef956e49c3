"""The async Python client: submit a document, follow its progress, wait for its outcome.

async with Client() as client:
    sub = await client.submit("/data/case-files/big.pdf", title="Case 17")
    async for event in client.progress(sub.document_id):
        print(event.event_type, dict(event.payload))
    outcome = await client.wait(sub.document_id)
"""

from __future__ import annotations

import asyncio
import getpass
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from services.core import codec, topics, tracing, validation
from services.core.config import Settings
from services.core.events import DOCUMENT_SUBMITTED, TERMINAL_EVENTS, Event
from services.core.saga import SUBMITTER


@dataclass(frozen=True)
class Submission:
    document_id: str
    saga_id: str
    event_id: str
    submitted_at_ms: int


class Client:
    """Connects as the `client` principal, which may only submit (and read the saga's events);
    operator tools pass `principal="admin"` to re-drive events of any step."""

    def __init__(self, settings: Settings | None = None, principal: str = SUBMITTER) -> None:
        self.settings = settings or Settings()
        self.principal = principal
        self.producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.producer is None:
            producer = AIOKafkaProducer(**self.settings.kafka(self.principal), enable_idempotence=True, acks="all")
            try:
                await producer.start()
            except BaseException:
                await producer.stop()  # a broker that cannot be reached leaves nothing open behind
                raise
            self.producer = producer

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def submit(
        self,
        path: str | Path,
        *,
        title: str | None = None,
        author: str | None = None,
        organisation: str | None = None,
        case_number: str | None = None,
        references: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        security_level: str = validation.DEFAULT_SECURITY_LEVEL,
        submitter: str | None = None,
        declared_sha256: str | None = None,
        document_id: str | None = None,
        content_type: str = "",
        staged: Callable[[int, int], None] | None = None,
    ) -> Submission:
        """Publishes DocumentSubmitted (a claim check: the path, never the bytes).

        Raises `validation.InvalidInput`, publishing nothing, when a field breaks a rule that
        every consumer applies (`services/core/validation.py`).

        The services read documents only from the ingest inbox (`UDS3_ALLOWED_ROOT`): a file
        elsewhere is first copied into `<inbox>/staged/<document id>/`, read with the caller's
        rights; `staged(done, total)` is called as the copy proceeds. With an inbox on an object
        store (`UDS3_INBOX_URL`) every file is uploaded there the same way."""
        doc = validation.uuid_id("document id", document_id) if document_id else str(uuid.uuid4())
        source, size = await asyncio.to_thread(self._stage, Path(path), doc, staged)
        event = Event(
            event_type=DOCUMENT_SUBMITTED,
            document_id=doc,
            saga_id=str(uuid.uuid4()),
            producer=SUBMITTER,
            payload={
                "source_uri": source,
                "size_bytes": size,
                "declared_sha256": declared_sha256,
                "content_type": content_type,  # what the submitter declares, if anything: the uploader decides
                "title": title,
                "author": author,
                "organisation": organisation,
                "case_number": case_number,
                "references": list(references),
                "metadata": dict(metadata or {}),
                "security_level": security_level,
                "submitter": submitter or getpass.getuser(),
            },
        )
        validation.check_event(event)  # the rules every consumer applies: refused here, with the reason
        await self.start()
        assert self.producer is not None
        now_ms = int(time.time() * 1000)
        # The saga's trace starts here (a child of the caller's span, if any): services/core/tracing.py.
        with tracing.span("submit", document_id=doc, saga_id=event.saga_id, event_id=event.event_id):
            await self.producer.send_and_wait(topics.SUBMISSIONS.name, codec.encode(event), key=doc.encode(),
                                              headers=tracing.headers(tracing.current_traceparent()))
        return Submission(doc, event.saga_id, event.event_id, now_ms)

    def _stage(self, path: Path, document_id: str, staged: Callable[[int, int], None] | None) -> tuple[str, int]:
        """The source URI the services will read, and its size (0 when missing: the uploader
        refuses it with a clear reason)."""
        if self.settings.inbox_url and path.is_file():
            from services.core.inbox import S3Inbox  # boto3 only for clients of an object-store inbox

            return S3Inbox.of(self.settings).stage(path, document_id, staged), path.stat().st_size
        source = stage(path, self.settings.allowed_root, document_id, staged)
        return source.as_uri(), os.path.getsize(source) if os.path.exists(source) else 0

    async def republish(self, event: Event) -> None:
        """Publishes a recorded event again, with its original id: consumers that already
        handled it recognise it and change nothing; a consumer that never saw it acts on it."""
        await self.start()
        assert self.producer is not None
        data = codec.encode(event)
        for topic in topics.topics_for(event.event_type, event.producer):
            await self.producer.send_and_wait(topic.name, data, key=event.document_id.encode())

    async def progress(self, document_id: str, since_ms: int | None = None) -> AsyncIterator[Event]:
        """Every event of the document (steps and progress), its terminal event last. Events of
        different topics arrive in no fixed order, so once the terminal event is read the rest of
        every topic, up to its end at that moment, is read too: a saga that ended before the
        stream caught up still shows all its steps."""
        async for event in self._follow([*topics.SAGA_TOPICS, *topics.PROGRESS_TOPICS], since_ms, document_id,
                                        until_terminal=True):
            yield event

    async def watch(self, since_ms: int | None = None) -> AsyncIterator[Event]:
        """Every event of every document (steps and progress) from `since_ms` on, endlessly
        (what a live view follows)."""
        async for event in self._follow([*topics.SAGA_TOPICS, *topics.PROGRESS_TOPICS], since_ms, None):
            yield event

    async def wait(self, document_id: str, since_ms: int | None = None) -> Event:
        """The document's terminal event: DocumentCompleted, DocumentCompensated or CompensationFailed."""
        async for event in self._follow([topics.COMPLETIONS], since_ms, document_id):
            return event
        raise RuntimeError("completions stream ended")  # pragma: no cover - the stream is endless

    async def subscribe_completions(
        self, from_beginning: bool = False, group_id: str | None = None, since_ms: int | None = None
    ) -> AsyncIterator[Event]:
        """Terminal events for downstream systems.

        With a group id, positions are committed and a restart continues where it stopped;
        `since_ms` replays from a point in time instead (e.g. to feed a new downstream system).
        The client principal may join only groups named `<prefix>-client-*`.
        """
        allowed = topics.client_group_prefix()
        if group_id is not None and self.principal == SUBMITTER and not group_id.startswith(allowed):
            raise validation.InvalidInput(f"consumer group {group_id!r}: a client's groups start with "
                                          f"{allowed!r} (the broker's ACLs allow no other)")
        if since_ms is not None:
            async for event in self._follow([topics.COMPLETIONS], since_ms + 5_000, None):
                yield event
            return
        consumer = AIOKafkaConsumer(
            topics.COMPLETIONS.name,
            **self.settings.kafka(self.principal),
            group_id=group_id,
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=group_id is not None,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            async for record in consumer:
                yield codec.decode(record.value)
        finally:
            await consumer.stop()

    async def _follow(
        self, follow: list[topics.Topic], since_ms: int | None, document_id: str | None, until_terminal: bool = False
    ) -> AsyncIterator[Event]:
        # "earliest": with "latest", the reset still in flight after assign() can override our seek.
        consumer = AIOKafkaConsumer(
            **self.settings.kafka(self.principal),
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            parts = [
                TopicPartition(t.name, p)
                for t in follow
                for p in sorted(consumer.partitions_for_topic(t.name) or await _partitions(consumer, t.name))
            ]
            consumer.assign(parts)
            await _seek_to_time(consumer, parts, since_ms)
            async for record in consumer:
                event = _of(record, document_id)
                if event is None:
                    continue
                if until_terminal and event.event_type in TERMINAL_EVENTS:
                    ends = await consumer.end_offsets(parts)
                    while pending := [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                        for records in (await consumer.getmany(*pending, timeout_ms=500)).values():
                            for earlier in filter(None, (_of(r, document_id) for r in records)):
                                yield earlier
                    yield event
                    return
                yield event
        finally:
            await consumer.stop()


def _of(record: ConsumerRecord, document_id: str | None) -> Event | None:
    """The record's event, if it is one of the document's (None: another's, or not an event)."""
    if document_id and record.key is not None and record.key.decode() != document_id:
        return None
    try:
        event = codec.decode(record.value)
    except codec.UndecodableEvent:
        return None
    return event if document_id is None or event.document_id == document_id else None


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # first use: metadata not fetched yet
    return consumer.partitions_for_topic(topic) or set()


async def _seek_to_time(consumer: AIOKafkaConsumer, parts: list[TopicPartition], since_ms: int | None) -> None:
    if since_ms is None:
        await consumer.seek_to_beginning(*parts)
        return
    # The ends first: a partition with no record since `since_ms` is read from where it ended
    # before the search, so a record written while the search ran is not skipped.
    ends = await consumer.end_offsets(parts)
    found = await consumer.offsets_for_times({tp: max(since_ms - 5_000, 0) for tp in parts})
    for tp in parts:
        hit = found.get(tp)
        consumer.seek(tp, hit.offset if hit is not None else ends[tp])


def stage(source: Path, inbox: Path, document_id: str, progress: Callable[[int, int], None] | None = None) -> Path:
    """The path the services will read: `source` itself when it lies in the inbox (symlinks
    resolved), else a copy in it. A missing or special file is passed on as it is: the
    uploader refuses it with the reason."""
    source = source.absolute()
    if not source.is_file() or source.resolve().is_relative_to(inbox.resolve()):
        return source
    target = inbox / "staged" / document_id / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    total, done, tmp = source.stat().st_size, 0, target.with_name(f".{target.name}.part")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        while block := src.read(8 << 20):
            dst.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    os.replace(tmp, target)
    return target


def payload_summary(event: Event) -> dict[str, Any]:
    return {k: v for k, v in event.payload.items() if not isinstance(v, bytes)}
