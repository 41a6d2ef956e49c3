"""Every Kafka topic of the saga, named and configured in this one place.

One topic per producer: the client's submissions, and each service's own events (and its
progress, where it reports any). Kafka's ACLs are per topic, so this layout is what lets the
broker enforce that each principal publishes only the events it owns (`access.py`). Messages
are keyed by document id: one producer's events of one document stay in one partition, in
order (G6); across producers the services order by causation (a step waits for its inputs,
`Step.needs`), and the saga fold orders by causation and time, never by offset.

Environment: ``UDS3_TOPIC_PREFIX`` (default "uds3", lets tests isolate their topics) and
``UDS3_TOPIC_REPLICATION`` (default 1, for the local single-broker stack).

Provisioning (`python -m services.operator.provision`, as the admin principal) creates the
topics, the principals and their ACLs; services only wait for their topics to exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import ConsumerRecord

from services.core.config import Settings, kafka_nodes
from services.core.events import COMPENSATION_FAILED, DEAD_LETTER, PROGRESS_EVENTS, TERMINAL_EVENTS, WORK_EVENTS
from services.core.saga import ALL_EVENT_TYPES, OWNER, SAGA, SERVICES, SUBMITTER

log = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
# The most workers that can share one document's items (one partition each at least).
WORK_PARTITIONS = 12


@dataclass(frozen=True)
class Topic:
    """A topic, the configuration it is created with, and who may write to it."""

    name: str
    partitions: int
    replication_factor: int
    retention_ms: int  # -1: keep forever
    cleanup_policy: str
    description: str
    carries: tuple[str, ...]
    writers: tuple[str, ...]  # the principals whose ACLs allow them to publish here

    @property
    def configs(self) -> dict[str, str]:
        """Topic-level broker configs, as the admin API takes them. With replicas, an acks=all
        write is kept by two of them before it is acknowledged, and a replica that fell behind
        never becomes leader: a broker lost loses no acknowledged event."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy,
                "min.insync.replicas": str(max(1, min(2, self.replication_factor - 1))),
                "unclean.leader.election.enable": "false"}


def build_topics(prefix: str, replication_factor: int = 1) -> tuple[Topic, ...]:
    """Every topic under `prefix`: submissions, per service its events (and progress), the
    completions and the dead letters."""
    def owned(service: str, progress: bool) -> tuple[str, ...]:
        mine = [t for t in ALL_EVENT_TYPES
                if OWNER.get(t) == service and (t in PROGRESS_EVENTS) == progress and t not in WORK_EVENTS]
        return tuple(mine + ([COMPENSATION_FAILED] if not progress else []))  # any service's undo can fail

    rf = replication_factor
    submissions = Topic(
        f"{prefix}.submissions", 6, rf, 30 * DAY_MS, "delete",
        "Documents submitted by clients (claim checks: where the file is, never its bytes). "
        "Only the client principal writes here.", owned(SUBMITTER, False)[:1], (SUBMITTER,),
    )
    events = tuple(
        Topic(
            f"{prefix}.{service}.events", 6, rf, 30 * DAY_MS, "delete",
            f"The {service} service's saga events: its step's outcome, its compensation, and "
            "terminal events it announces. Only its own principal writes here.",
            owned(service, False), (service,),
        )
        for service in SERVICES
    )
    progress = tuple(
        Topic(
            f"{prefix}.{service}.progress", 6, rf, 1 * DAY_MS, "delete",
            f"High-volume progress of the {service} service, kept apart so it never delays "
            "the saga's own events.",
            owned(service, True), (service,),
        )
        for service in SERVICES
        if owned(service, True)
    )
    work = tuple(
        Topic(
            f"{prefix}.{step.service}.work", WORK_PARTITIONS, rf, 1 * DAY_MS, "delete",
            f"Work items the {step.service} step fans out to its workers (any replica takes any item; "
            "item n goes to partition n mod the partition count, so items spread evenly).",
            step.work, (step.service,),
        )
        for step in SAGA
        if step.work
    )
    completions = Topic(
        f"{prefix}.saga.completions", 3, rf, 365 * DAY_MS, "delete",
        "Terminal outcome of every document, for downstream subscribers. The service that "
        "ends a saga publishes its terminal event here in addition to its own topic.",
        tuple(t for t in ALL_EVENT_TYPES if t in TERMINAL_EVENTS), SERVICES,
    )
    dead_letters = Topic(
        f"{prefix}.saga.dlq", 1, rf, 30 * DAY_MS, "delete",
        "Messages a consumer could not decode or handle, wrapped in a DeadLetter event with "
        "the reason; inspected and re-driven from the CLI.",
        (DEAD_LETTER,), SERVICES,
    )
    return (submissions, *events, *progress, *work, completions, dead_letters)


PREFIX = os.environ.get("UDS3_TOPIC_PREFIX", "uds3")
REPLICATION_FACTOR = int(os.environ.get("UDS3_TOPIC_REPLICATION", str(min(3, kafka_nodes()))))
ALL_TOPICS: tuple[Topic, ...] = build_topics(PREFIX, REPLICATION_FACTOR)
SUBMISSIONS, COMPLETIONS, DEAD_LETTERS = ALL_TOPICS[0], ALL_TOPICS[-2], ALL_TOPICS[-1]
# Every saga event, from every producer (no progress): each service reads those it needs (`consumed`).
SAGA_TOPICS: tuple[Topic, ...] = tuple(t for t in ALL_TOPICS if t.name.endswith((".events", ".submissions")))
PROGRESS_TOPICS: tuple[Topic, ...] = tuple(t for t in ALL_TOPICS if t.name.endswith(".progress"))
WORK_TOPICS: tuple[Topic, ...] = tuple(t for t in ALL_TOPICS if t.name.endswith(".work"))


