"""The shared service runtime: consume, deduplicate, handle, record, relay, commit.

Every service runs the same loop:

1. `getmany` a batch from the events topic (own consumer group, manual commits);
2. per message: decode (undecodable -> dead-letter topic), skip it if its position is
   already tracked (a redelivery), hand it to the step in a worker thread, retry transient
   errors with backoff until the step deadline, turn permanent ones into `<Step>Failed`;
3. record the step's new events together with the Kafka position in one PostgreSQL
   transaction (eventsourcing tracking) — the exactly-once point;
4. relay the recorded events to Kafka (outbox: publish what was recorded, then move the
   outbox position), then commit the consumer offsets.

A crash anywhere repeats at most the unrecorded part: the tracking check skips recorded
inputs, the relay republishes recorded-but-unpublished events with their original ids,
and every handler is idempotent against its own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from eventsourcing.persistence import IntegrityError as EventStoreConflict
from eventsourcing.persistence import Tracking

from services.core import codec, logs, metrics, topics, tracing, validation
from services.core.config import Settings
from services.core.errors import PermanentError, StepError, TransientError, unreachable
from services.core.events import (
    COMPENSATION_FAILED,
    DEAD_LETTER,
    DOCUMENT_COMPENSATED,
    DOCUMENT_COMPLETED,
    TERMINAL_EVENTS,
    WORK_EVENTS,
    Event,
)
from services.core.faults import FaultInjector
from services.core.pg import check_claim
from services.core.saga import STEPS, compensated, completion, failed
from services.core.step import Context, Interrupted, Step
from services.core.steplog import ENDINGS, StepLog, event_of, message_of
from services.core.store import Batch, StepStore, kafka_position, open_store


def classify(exc: BaseException) -> StepError:
    """The runtime's safety net; adapters should already raise StepError subclasses."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, EventStoreConflict):
        # Optimistic concurrency on a StepLog (another attempt or replica wrote it first):
        # reload and decide again; if that attempt finished the input, the inbox says so.
        return TransientError(f"concurrent write to the event store: {exc}")
    if isinstance(exc, ConnectionError | TimeoutError) or unreachable(exc):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return PermanentError(f"{type(exc).__name__}: {exc}")


# The producer of an event an operator re-drives from the CLI (`uds3 saga retry/compensate`):
# the one input that may restart an undo after CompensationFailed.
REDRIVE_PRODUCER = "operator"
# The producer of a step's input an operator re-drives to rebuild a completed document's data
# in that step's store (`uds3 audit repair`): only the step that reacts to it acts.
REPAIR_PRODUCER = "operator-repair"


def _refusal(event: Event, log: StepLog, repair: bool) -> str | None:
    """Why this step must not act on a forward or undo input, if it must not (pure). An ended
    saga stays ended: a late (or forged) failure, compensation or forward event would make the
    step undo or redo its work under a Completed or Compensated saga. A repair is the one input
    after the end, and only of a completed saga, naming an input this step handled."""
    ended = log.ended()
    if repair:
        if ended == DOCUMENT_COMPLETED and event.causation_id in log.processed:
            return None
        return "a repair names an input this step handled, of a completed saga"
    return f"the saga had already ended ({ended})" if ended else None


class ObserveFailed(Exception):
    """Taking note of an event failed for good: the event goes to the dead-letter topic."""


class Relay:
    """Publishes recorded events to Kafka: the event store is the outbox."""

    def __init__(self, store: StepStore, producer: AIOKafkaProducer) -> None:
        self.store = store
        self.producer = producer
        self.lock = asyncio.Lock()

    async def flush(self) -> int:
        """Publishes everything recorded and not yet published; on a broker or store fault it
        stops early and leaves the rest for the next flush (the outbox position only moves
        after Kafka acknowledged)."""
        try:
            return await self._flush()
        except Exception as e:
            logs.warn(logging.getLogger("relay"), "relay paused, will retry", error=f"{type(e).__name__}: {e}")
            return 0

    async def _flush(self) -> int:
        published = 0
        async with self.lock:
            while batch := await asyncio.to_thread(lambda: list(self.store.unpublished())):
                sends = []
                for _, message in batch:
                    if not message:
                        continue
                    event = event_of(message)
                    data = codec.encode(event)
                    headers = tracing.headers(message.get("traceparent"))
                    for topic in topics.topics_for(event.event_type, event.producer):
                        sends.append(await self.producer.send(topic.name, data, key=event.document_id.encode(),
                                                              partition=await self._partition(topic, event),
                                                              headers=headers))
                await asyncio.gather(*sends)
                await asyncio.to_thread(self.store.mark_published, batch[-1][0])
                published += len(sends)
        return published


    async def _partition(self, topic: topics.Topic, event: Event) -> int | None:
        """Saga events go by key (one document's stay in order); work item n goes to partition
        n mod the count, so a document's items spread evenly over the workers."""
        if event.event_type not in WORK_EVENTS:
            return None
        partitions = sorted(await self.producer.partitions_for(topic.name))
        return partitions[int(event.payload["item"]) % len(partitions)]


