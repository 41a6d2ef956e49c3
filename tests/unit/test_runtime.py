"""The shared runtime's decisions, on an in-memory event store (eventsourcing's POPO recorder)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from eventsourcing.persistence import Tracking

from services.core import codec, topics
from services.core.config import Settings
from services.core.errors import PermanentError, TransientError
from services.core.events import DOCUMENT_SUBMITTED, Event
from services.core.faults import FaultInjector
from services.core.runtime import REPAIR_PRODUCER, Runtime
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.core.store import OUTBOX, StepStore


class Recording(Step):
    """A service's step whose forward work and undo are scripted by the test."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Recording:
        raise NotImplementedError("scripted by the test, not built from settings")

    def __init__(self, service: str, script: list[Exception | None]) -> None:
        self.service = service  # its row of the saga table: trigger, needs, undo
        self.script = script
        self.undone = 0
        self.calls = 0

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        log.emit_event(event.follow(f"{self.step}Done", self.service))

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        self.undone += 1
        return Undone("undone", 1)


def runtime_for(step: Step, **settings: object) -> Runtime:
    return Runtime(step, Settings(step_deadline_s=2, retry_base_s=0.001, **settings),  # type: ignore[arg-type]
                   store=StepStore(step.service, env={"PERSISTENCE_MODULE": "eventsourcing.popo"}))


def submitted(doc: str | None = None) -> Event:
    doc = doc or str(uuid.uuid4())
    return Event(DOCUMENT_SUBMITTED, doc, str(uuid.uuid4()), {"title": "t"})


def at(offset: int) -> Tracking:
    return Tracking("kafka:t:0", offset + 1)


def emitted_types(rt: Runtime, doc: str) -> list[str]:
    return [m["event_type"] for m in rt.store.step_log(doc).emitted]


def test_handled_event_records_output_and_position_together() -> None:
    rt = runtime_for(Recording("uploader", []))
    e = submitted()
    assert rt.process(e, at(0)).action == "handled"
    assert emitted_types(rt, e.document_id) == ["UploadDone"]
    assert rt.store.position("kafka:t:0") == 1


def test_redelivered_event_at_same_offset_changes_nothing() -> None:
    step = Recording("uploader", [])
    rt = runtime_for(step)
    e = submitted()
    rt.process(e, at(0))
    assert rt.process(e, at(0)).action == "redelivered"
    assert emitted_types(rt, e.document_id) == ["UploadDone"]
    assert step.calls == 1


def test_duplicate_event_at_new_offset_is_recognised_by_its_id() -> None:
    step = Recording("uploader", [])
    rt = runtime_for(step)
    e = submitted()
    rt.process(e, at(0))
    assert rt.process(e, at(7)).action == "duplicate"
    assert step.calls == 1
    assert rt.store.position("kafka:t:0") == 8


def test_transient_errors_are_retried_without_compensating() -> None:
    step = Recording("uploader", [TransientError("down"), TransientError("down")])
    rt = runtime_for(step)
    e = submitted()
    rt.process(e, at(0))
    assert step.calls == 3
    assert step.undone == 0
    assert emitted_types(rt, e.document_id) == ["UploadDone"]


def test_transient_past_the_deadline_fails_the_step() -> None:
    step = Recording("uploader", [TransientError("down")] * 10_000)
    rt = runtime_for(step)
    rt.settings = Settings(step_deadline_s=0.05, retry_base_s=0.001)
    e = submitted()
    rt.process(e, at(0))
    log = rt.store.step_log(e.document_id)
    failed = log.last_emitted("UploadFailed")
    assert failed is not None and failed.payload["retryable"] is True


def test_permanent_failure_cleans_up_and_first_step_ends_the_saga() -> None:
    step = Recording("uploader", [PermanentError("corrupt")])
    rt = runtime_for(step)
    e = submitted()
    rt.process(e, at(0))
    assert step.undone == 1
    assert emitted_types(rt, e.document_id) == ["UploadFailed", "DocumentCompensated"]
    assert rt.store.step_log(e.document_id).last_emitted("UploadFailed").payload["reason"] == "corrupt"  # type: ignore[union-attr]