def consumed(inputs: Iterable[str]) -> tuple[Topic, ...]:
    """The saga topics a step with these inputs reads: those that carry any of them."""
    wanted = set(inputs)
    return tuple(t for t in SAGA_TOPICS if wanted & set(t.carries))


def work_group(service: str, prefix: str = PREFIX) -> str:
    """The consumer group of a service's workers (its work topic; the saga's group is `<prefix>-<service>`)."""
    return f"{prefix}-{service}-work"


def client_group_prefix(prefix: str = PREFIX) -> str:
    """The consumer groups a client may join (e.g. a downstream subscriber of completions)."""
    return f"{prefix}-client-"


def topic_for(event_type: str, producer: str, topics: Iterable[Topic] = ALL_TOPICS) -> Topic:
    """The topic `producer` publishes an event type to: its owner's (an operator's re-drive
    goes where the owner's would), or for CompensationFailed the failing service's own."""
    homes = [t for t in topics if event_type in t.carries and not t.name.endswith(".saga.completions")]
    if len(homes) > 1:
        homes = [t for t in homes if producer in t.writers]
    if len(homes) != 1:
        raise KeyError(f"no topic carries {event_type!r} from {producer!r}")
    return homes[0]


def topics_for(event_type: str, producer: str) -> tuple[Topic, ...]:
    """Every topic an event is published to: terminal events also go to the completions."""
    home = topic_for(event_type, producer)
    return (home, COMPLETIONS) if event_type in TERMINAL_EVENTS else (home,)


def carriers(event_type: str) -> set[str]:
    """The names of the topics an event type may travel on (a consumer's defence in depth)."""
    return {t.name for t in ALL_TOPICS if event_type in t.carries}


async def read_all(settings: Settings, *topics: Topic, principal: str = "admin") -> list[ConsumerRecord]:
    """Every record of the topics, from their beginning to their end at the time of the call
    (operator tools and audits; services consume through their groups)."""
    # earliest: with the default (latest), the reset of a fresh assignment can race seek_to_beginning
    consumer = AIOKafkaConsumer(
        **settings.kafka(principal), enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [
            TopicPartition(topic.name, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic.name) or set(range(topic.partitions)))
        ]
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


def deployment_of(topic_name: str) -> str:
    """The deployment prefix a topic belongs to (`<prefix>.` or a module's `<prefix>-*.`)."""
    return topic_name.split(".", 1)[0].split("-", 1)[0]


async def delete_topics(settings: Settings, prefix: str = PREFIX) -> list[str]:
    """Deletes every topic of a finished test, bench or chaos run (`<prefix>.` and `<prefix>-*.`):
    a long-lived stack otherwise gathers thousands of partitions, and slows down with them."""
    if prefix == "uds3":
        raise ValueError("refusing to delete the default deployment's topics")
    admin = AIOKafkaAdminClient(**settings.kafka("admin"))
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if deployment_of(t) == prefix]
        if ours:
            await admin.delete_topics(ours)
        return ours
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, topics: Iterable[Topic] = ALL_TOPICS, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics (idempotent, as the admin principal) and wait until every
    partition has a leader. Returns the names it created. An existing topic is left as it
    is; a partition count that differs from the registry is only logged: repartitioning
    would break per-document order."""
    wanted = {t.name: t for t in topics}
    admin = AIOKafkaAdminClient(**settings.kafka("admin"))
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
    finally:
        await admin.close()
    await _wait_until_served(settings, partitions)
    return created


async def _wait_until_served(settings: Settings, partitions: dict[str, int]) -> None:
    """The metadata names a leader before the broker has created the partition's log (a busy
    broker takes seconds for dozens of new partitions): ask every partition for its end offset,
    which the consumer retries until the leader really serves it."""
    consumer = AIOKafkaConsumer(**settings.kafka("admin"))
    await consumer.start()
    try:
        await consumer.end_offsets([TopicPartition(name, p) for name, n in partitions.items() for p in range(n)])
    finally:
        await consumer.stop()


async def wait_for_topics(settings: Settings, principal: str, topics: Iterable[Topic], timeout_s: float = 60.0) -> None:
    """A service's check at start: its topics exist and have leaders. Services never create
    topics (their principals may not): provisioning does (`make provision`)."""
    admin = AIOKafkaAdminClient(**settings.kafka(principal))
    await admin.start()
    try:
        await _wait_for_leaders(admin, {t.name for t in topics}, timeout_s)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: set[str], timeout_s: float) -> dict[str, int]:
    """Partition counts once every partition of `names` has a leader (producers can then send)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            described = await admin.describe_topics(sorted(names))
        except KafkaError as e:  # the node it asked is down (a cluster node restarting): ask again
            log.warning("topic metadata unavailable, retrying: %s", e)
            described = []
        ready = {
            meta["topic"]: len(meta["partitions"])
            for meta in described
            if meta["error_code"] == 0 and meta["partitions"] and _have_leaders(meta["partitions"])
        }
        if names <= ready.keys():
            return ready
        if loop.time() > deadline:
            raise TimeoutError(f"topics missing or without leaders after {timeout_s}s: {sorted(names - ready.keys())} "
                               "(provision them: make provision)")
        await asyncio.sleep(0.2)


def _have_leaders(partitions: list[dict[str, int]]) -> bool:
    return all(p["leader"] >= 0 for p in partitions)