@dataclass
class Outcome:
    """What handling one message did (for logs and tests)."""

    action: str
    emitted: int = 0


class Runtime:
    def __init__(self, step: Step, settings: Settings | None = None, *, store: StepStore | None = None,
                 checkpoint: Callable[[StepLog], None] | None = None) -> None:
        """`run()` opens the service's own event store and records checkpoints there and relays
        them to Kafka; a harness without Kafka (tests, the in-process benchmark) passes its own
        `store` and `checkpoint` and calls `process()`."""
        self.step = step
        self.settings = settings or Settings()
        self.log = logging.getLogger(step.service)
        self.faults = FaultInjector(step.service, self.settings.faults)
        self.ctx = Context(self.settings, checkpoint=checkpoint or self._checkpoint,
                           log_of=lambda document_id: self.store.step_log(document_id))
        self.positions: dict[TopicPartition, int | None] = {}
        self.group = f"{topics.PREFIX}-{step.service}"  # one consumer group per service
        self._flush_queued = threading.Event()
        self._unpublished, self._flushed_at = False, 0.0  # what the consume loop recorded since its last flush
        self._open: set[str] = set()  # documents this step worked on whose saga has not ended (metrics)
        # The event types `process` may act on, keep or observe (it ignores every other one), and
        # the topics that carry them: the only ones it reads.
        self._concerns = step.inputs
        self.reads = topics.consumed(step.inputs)
        self.store: StepStore
        if store is not None:
            self.store = store
        self.relay: Relay
        self.loop: asyncio.AbstractEventLoop | None = None  # None: an in-process harness, no Kafka

    # --- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.loop = asyncio.get_running_loop()

        def request_stop() -> None:
            stop.set()
            self.ctx.stopping.set()  # long handlers check it between chunks and batches

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                self.loop.add_signal_handler(sig, request_stop)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_addr, self.log)
        # Refuse a database that serves another topic prefix: its relays would take our events.
        # A database that is restarting is waited for, not a reason to exit.
        while True:
            try:
                await asyncio.to_thread(check_claim, self.settings, self.step.service, topics.PREFIX)
                self.store = await asyncio.to_thread(open_store, self.step.service, self.settings)
                break
            except Exception as e:
                if stop.is_set():
                    return
                if not classify(e).retriable:
                    raise
                logs.warn(self.log, "event store not ready at start, retrying", error=str(e))
                await asyncio.sleep(1)
        await asyncio.to_thread(self.step.start)
        kafka = self.settings.kafka(self.step.service)  # its own principal: it may write only its own topics
        producer = AIOKafkaProducer(**kafka, enable_idempotence=True, acks="all", linger_ms=2)
        consumer = AIOKafkaConsumer(
            **kafka,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=6 * 3600 * 1000,  # the vector step may embed for a long time
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=3_000,
            group_instance_id=f"{self.group}-{self.settings.group_instance}" if self.settings.group_instance else None,
        )
        await topics.wait_for_topics(self.settings, self.step.service, self.reads)  # provisioned by admin
        await producer.start()
        self.relay = Relay(self.store, producer)
        workers: asyncio.Task[None] | None = None
        try:
            await self.relay.flush()  # what a crashed run recorded but never published
            listener = _ForgetPositions(self.positions, self.log)
            consumer.subscribe([t.name for t in self.reads], listener=listener)
            await consumer.start()
            logs.info(self.log, "started", group=self.group)
            workers = asyncio.create_task(self._work(stop, producer)) if self.step.row.work else None
            stopper = asyncio.create_task(stop.wait())
            while (fetched := await _fetch(consumer, stopper, 200)) is not None:
                done: dict[TopicPartition, int] = {}
                for tp, messages in fetched.items():
                    if stop.is_set() or not await self.consume_all(tp, messages, producer):
                        continue  # never commit past an input that was abandoned half-way
                    done[tp] = messages[-1].offset + 1
                # Once per fetch: publish what it recorded (most fetches record nothing: other steps'
                # events) and, when idle or a second on, what a failed flush left behind (a quiet
                # system has no next message to trigger it, and a recorded event must not wait
                # forever); then commit every partition's offset in one request.
                if not fetched or self._unpublished or time.monotonic() - self._flushed_at > 1.0:
                    self._unpublished, self._flushed_at = False, time.monotonic()
                    await self.relay.flush()
                for tp, offset in done.items():
                    # A rebalance may have taken the partition away meanwhile (highwater() asserts).
                    end = consumer.highwater(tp) if tp in consumer.assignment() else None
                    if end is not None:
                        metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(end - offset, 0))
                if done:
                    # The tracked positions, not these offsets, decide what is redone.
                    try:
                        await consumer.commit(done)
                    except KafkaError as e:  # e.g. a rebalance: the next owner re-reads, tracking skips
                        logs.warn(self.log, "offset commit failed", error=str(e))
        finally:
            stop.set()
            self.ctx.stopping.set()
            if workers is not None:
                await asyncio.gather(workers, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            await asyncio.to_thread(self.step.stop)
            logs.info(self.log, "stopped")

    def _checkpoint(self, log: StepLog) -> None:
        """Called from a handler's thread: record progress, then let the relay publish it."""
        self._record_and_publish(log)
        if not self.step.row.progress or any(log.has_emitted(p) for p in self.step.row.progress):
            self.faults.maybe_fail("mid", log.document_id, _title(log.submission()))  # after partial work

    def _record_and_publish(self, log: StepLog) -> None:
        """From a handler's thread: record, then queue a flush of the relay (one at a time: a
        fast upload checkpoints faster than Kafka needs)."""
        self.store.record(log)
        if self.loop is not None and not self._flush_queued.is_set():
            self._flush_queued.set()
            asyncio.run_coroutine_threadsafe(self._queued_flush(), self.loop)

    async def _queued_flush(self) -> None:
        self._flush_queued.clear()
        await self.relay.flush()

    # --- work items ------------------------------------------------------------------------
    async def _work(self, stop: asyncio.Event, producer: AIOKafkaProducer) -> None:
        """The step's workers: the items it fanned out, on its work topic in a group of their own,
        one at a time per process; any replica takes any item. Round-robin assignment gives N
        replicas every N-th partition, and item n is on partition n mod the count, so a
        document's items spread evenly. An item's offset is committed once it is done (or failed
        for good): one that was abandoned half-way is redelivered and resumes."""
        group = topics.work_group(self.step.service)
        consumer = AIOKafkaConsumer(
            **self.settings.kafka(self.step.service), group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", max_poll_interval_ms=6 * 3600 * 1000,
            session_timeout_ms=self.settings.session_timeout_ms, heartbeat_interval_ms=3_000,
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
            group_instance_id=f"{group}-{self.settings.group_instance}" if self.settings.group_instance else None,
        )
        mine = [t for t in topics.WORK_TOPICS if self.step.service in t.writers]
        try:
            await topics.wait_for_topics(self.settings, self.step.service, mine)
            consumer.subscribe([t.name for t in mine], listener=_LogAssignments(self.log, "work assigned"))
            await consumer.start()
        except Exception as e:  # a process whose workers cannot run stops: its supervisor restarts it
            logs.error(self.log, "work consumer failed to start", error=f"{type(e).__name__}: {e}")
            stop.set()
            raise
        try:
            stopper = asyncio.create_task(stop.wait())
            while (fetched := await _fetch(consumer, stopper, 1)) is not None:
                for tp, messages in fetched.items():
                    for message in messages:
                        if stop.is_set() or not await self._work_item(message, producer):
                            return  # abandoned half-way: not committed, it is redelivered
                        try:
                            await consumer.commit({tp: message.offset + 1})
                        except KafkaError as e:  # the next owner gets it again: the ledger makes that a no-op
                            logs.warn(self.log, "offset commit failed", error=str(e))
        finally:
            await consumer.stop()

    async def _work_item(self, message: ConsumerRecord, producer: AIOKafkaProducer) -> bool:
        """One work item, checked like a saga event; transient faults are retried until the step
        deadline, then (or on a permanent fault) the document's step fails."""
        try:
            item = codec.decode(message.value)
            validation.check_event(item)
            if message.key != item.document_id.encode():
                raise validation.InvalidInput(f"key {message.key!r} is not its document id")
            if item.event_type not in self.step.row.work or item.producer != self.step.service:
                raise validation.InvalidInput(f"{item.event_type} from {item.producer!r} is not this step's work")
        except (codec.UndecodableEvent, validation.InvalidInput) as e:
            await self.dead_letter(message, f"invalid work item: {e}", producer)
            return True
        deadline, attempt, started = time.monotonic() + self.settings.step_deadline_s, 0, time.monotonic()
        span = tracing.span(f"{self.step.service} {item.event_type}", tracing.context_of(message.headers),
                            document_id=item.document_id, saga_id=item.saga_id, event_id=item.event_id,
                            service=self.step.service)
        with span:
            while True:
                try:
                    await asyncio.to_thread(self.step.work, item, self.ctx)
                    break
                except Interrupted:
                    return False
                except Exception as raw:
                    err = classify(raw)
                    if err.retriable and self.ctx.stopping.is_set():
                        return False
                    if err.retriable and time.monotonic() < deadline:
                        attempt += 1
                        metrics.RETRIES.inc()
                        logs.warn(self.log, "transient fault in work item, retrying", doc=item.document_id,
                                  attempt=attempt, error=str(err))
                        await asyncio.sleep(min(self.settings.retry_base_s * 2**attempt, 5.0))
                        continue
                    await asyncio.to_thread(self._fail_item, item, err)
                    break
        metrics.EVENTS.labels(item.event_type, "handled").inc()
        metrics.HANDLE_SECONDS.labels(item.event_type).observe(time.monotonic() - started)
        return True

    def _fail_item(self, item: Event, err: StepError) -> None:
        """A work item failed for good: the step fails as if its forward work had (its undo
        fences the other items first), unless the document's step was already decided."""
        while True:
            log = self.store.step_log(item.document_id)
            trigger = next((event_of(m) for m in log.received if m["event_id"] == item.causation_id), None)
            decided = (self.step.row.success, failed(self.step.step))
            if trigger is None or log.ended() or any(log.has_emitted(t) for t in decided):
                logs.warn(self.log, "work item failed after its step was decided", doc=item.document_id,
                          error=str(err))
                return
            self._fail_forward(trigger, log, err)
            try:
                return self._record_and_publish(log)
            except EventStoreConflict:
                continue  # the saga consumer or another worker wrote the log meanwhile: decide again

    # --- one fetch ----------------------------------------------------------------------------
    async def consume_all(self, tp: TopicPartition, messages: list[ConsumerRecord],
                          producer: AIOKafkaProducer) -> bool:
        """Handles one partition's messages of a fetch; False when they were abandoned half-way
        (the service is stopping). Two or more inputs this step acts on are processed as one
        batch: one worker thread, each document's log read once, one event-store transaction
        with the batch's last position (`_process_batch`). A step's failure is handled there as
        for a single input (retried, or the step fails); anything else that fails it (the event
        store, a conflict with another writer, the audit trail) leaves nothing of it recorded,
        and it is redone event by event (its handlers are idempotent, as after a crash)."""
        admitted = [(m, e) for m in messages if (e := await self._admit(m, producer)) is not None]
        if len(admitted) > 1:
            started = time.monotonic()
            try:
                outcomes = await asyncio.to_thread(self._process_batch, tp, admitted)
            except Interrupted:
                return False
            except Exception as e:
                logs.info(self.log, "batch redone event by event", inputs=len(admitted),
                          error=f"{type(e).__name__}: {e}")
            else:
                for (_, event), outcome in zip(admitted, outcomes, strict=True):
                    self._took(event, outcome, started)
                return True
        for message, event in admitted:
            if self.ctx.stopping.is_set() or not await self.consume_one(tp, message, event, producer):
                return False
        return True

    async def _admit(self, message: ConsumerRecord, producer: AIOKafkaProducer) -> Event | None:
        """The decoded event if this step must process it; None for one it ignores, or one that
        went to the dead-letter topic (undecodable, or breaking an input rule)."""
        try:
            event = codec.decode(message.value)
        except codec.UndecodableEvent as e:
            await self.dead_letter(message, str(e), producer)
            return None
        try:  # decodable but untrusted: nothing runs for an event that breaks a rule
            validation.check_event(event)
            if message.key != event.document_id.encode():  # its partition, and so its order (G6)
                raise validation.InvalidInput(f"key {message.key!r} is not its document id")
            if message.topic not in topics.carriers(event.event_type):  # defence in depth: a type has its topics
                raise validation.InvalidInput(f"{event.event_type} does not travel on {message.topic}")
        except validation.InvalidInput as e:
            await self.dead_letter(message, f"invalid {event.event_type}: {e}", producer)
            return None
        if event.event_type not in self._concerns:  # most saga events are another step's: no thread, no store
            metrics.EVENTS.labels(event.event_type, "ignored").inc()
            return None
        return event

    async def consume_one(self, tp: TopicPartition, message: ConsumerRecord, event: Event,
                          producer: AIOKafkaProducer) -> bool:
        """Handles one admitted input in its own transaction; False when abandoned half-way."""
        tracking = Tracking(kafka_position(tp.topic, tp.partition), message.offset + 1)
        started = time.monotonic()
        with self._span(event, tracing.context_of(message.headers)):
            return await self._handle(tp, message, event, tracking, started, producer)

    def _process_batch(self, tp: TopicPartition, admitted: list[tuple[ConsumerRecord, Event]]) -> list[Outcome]:
        """Processes a partition's inputs in order against one `Batch` of their logs, then records
        every change and the last position in one transaction (runs in a worker thread). Inputs
        only taken note of are passed to the step together, in order with the others."""
        name = kafka_position(tp.topic, tp.partition)
        if tp not in self.positions:
            self.positions[tp] = self.store.position(name)
        done, batch = self.positions[tp], Batch(self.store)
        outcomes: list[Outcome] = []
        noted: list[Event] = []
        for message, event in admitted:
            if done is not None and message.offset + 1 <= done:
                outcomes.append(Outcome("seen"))
            elif self._only_noted(event):
                noted.append(event)
                outcomes.append(Outcome("observed"))
            else:
                self._observe_all(noted)
                batch.next_input()
                with self._span(event, tracing.context_of(message.headers)):
                    outcomes.append(self.process(event, Tracking(name, message.offset + 1), batch))
        self._observe_all(noted)
        last = admitted[-1][0].offset + 1
        if done is not None and last <= done:
            return outcomes
        if not batch.commit(Tracking(name, last)):  # another replica recorded it first
            self.positions.pop(tp, None)
            return [Outcome("redelivered") for _ in outcomes]
        self.positions[tp] = last
        return outcomes

    def _observe_all(self, noted: list[Event]) -> None:
        if noted:
            self.step.observe_all(noted, self.ctx)
            noted.clear()

    def _only_noted(self, event: Event) -> bool:
        """An input this step only takes note of (the audit trail): idempotent by itself."""
        repair = event.producer == REPAIR_PRODUCER
        keeps = self.step.reacts_to | (frozenset() if repair else self.step.undone_by | self.step.remembers | ENDINGS)
        return event.event_type not in keeps and event.event_type in self.step.observes

    def _span(self, event: Event, parent: Any) -> contextlib.AbstractContextManager[Any]:
        """The trace span of an input this step acts on (forward or undo); none for the rest."""
        if event.event_type not in self.step.reacts_to | self.step.undone_by:
            return contextlib.nullcontext()
        return tracing.span(f"{self.step.service} {event.event_type}", parent, document_id=event.document_id,
                            saga_id=event.saga_id, event_id=event.event_id, service=self.step.service)

    async def _handle(self, tp: TopicPartition, message: ConsumerRecord, event: Event, tracking: Tracking,
                      started: float, producer: AIOKafkaProducer) -> bool:
        while True:
            try:
                outcome = await asyncio.to_thread(self._process_once, tp, message.offset, event, tracking)
                break
            except Interrupted:
                return False
            except ObserveFailed as e:
                await self.dead_letter(message, f"{self.step.service} could not take note of it: {e}", producer)
                return True
            except Exception as raw:
                err = classify(raw)
                if not err.retriable:
                    await self.dead_letter(message, f"{self.step.service} could not process it: {err}", producer)
                    return True
                # The event store (or another store) is restarting: wait for it, never skip the input.
                logs.warn(self.log, "store unavailable, waiting", doc=event.document_id, error=str(err))
                metrics.RETRIES.inc()
                if self.ctx.stopping.is_set():
                    return False
                await asyncio.sleep(1)
        self._took(event, outcome, started)
        return True

    def _took(self, event: Event, outcome: Outcome, started: float) -> None:
        """Metrics and the log line of one processed input."""
        metrics.EVENTS.labels(event.event_type, outcome.action).inc()
        if outcome.action in ("handled", "parked", "refused", "repaired"):  # it recorded new events
            self._unpublished = True
            metrics.HANDLE_SECONDS.labels(event.event_type).observe(time.monotonic() - started)
        if outcome.action not in ("ignored", "seen", "observed"):
            logs.info(self.log, outcome.action, event=event.event_type, doc=event.document_id, saga=event.saga_id,
                      emitted=outcome.emitted)

    def _process_once(self, tp: TopicPartition, offset: int, event: Event, tracking: Tracking) -> Outcome:
        if tp not in self.positions:
            self.positions[tp] = self.store.position(kafka_position(tp.topic, tp.partition))
        done = self.positions[tp]
        if done is not None and offset + 1 <= done:
            return Outcome("seen")  # recorded before: a redelivery changes nothing
        outcome = self.process(event, tracking)
        if outcome.action != "ignored":
            self.positions[tp] = offset + 1
        return outcome

    def process(self, event: Event, tracking: Tracking, batch: Batch | None = None) -> Outcome:
        """Decide, act and record, for one decoded event (runs in a worker thread). In a `batch`,
        the log comes from it and is recorded by its commit."""
        step = self.step
        store: StepStore | Batch = batch or self.store
        forward = event.event_type in step.reacts_to
        undo = event.event_type in step.undone_by
        remembers = step.remembers | ENDINGS  # every step knows when its document's saga has ended
        repair = event.producer == REPAIR_PRODUCER
        if repair:  # not an input of the saga: nobody keeps it, only the step it is for acts on it
            remembers, undo = frozenset(), False
        if not (forward or undo or event.event_type in remembers | step.observes):
            return Outcome("ignored")
        if self._only_noted(event):  # the audit trail: idempotent by itself, so no event-store write
            try:
                step.observe(event, self.ctx)
            except Exception as raw:
                raise ObserveFailed(str(classify(raw))) from raw
            return Outcome("observed")
        deadline = time.monotonic() + self.settings.step_deadline_s
        attempt = 0
        keep = (forward or event.event_type in remembers) and not repair  # inputs the log keeps
        while True:
            log = store.step_log(event.document_id)
            if log.handled(event.event_id):
                recorded = store.record(log, tracking)
                return Outcome("duplicate" if recorded else "redelivered")
            before = len(log.emitted)
            refusal = _refusal(event, log, repair) if forward or undo else None
            if keep and not refusal and not log.knows(event.event_id):
                log.receive(tracing.traced(message_of(event)))
            # The forward work runs once the step has every input it needs: for this trigger, or
            # for a trigger that arrived first and waited for this input (parked in the log).
            ready = [] if refusal or repair or undo or log.ended() or not step.needs <= log.received_types() \
                else log.waiting(step.reacts_to)
            current: Event | None = None
            try:
                if event.event_type in step.observes:
                    step.observe(event, self.ctx)
                if refusal:
                    log.refuse({**message_of(event), "reason": refusal})
                elif repair:
                    self._repair(event, log)
                elif undo:
                    self._compensate(event, log)
                for current in ready:
                    if current.event_id == event.event_id:
                        self._forward(current, log)
                    else:  # a parked trigger: its work goes on in its own trace
                        parent = tracing.context_of(traceparent=log.traceparent_of(current.event_id))
                        with self._span(current, parent):
                            self._forward(current, log)
                    log.mark_processed(current.event_id)
            except Interrupted:
                raise
            except Exception as raw:
                if batch is not None:  # drop this input's changes to its log (raises if it cannot)
                    batch.forget(event.document_id)
                err = classify(raw)
                if refusal or not (current or undo or repair):  # only observing failed: never undo for it
                    raise ObserveFailed(str(err)) from raw
                if err.retriable and time.monotonic() < deadline:
                    attempt += 1
                    metrics.RETRIES.inc()
                    delay = min(self.settings.retry_base_s * 2**attempt, 5.0) * (0.5 + random.random())
                    logs.warn(
                        self.log,
                        "transient fault, retrying",
                        doc=event.document_id,
                        attempt=attempt,
                        delay=f"{delay:.2f}s",
                        error=str(err),
                    )
                    time.sleep(delay)
                    continue
                if repair:  # a completed saga is never compensated for a failed repair
                    raise ObserveFailed(f"repair failed: {err}") from raw
                log = store.step_log(event.document_id)  # drop the failed attempt's pending events
                if keep and not log.knows(event.event_id):
                    log.receive(message_of(event))
                if current is not None:
                    if not log.knows(current.event_id):
                        log.receive(message_of(current))
                    self._fail_forward(current, log, err)
                    log.mark_processed(current.event_id)
                else:
                    self._fail_undo(event, log, err)
            parked = forward and not (refusal or repair) and event.event_id not in {e.event_id for e in ready}
            if not parked and not log.handled(event.event_id):
                log.mark_processed(event.event_id)  # observe-only inputs are idempotent by themselves
            recorded = store.record(log, tracking)
            if recorded:
                self._count(event, log.emitted[before:], forward=bool(ready), undo=undo)
            done = "refused" if refusal else "repaired" if repair else "parked" if parked else "handled"
            action = done if recorded else "redelivered"
            return Outcome(action, len(log.emitted) - before)

    def _count(self, event: Event, emitted: list[dict[str, Any]], *, forward: bool, undo: bool) -> None:
        """Metrics of an input that was recorded: compensations, and the sagas this step has open."""
        types = {m["event_type"] for m in emitted}
        if undo and compensated(self.step.step) in types:
            metrics.COMPENSATIONS.labels("done").inc()
        if undo and COMPENSATION_FAILED in types:
            metrics.COMPENSATIONS.labels("failed").inc()
        if forward:
            self._open.add(event.document_id)
        if event.event_type in TERMINAL_EVENTS or types & TERMINAL_EVENTS:
            self._open.discard(event.document_id)
        metrics.IN_FLIGHT.set(len(self._open))

    def _repair(self, event: Event, log: StepLog) -> None:
        """The step's forward work again for a completed document whose data a store lost: on a
        scratch copy of its inputs, so its idempotency guards and checkpoints start from nothing
        (its writes are upserts by deterministic ids). What it emits goes nowhere: the saga has
        ended. The repair is recorded in the step's log. The input is the step's own copy where it
        kept one: a repair event chooses what is redone, never what is written."""
        scratch = StepLog(self.step.service, log.document_id)
        for m in log.received:
            scratch.receive(m)
        trigger = log.last_received(event.event_type) or event
        self.step.handle(trigger, scratch, replace(self.ctx, checkpoint=lambda _log: None, inline=True))
        log.record_repair({**message_of(event), "emitted": [m["event_type"] for m in scratch.emitted]})

    def _forward(self, event: Event, log: StepLog) -> None:
        sub = log.submission()
        self.faults.maybe_fail("forward", event.document_id, _title(sub))
        self.step.handle(event, log, self.ctx)
        if self.step.is_last and log.has_emitted(self.step.row.success) and not log.has_emitted(DOCUMENT_COMPLETED):
            # The last step's success is the saga's: seq=1, its own deterministic id next to the step's.
            log.emit_event(event.follow(DOCUMENT_COMPLETED, self.step.service, seq=1,
                                        **completion(log, datetime.now(UTC))))

    def _fail_forward(self, event: Event, log: StepLog, err: StepError) -> None:
        """Undo this step's partial work, then start the compensation chain."""
        logs.error(self.log, "step failed", doc=event.document_id, error=str(err))
        self._safe_undo(log)
        reason = str(err)
        log.emit_event(
            event.follow(
                failed(self.step.step),
                self.step.service,
                step=self.step.step,
                reason=reason,
                retryable=err.retriable,
                error_type=type(err).__name__,
            )
        )
        if self.step.is_first:
            log.emit_event(
                event.follow(DOCUMENT_COMPENSATED, self.step.service, seq=1, failed_step=self.step.step, reason=reason)
            )

    def _compensate(self, event: Event, log: StepLog) -> None:
        if log.has_emitted(compensated(self.step.step)):
            return
        if log.has_emitted(COMPENSATION_FAILED) and event.producer != REDRIVE_PRODUCER:
            return  # terminal until an operator re-drives it (`uds3 saga retry`: a new event id)
        failed_step = event.payload.get("failed_step") or event.payload.get("step", "")
        reason = event.payload.get("reason", "")
        self.faults.maybe_fail("undo", event.document_id, _title(log.submission()))
        undone = self.step.undo(log, self.ctx)
        log.emit_event(
            event.follow(
                compensated(self.step.step),
                self.step.service,
                step=self.step.step,
                detail=undone.detail,
                removed=undone.removed,
                failed_step=failed_step,
                reason=reason,
            )
        )
        if self.step.is_first:
            log.emit_event(
                event.follow(DOCUMENT_COMPENSATED, self.step.service, seq=1, failed_step=failed_step, reason=reason)
            )

    def _fail_undo(self, event: Event, log: StepLog, err: StepError) -> None:
        """A compensation that keeps failing ends the saga in CompensationFailed (terminal)."""
        failed_step = event.payload.get("failed_step") or event.payload.get("step", "")
        remaining = list(STEPS[: STEPS.index(self.step.step) + 1])
        logs.error(self.log, "compensation failed", doc=event.document_id, error=str(err))
        log.emit_event(
            event.follow(
                COMPENSATION_FAILED,
                self.step.service,
                failed_step=failed_step,
                remaining=remaining,
                reason=f"{self.step.step}: {err}",
            )
        )

    def _safe_undo(self, log: StepLog) -> object | None:
        try:
            return self.step.undo(log, self.ctx)
        except Exception as e:  # the chain still starts; the audit will name what is left
            logs.error(self.log, "cleanup after failure failed", doc=log.document_id, error=str(e))
            return None

    async def dead_letter(self, message: ConsumerRecord, reason: str, producer: AIOKafkaProducer) -> None:
        key = (message.key or b"").decode("utf-8", "replace") or "unknown"
        letter = Event(
            event_type=DEAD_LETTER,
            document_id=key,
            saga_id=key,
            producer=self.step.service,
            payload={
                "original": message.value or b"",
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "error": reason,
                "consumer_group": self.group,
            },
        )
        await producer.send_and_wait(topics.DEAD_LETTERS.name, codec.encode(letter), key=key.encode())
        metrics.DEAD_LETTERS.inc()
        logs.warn(
            self.log,
            "dead-lettered",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=reason,
        )


class _LogAssignments(ConsumerRebalanceListener):
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what = log, what

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        logs.info(self.log, self.what, partitions=len(assigned))


class _ForgetPositions(ConsumerRebalanceListener):
    """After a rebalance another replica may have moved a partition on: reload positions."""

    def __init__(self, positions: dict[TopicPartition, int | None], log: logging.Logger) -> None:
        self.positions, self.log = positions, log

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.positions.pop(tp, None)
            with contextlib.suppress(KeyError):  # its lag is another replica's to report now
                metrics.LAG.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self.positions.pop(tp, None)
        logs.info(self.log, "assigned", partitions=len(assigned))  # replicas share the partitions


async def _fetch(consumer: AIOKafkaConsumer, stopper: asyncio.Task[Any],
                 max_records: int) -> dict[TopicPartition, list[ConsumerRecord]] | None:
    """The next batch (empty after half a second without one), or None once the service stops."""
    if stopper.done():
        return None
    fetch = asyncio.create_task(consumer.getmany(timeout_ms=500, max_records=max_records))
    await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not fetch.done():
        fetch.cancel()
        return None
    return fetch.result()


def _title(submission: Event | None) -> str:
    return str(submission.payload.get("title") or "") if submission else ""