def test_failure_of_the_next_step_compensates_this_one_once() -> None:
    step = Recording("security", [])
    rt = runtime_for(step)
    sub = submitted()
    rt.process(sub, at(0))
    failure = sub.follow(
        "VectorsFailed", "vector", step="Vectors", reason="boom", retryable=False, error_type="PermanentError"
    )
    rt.process(failure, at(1))
    rt.process(failure, at(2))  # duplicate delivery
    assert step.undone == 1
    compensated = rt.store.step_log(sub.document_id).last_emitted("SecurityCompensated")
    assert compensated is not None
    assert compensated.payload["failed_step"] == "Vectors" and compensated.payload["reason"] == "boom"


def test_compensation_that_keeps_failing_ends_in_compensation_failed() -> None:
    class Stuck(Recording):
        def undo(self, log: StepLog, ctx: Context) -> Undone:
            raise PermanentError("store refuses delete")

    rt = runtime_for(Stuck("graph", []))
    sub = submitted()
    rt.process(sub, at(0))
    rt.process(
        sub.follow(
            "RelationalFailed",
            "relational",
            step="Relational",
            reason="x",
            retryable=False,
            error_type="PermanentError",
        ),
        at(1),
    )
    failed = rt.store.step_log(sub.document_id).last_emitted("CompensationFailed")
    assert failed is not None
    assert failed.payload["remaining"] == ["Upload", "Integrity", "Security", "Vectors", "Graph"]


def test_events_for_other_steps_are_ignored_without_a_write() -> None:
    rt = runtime_for(Recording("graph", []))
    e = submitted().follow("UploadStarted", "uploader")
    assert rt.process(e, at(0)).action == "ignored"
    assert rt.store.position("kafka:t:0") is None


def test_outbox_lists_recorded_outputs_until_marked_published() -> None:
    rt = runtime_for(Recording("uploader", []))
    e = submitted()
    rt.process(e, at(0))
    pending = [m for _, m in rt.store.unpublished() if m]
    assert [m["event_type"] for m in pending] == ["UploadDone"]
    last = max(n for n, _ in rt.store.unpublished())
    rt.store.mark_published(last)
    assert list(rt.store.unpublished()) == []
    assert rt.store.position(OUTBOX) == last


@pytest.mark.parametrize("spec", ["uploader:permanent@*", "uploader:permanent@t"])
def test_injected_fault_fails_the_matching_document(spec: str) -> None:
    step = Recording("uploader", [])
    rt = runtime_for(step, faults=spec)
    e = submitted()
    rt.process(e, at(0))
    assert "UploadFailed" in emitted_types(rt, e.document_id)


def test_a_step_interrupted_after_a_checkpoint_resumes_on_redelivery() -> None:
    class Checkpointing(Recording):
        """Records progress, then crashes once (as a SIGKILL mid-step would leave it)."""

        def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
            self.calls += 1
            done = sum(1 for _ in log.emitted_of("PartDone"))
            log.emit_event(event.follow("PartDone", self.service, seq=done))
            ctx.checkpoint(log)
            if self.calls == 1:
                raise KeyboardInterrupt  # the process dies here: nothing after the checkpoint is recorded
            log.emit_event(event.follow("UploadDone", self.service))

    step = Checkpointing("uploader", [])
    rt = runtime_for(step)
    rt.ctx.checkpoint = rt.store.record
    e = submitted()
    with pytest.raises(KeyboardInterrupt):
        rt.process(e, at(0))
    assert rt.process(e, at(0)).action == "handled"  # redelivered at the same offset: not a duplicate
    assert emitted_types(rt, e.document_id) == ["PartDone", "PartDone", "UploadDone"]
    assert [m["event_id"] for m in rt.store.step_log(e.document_id).received] == [e.event_id]


def test_a_concurrent_write_to_the_log_is_retried_not_dead_lettered() -> None:
    from eventsourcing.persistence import IntegrityError

    from services.core.runtime import classify

    assert classify(IntegrityError("duplicate key (originator_id, originator_version)")).retriable


