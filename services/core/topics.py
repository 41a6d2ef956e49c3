"""Every Kafka topic of the saga, named and configured in this one place.

Messages are keyed by document id (UTF-8 bytes of `Event.document_id`): one document's
events stay in one partition, in order (G6), while documents spread across partitions.
The broker does not auto-create topics; `ensure_topics` creates them explicitly.

Environment: ``UDS3_TOPIC_PREFIX`` (default "uds3", lets tests isolate their topics) and
``UDS3_TOPIC_REPLICATION`` (default 1, for the local single-broker stack).

    python -m services.core.topics [--bootstrap HOST:PORT]   # create the missing topics
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.structs import ConsumerRecord

from services.core.events import ALL_EVENT_TYPES, DEAD_LETTER, PROGRESS_EVENTS, TERMINAL_EVENTS

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class Topic:
    """A topic and the configuration it is created with."""

    name: str
    partitions: int
    replication_factor: int
    retention_ms: int  # -1: keep forever
    cleanup_policy: str
    description: str
    carries: tuple[str, ...]

    @property
    def configs(self) -> dict[str, str]:
        """Topic-level broker configs, as the admin API takes them."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def key_for(document_id: str) -> bytes:
    """The message key: the document id, so a document's events keep their order."""
    return document_id.encode()


def build_topics(prefix: str, replication_factor: int = 1) -> tuple[Topic, Topic, Topic, Topic]:
    """The four topics under `prefix`: events, progress, completions, dead letters."""
    domain = tuple(t for t in ALL_EVENT_TYPES if t not in PROGRESS_EVENTS)
    progress = tuple(t for t in ALL_EVENT_TYPES if t in PROGRESS_EVENTS)
    terminal = tuple(t for t in ALL_EVENT_TYPES if t in TERMINAL_EVENTS)
    return (
        Topic(
            f"{prefix}.saga.events", 6, replication_factor, 30 * DAY_MS, "delete",
            "Every saga event except progress: the choreography itself. Services consume it in "
            "their own consumer group and react to the events of their step.",
            domain,
        ),
        Topic(
            f"{prefix}.saga.progress", 6, replication_factor, 1 * DAY_MS, "delete",
            "High-volume progress and checkpoint events (chunks stored, upload and embedding "
            "progress), kept apart so they never delay the saga's own events.",
            progress,
        ),
        Topic(
            f"{prefix}.saga.completions", 3, replication_factor, 365 * DAY_MS, "delete",
            "Terminal outcome of every document, for downstream subscribers. Producers publish "
            "terminal events here in addition to the events topic.",
            terminal,
        ),
        Topic(
            f"{prefix}.saga.dlq", 1, replication_factor, 30 * DAY_MS, "delete",
            "Messages a consumer could not decode or handle, wrapped in a DeadLetter event with "
            "the reason; inspected and re-driven from the CLI.",
            (DEAD_LETTER,),
        ),
    )


PREFIX = os.environ.get("UDS3_TOPIC_PREFIX", "uds3")
REPLICATION_FACTOR = int(os.environ.get("UDS3_TOPIC_REPLICATION", "1"))
EVENTS, PROGRESS, COMPLETIONS, DEAD_LETTERS = build_topics(PREFIX, REPLICATION_FACTOR)
ALL_TOPICS: tuple[Topic, ...] = (EVENTS, PROGRESS, COMPLETIONS, DEAD_LETTERS)

_PRIMARY: dict[str, Topic] = {t: topic for topic in (EVENTS, PROGRESS, DEAD_LETTERS) for t in topic.carries}
_ALSO: dict[str, tuple[Topic, ...]] = {t: (COMPLETIONS,) for t in COMPLETIONS.carries}


def topic_for(event_type: str) -> Topic:
    """The topic an event type is published to (and consumed from by the saga's services)."""
    try:
        return _PRIMARY[event_type]
    except KeyError:
        raise KeyError(f"no topic carries event type {event_type!r}") from None


def topics_for(event_type: str) -> tuple[Topic, ...]:
    """Every topic a producer publishes an event type to: terminal events also go to completions."""
    return (topic_for(event_type), *_ALSO.get(event_type, ()))


async def read_all(bootstrap: str, topic: Topic) -> list[ConsumerRecord]:
    """Every record of a topic, from its beginning to its end at the time of the call
    (operator tools and audits; services consume through their groups)."""
    # earliest: with the default (latest), the reset of a fresh assignment can race seek_to_beginning
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic.name) or set(range(topic.partitions))
        parts = [TopicPartition(topic.name, p) for p in sorted(partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        pending = {tp for tp in parts if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, rs in batch.items():
                records += [r for r in rs if r.offset < ends[tp]]
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return records
    finally:
        await consumer.stop()


async def delete_topics(bootstrap: str, prefix: str = PREFIX) -> list[str]:
    """Deletes every topic of a finished test, bench or chaos run (`<prefix>.` and `<prefix>-*.`):
    a long-lived stack otherwise gathers thousands of partitions, and slows down with them."""
    if prefix == "uds3":
        raise ValueError("refusing to delete the default deployment's topics")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.split(".", 1)[0].split("-", 1)[0] == prefix]
        if ours:
            await admin.delete_topics(ours)
        return ours
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str, topics: Iterable[Topic] = ALL_TOPICS, timeout_s: float = 30.0
) -> list[str]:
    """Create the missing topics (idempotent) and wait until every partition has a leader.

    Returns the names it created. An existing topic is left as it is; a partition count that
    differs from the registry is only logged: repartitioning would break per-document order.
    """
    wanted = {t.name: t for t in topics}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for name, t in wanted.items() if name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics([
                NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs) for t in missing
            ])
            for name, code, *rest in response.topic_errors:
                error = for_code(code) if code else None
                if error is None:
                    created.append(name)
                elif error is not TopicAlreadyExistsError:  # already exists: created concurrently
                    raise error(f"creating topic {name}: {rest[0] if rest and rest[0] else ''}")
        partitions = await _wait_for_leaders(admin, set(wanted), timeout_s)
        for name, count in sorted(partitions.items()):
            if count != wanted[name].partitions:
                log.warning("topic %s has %d partitions, the registry says %d",
                            name, count, wanted[name].partitions)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: set[str], timeout_s: float) -> dict[str, int]:
    """Partition counts once every partition of `names` has a leader (producers can then send)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        ready = {
            meta["topic"]: len(meta["partitions"])
            for meta in await admin.describe_topics(sorted(names))
            if meta["error_code"] == 0 and meta["partitions"] and _have_leaders(meta["partitions"])
        }
        if names <= ready.keys():
            return ready
        if loop.time() > deadline:
            raise TimeoutError(f"topics without leaders after {timeout_s}s: {sorted(names - ready.keys())}")
        await asyncio.sleep(0.2)


def _have_leaders(partitions: list[dict[str, int]]) -> bool:
    return all(p["leader"] >= 0 for p in partitions)


def main(argv: list[str] | None = None) -> None:
    from services.core.config import Settings

    parser = argparse.ArgumentParser(prog="python -m services.core.topics",
                                     description="Create the missing saga topics (idempotent).")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: UDS3_KAFKA_BOOTSTRAP)")
    args = parser.parse_args(argv)
    bootstrap = args.bootstrap or Settings().kafka_bootstrap
    created = asyncio.run(ensure_topics(bootstrap))
    for topic in ALL_TOPICS:
        state = "created" if topic.name in created else "exists"
        print(f"{topic.name}: {topic.partitions} partitions, {state}")


if __name__ == "__main__":
    main()