@pytest.mark.parametrize("ending", ["DocumentCompleted", "DocumentCompensated"])
def test_an_ended_saga_stays_ended(ending: str) -> None:
    """A late or forged failure, compensation or forward event after the end changes no store:
    it is recorded as refused, with the reason, and nothing is undone, redone or emitted."""
    step = Recording("uploader", [])
    rt = runtime_for(step)
    e = submitted()
    rt.process(e, at(0))
    rt.process(Event(ending, e.document_id, e.saga_id, {}), at(1))
    late = [Event(kind, e.document_id, e.saga_id, {"step": "Integrity", "reason": "forged"})
            for kind in ("IntegrityFailed", "IntegrityCompensated")] + [submitted(e.document_id)]
    for offset, event in enumerate(late, start=2):
        assert rt.process(event, at(offset)).action == "refused"
    log = rt.store.step_log(e.document_id)
    assert (step.calls, step.undone) == (1, 0) and emitted_types(rt, e.document_id) == ["UploadDone"]
    assert [m["event_type"] for m in log.refused] == ["IntegrityFailed", "IntegrityCompensated", DOCUMENT_SUBMITTED]
    assert all(m["reason"] == f"the saga had already ended ({ending})" for m in log.refused)
    assert rt.process(late[0], at(9)).action == "duplicate"  # a refusal is recorded once, like any input



def test_a_repair_redoes_a_completed_documents_forward_work_and_emits_nothing() -> None:
    """`uds3 audit repair`: the step's input again, from the operator, after the saga completed.
    The step works from scratch (its own log says it is done), nothing is published, the
    repair is recorded; other steps and other ends ignore or refuse it."""
    step = Recording("vector", [])
    rt = runtime_for(step)
    e = submitted()
    trigger = Event("SecurityRecorded", e.document_id, e.saga_id, {"identity": "x"})
    rt.process(e, at(0))
    rt.process(Event("UploadCompleted", e.document_id, e.saga_id, {}), at(10))  # what the vector step needs too
    rt.process(trigger, at(11))
    rt.process(Event("DocumentCompleted", e.document_id, e.saga_id, {}), at(12))
    repair = Event("SecurityRecorded", e.document_id, e.saga_id, {"identity": "x"}, producer=REPAIR_PRODUCER,
                   causation_id=trigger.event_id)
    assert rt.process(repair, at(13)).action == "repaired"
    log = rt.store.step_log(e.document_id)
    assert step.calls == 2 and emitted_types(rt, e.document_id) == ["VectorsDone"]
    assert [(m["event_id"], m["emitted"]) for m in log.repaired] == [(repair.event_id, ["VectorsDone"])]
    assert rt.process(repair, at(14)).action == "duplicate"
    stray = Event("SecurityRecorded", e.document_id, e.saga_id, {}, producer=REPAIR_PRODUCER,
                  causation_id=str(uuid.uuid4()))  # names no input this step handled
    assert rt.process(stray, at(15)).action == "refused" and step.calls == 2

    other = runtime_for(Recording("graph", []))
    assert other.process(repair, at(0)).action == "ignored"
    compensated = runtime_for(step)
    compensated.process(e, at(0))
    compensated.process(Event("DocumentCompensated", e.document_id, e.saga_id, {}), at(1))
    assert compensated.process(repair, at(2)).action == "refused" and step.calls == 2


def test_a_trigger_that_arrives_before_an_input_it_needs_waits_for_it() -> None:
    """Each producer has its own topic, so the graph step can see VectorsIndexed before the
    SecurityRecorded it needs: it parks the trigger and does the work when the input arrives,
    once, with the ids the trigger would have given it."""
    step = Recording("graph", [])
    rt = runtime_for(step)
    e = submitted()
    trigger = Event("VectorsIndexed", e.document_id, e.saga_id, {})
    assert rt.process(trigger, at(0)).action == "parked"
    assert rt.process(e, at(1)).action == "handled" and step.calls == 0  # still lacks SecurityRecorded
    assert rt.process(trigger, at(2)).action == "parked"  # redelivered while waiting: still waiting, once
    outcome = rt.process(Event("SecurityRecorded", e.document_id, e.saga_id, {}), at(3))
    assert (outcome.action, outcome.emitted, step.calls) == ("handled", 1, 1)
    log = rt.store.step_log(e.document_id)
    assert [m["causation_id"] for m in log.emitted] == [trigger.event_id] and not log.waiting(step.reacts_to)
    assert rt.process(trigger, at(4)).action == "duplicate" and step.calls == 1


def test_a_parked_trigger_whose_work_fails_fails_the_step() -> None:
    step = Recording("graph", [PermanentError("no graph")])
    rt = runtime_for(step)
    e = submitted()
    trigger = Event("VectorsIndexed", e.document_id, e.saga_id, {})
    assert rt.process(e, at(0)).action == "handled"
    assert rt.process(trigger, at(1)).action == "parked"
    assert rt.process(Event("SecurityRecorded", e.document_id, e.saga_id, {}), at(2)).action == "handled"
    log = rt.store.step_log(e.document_id)
    assert [(m["event_type"], m["causation_id"]) for m in log.emitted] == [("GraphFailed", trigger.event_id)]
    assert step.undone == 1 and log.handled(trigger.event_id)


def test_each_injected_fault_fires_in_its_own_phase_only() -> None:
    faults = FaultInjector("graph", "graph:mid-permanent@a,graph:undo-permanent@b,graph:permanent@c,vector:permanent@*")
    for phase, doc in (("forward", "c"), ("mid", "a"), ("undo", "b")):
        with pytest.raises(PermanentError, match=f"\\({phase}\\)"):
            faults.maybe_fail(phase, doc, "")
    for phase, doc in (("forward", "a"), ("undo", "a"), ("mid", "b"), ("forward", "b"), ("mid", "c"), ("undo", "c")):
        faults.maybe_fail(phase, doc, "")  # not this fault's phase: nothing happens


def test_a_database_shutting_down_under_a_connection_is_retried() -> None:
    """psycopg raises AdminShutdown (a subclass of OperationalError) when PostgreSQL restarts
    mid-transaction: a service starting at that moment waits for it instead of exiting."""
    from psycopg.errors import AdminShutdown, UniqueViolation

    from services.core.runtime import classify

    assert classify(AdminShutdown("terminating connection due to administrator command")).retriable
    assert not classify(UniqueViolation("duplicate key")).retriable


# --- consumer batches --------------------------------------------------------------------------

TP = TopicPartition(topics.topic_for(DOCUMENT_SUBMITTED, "client").name, 0)


def delivered(offset: int, event: Event, encoded: bool = True) -> ConsumerRecord[bytes, bytes]:
    value = codec.encode(event) if encoded else b""
    return ConsumerRecord(TP.topic, 0, offset, 0, 0, event.document_id.encode(), value, None, 36, len(value), [])


def submission() -> Event:
    """A submission as the client publishes it (it passes the runtime's input rules)."""
    return Event(DOCUMENT_SUBMITTED, str(uuid.uuid4()), str(uuid.uuid4()), producer="client", payload={
        "source_uri": "file:///inbox/a.pdf", "size_bytes": 1, "content_type": "", "security_level": "confidential",
        "submitter": "alice", "title": "t"})


class Counting(StepStore):
    """The in-memory event store, counting the transactions that record something."""

    def __init__(self, service: str) -> None:
        super().__init__(service, env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.transactions = 0

    def record_all(self, logs: Iterable[StepLog], tracking: Tracking | None = None) -> bool:
        self.transactions += 1
        return super().record_all(logs, tracking)


def batch_runtime(step: Step) -> tuple[Runtime, Counting]:
    store = Counting(step.service)
    return Runtime(step, Settings(step_deadline_s=2, retry_base_s=0.001), store=store), store


def test_a_batch_records_every_input_and_its_last_position_in_one_transaction() -> None:
    step = Recording("uploader", [])
    rt, store = batch_runtime(step)
    events = [submission() for _ in range(3)]
    outcomes = rt._process_batch(TP, [(delivered(10 + i, e), e) for i, e in enumerate(events)])
    assert [o.action for o in outcomes] == ["handled"] * 3 and step.calls == 3
    assert store.transactions == 1 and store.position(f"kafka:{TP.topic}:0") == 13
    assert all(emitted_types(rt, e.document_id) == ["UploadDone"] for e in events)
    again, _ = batch_runtime(step)  # redelivered to a fresh process (another replica, a restart)
    again.store = store
    assert [o.action for o in again._process_batch(TP, [(delivered(10 + i, e), e) for i, e in enumerate(events)])] \
        == ["seen"] * 3 and step.calls == 3


def test_a_step_failing_in_a_batch_is_handled_as_a_single_input_and_the_rest_recorded_with_it() -> None:
    """One document's upload fails for good, another's store blips once: in the batch, the first
    fails and compensates, the second is retried; the third is unaffected; one transaction."""
    step = Recording("uploader", [PermanentError("bad pdf"), TransientError("store restarting"), None, None])
    rt, store = batch_runtime(step)
    bad, blip, ok = submission(), submission(), submission()
    outcomes = rt._process_batch(TP, [(delivered(i, e), e) for i, e in enumerate((bad, blip, ok))])
    assert [o.action for o in outcomes] == ["handled"] * 3 and step.calls == 4
    assert emitted_types(rt, bad.document_id) == ["UploadFailed", "DocumentCompensated"] and step.undone == 1
    assert emitted_types(rt, blip.document_id) == emitted_types(rt, ok.document_id) == ["UploadDone"]
    assert store.transactions == 1 and store.position(f"kafka:{TP.topic}:0") == 3


class FailingOnce(Counting):
    """The event store refuses the first batch's transaction (e.g. another writer got there)."""

    def record_all(self, logs: Iterable[StepLog], tracking: Tracking | None = None) -> bool:
        if self.transactions == 0:
            self.transactions += 1
            raise TransientError("conflict")
        return super().record_all(logs, tracking)


def test_a_batch_whose_transaction_fails_records_nothing_and_is_redone_event_by_event() -> None:
    step = Recording("uploader", [])
    rt = Runtime(step, Settings(step_deadline_s=2, retry_base_s=0.001), store=FailingOnce("uploader"))
    events = [submission() for _ in range(3)]
    with pytest.raises(TransientError):
        rt._process_batch(TP, [(delivered(i, e), e) for i, e in enumerate(events)])
    assert rt.store.position(f"kafka:{TP.topic}:0") is None and emitted_types(rt, events[0].document_id) == []
    rt.store.transactions = 0  # type: ignore[attr-defined]
    assert asyncio.run(rt.consume_all(TP, [delivered(i, e) for i, e in enumerate(events)], producer=None))  # type: ignore[arg-type]
    # the batch failed again, then each input had its own transaction; each is done once
    assert rt.store.transactions == 4 and step.calls == 9  # type: ignore[attr-defined]
    assert all(emitted_types(rt, e.document_id) == ["UploadDone"] for e in events)
    assert rt.store.position(f"kafka:{TP.topic}:0") == 3


class Noting(Recording):
    """A step that also takes note of every event (as the security service's audit trail)."""

    observes = frozenset({"UploadStarted", "UploadCompleted"})

    def __init__(self) -> None:
        super().__init__("security", [])
        self.noted: list[list[str]] = []
        self.order: list[str] = []

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        self.order.append(f"handle {event.event_type}")
        super().handle(event, log, ctx)

    def observe_all(self, events: list[Event], ctx: Context) -> None:
        self.noted.append([e.event_type for e in events])
        self.order.append("note " + ",".join(e.event_type for e in events))


def test_noted_inputs_of_a_batch_are_passed_together_in_order_with_the_others() -> None:
    step = Noting()
    rt, store = batch_runtime(step)
    a, b = submission(), submission()
    inputs = [Event(t, d.document_id, d.saga_id, {}) for t, d in (("UploadStarted", a), ("UploadCompleted", a))]
    inputs += [a, Event("IntegrityVerified", a.document_id, a.saga_id, {}), Event("UploadStarted", b.document_id,
                                                                                  b.saga_id, {})]
    outcomes = rt._process_batch(TP, [(delivered(i, e, encoded=False), e) for i, e in enumerate(inputs)])
    assert [o.action for o in outcomes] == ["observed", "observed", "handled", "handled", "observed"]
    assert step.order == ["note UploadStarted,UploadCompleted", "handle IntegrityVerified", "note UploadStarted"]
    assert store.transactions == 1 and emitted_types(rt, a.document_id) == ["SecurityDone"]
