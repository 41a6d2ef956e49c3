"""Operator commands: the audit trail, consistency, dead letters, and re-driving sagas.

`audit verify` / `audit consistency` and `dlq list|show|redrive` are Typer groups mounted by
`main.py`; `saga_retry` and `saga_compensate` are commands of main's `saga` group.
The decisions (what to re-drive, how to group dead letters) are pure functions here, so
they are unit-tested; the commands only read and publish.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from services.core import messages
from services.core.config import Settings
from services.core.events import COMPENSATION_FAILED, NAMESPACE, Event
from services.core.runtime import REDRIVE_PRODUCER, REPAIR_PRODUCER
from services.core.saga import (
    BY_NAME,
    BY_SERVICE,
    COMPENSATED_EVENTS,
    FAILED_EVENTS,
    SAGA,
    after,
    failed,
    undo_triggers,
)
from services.core.validation import InvalidInput, uuid_id

audit_app = typer.Typer(help="Audit trail and consistency checks.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter topic: inspect and re-drive.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

# The producer name of events re-driven by an operator: the runtime lets such an event
# restart an undo that ended in CompensationFailed.
OPERATOR = REDRIVE_PRODUCER


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# --- audit ----------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit trail's hash chain; names every place it breaks."""
    from services.security.audit import verify_audit

    with psycopg.connect(Settings().pg_dsn()) as conn:
        problems = verify_audit(conn)
    for p in problems:
        out.print(f"[red]{p.kind}[/red] at seq {p.seq}: {p.message}")
    if problems:
        raise typer.Exit(1)
    out.print("[green]audit trail intact[/green]")


@audit_app.command("consistency")
def audit_consistency(
    document: list[str] = typer.Option([], "--document", "-d", help="only these documents (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    """Compare every store with the event store (G2); exit 1 when anything disagrees.

    Completed: chunks, vectors (count = chunk_count), graph node, relational row and security
    record all present with the same content hash. Compensated: nothing left. Anything in a
    store for a document without a saga: orphan. CompensationFailed sagas are listed as notes.
    """
    from services.core.errors import StepError
    from services.operator.consistency import audit

    try:
        for doc in document:
            uuid_id("document id", doc)
    except InvalidInput as e:
        raise _fail(str(e)) from None
    try:
        report = audit(Settings(), document or None)
    except (StepError, ConnectionError, OSError) as e:  # Milvus is read through the running vector service
        raise _fail(f"cannot read every store ({e}); are the stack and the vector service up?", 3) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items())) or "none"
        out.print(f"{report.documents} documents: {statuses}")
        for n in report.notes:
            out.print(f"[yellow]{n.kind}[/yellow] {n.document_id}: {n.detail}")
        for v in report.violations:
            out.print(f"[red]{v.kind}[/red] {v.document_id}: {v.detail}")
        if report.ok:
            out.print("[green]consistent: no violations[/green]")
        else:
            out.print(f"[red]{len(report.violations)} violation(s)[/red]")
    if not report.ok:
        raise typer.Exit(1)


# The step that writes each store a repair can rebuild from the chunk store and the event store
# (the chunks themselves come from the source file, which may be gone: not repaired).
REPAIRABLE = {s.store: s for s in SAGA if s.store and s is not SAGA[0]}


def plan_repair(state: Any, stores: Sequence[str]) -> list[Event]:
    """What `audit repair` publishes for a completed saga whose `stores` disagree with it; pure.
    For each repairable store, the input of the step that writes it (the previous step's success
    event) again, with a new id and the repair producer: that step alone redoes its work."""
    if state.status != "Completed":
        raise CannotRedrive(f"{state.status}: only a completed document is repaired")
    from services.core.steplog import event_of

    events = []
    for store in sorted({s for s in stores if s in REPAIRABLE}, key=lambda s: SAGA.index(REPAIRABLE[s])):
        trigger = REPAIRABLE[store].trigger
        recorded = [m for m in state.history if m["event_type"] == trigger]
        if not recorded:
            raise CannotRedrive(f"{trigger}, the input that rebuilds {store}, is not in the event store")
        cause = event_of(recorded[-1])
        events.append(replace(cause, event_id=str(uuid.uuid4()), causation_id=cause.event_id,
                              producer=REPAIR_PRODUCER, occurred_at=datetime.now(UTC)))
    return events


@audit_app.command("repair")
def audit_repair(
    document: list[str] = typer.Option([], "--document", "-d", help="only these documents (repeatable)"),
    timeout: float = typer.Option(600, help="seconds to wait for the repairs to show in the audit"),
) -> None:
    """Rebuild what completed documents lost in the vector, graph, relational or security store.

    Runs the consistency audit; for each completed document that a store disagrees with, the
    step that writes that store redoes its work from the chunk store and the event store
    (idempotent upserts; the services must be running); then audits again until it is clean.
    """
    import time

    from services.operator.consistency import audit
    from services.operator.state import SagaReader

    try:
        docs = [uuid_id("document id", d) for d in document] or None
    except InvalidInput as e:
        raise _fail(str(e)) from None
    settings = Settings()
    report = audit(settings, docs)
    broken: dict[str, set[str]] = {}
    for v in report.violations:
        broken.setdefault(v.document_id, set()).update(v.stores)
    reader, repairs = SagaReader(settings), []
    for doc, stores in sorted(broken.items()):
        unrepairable = sorted(stores - set(REPAIRABLE))
        if unrepairable:
            out.print(f"[yellow]{doc}[/yellow]: cannot repair {', '.join(unrepairable)} (see `uds3 audit consistency`)")
        try:
            events = plan_repair(reader.state(doc), sorted(stores & set(REPAIRABLE)))
        except CannotRedrive as e:
            out.print(f"[yellow]{doc}[/yellow]: {e}")
            continue
        for event in events:
            asyncio.run(_publish(settings, event))
            out.print(f"{doc}: {event.event_type} re-driven to rebuild {_service_of(event)}'s store")
        repairs += [doc] if events else []
    if not repairs:
        out.print("nothing to repair" if report.ok else "[red]nothing that can be repaired[/red]")
        raise typer.Exit(0 if report.ok else 1)
    deadline = time.monotonic() + timeout
    after = audit(settings, repairs)
    while any(set(v.stores) & set(REPAIRABLE) for v in after.violations) and time.monotonic() < deadline:
        time.sleep(2)
        after = audit(settings, repairs)
    for v in after.violations:
        out.print(f"[red]{v.kind}[/red] {v.document_id}: {v.detail}")
    if not after.ok:
        raise typer.Exit(1)
    out.print(f"[green]repaired {len(repairs)} document(s): consistent[/green]")


def _service_of(event: Event) -> str:
    """The service a re-driven input is for: the one it triggers."""
    return next(s.service for s in SAGA if s.trigger == event.event_type)


# --- dead letters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Letter:
    """One DeadLetter record on the dead-letter topic."""

    partition: int  # of the dead-letter topic
    offset: int  # of the dead-letter topic
    key: bytes | None
    event: Event  # the DeadLetter event

    @property
    def parked(self) -> messages.DeadLetter:
        return messages.DeadLetter.of(self.event)

    @property
    def origin(self) -> tuple[str, int, int]:
        return self.parked.topic, self.parked.partition, self.parked.offset

    @property
    def origin_text(self) -> str:
        topic, partition, offset = self.origin
        return f"{topic}:{partition}@{offset}"


@dataclass(frozen=True)
class LetterGroup:
    """One bad message: every consumer group parks it once, so letters are grouped by origin."""

    letters: tuple[Letter, ...]

    @property
    def first(self) -> Letter:
        return self.letters[0]

    @property
    def groups(self) -> list[str]:
        return sorted({x.parked.consumer_group for x in self.letters})

    @property
    def errors(self) -> list[str]:
        return list(dict.fromkeys(x.parked.error for x in self.letters))


def group_letters(letters: Sequence[Letter]) -> list[LetterGroup]:
    """Letters grouped by the message they park (its origin topic, partition and offset), in
    the order the first letter of each arrived (pure)."""
    by_origin: dict[tuple[str, int, int], list[Letter]] = {}
    for letter in sorted(letters, key=lambda x: (x.event.occurred_at, x.partition, x.offset)):
        by_origin.setdefault(letter.origin, []).append(letter)
    return [LetterGroup(tuple(v)) for v in by_origin.values()]


async def read_letters(settings: Settings) -> list[Letter]:
    """Every dead letter, from the topic's beginning to its current end."""
    from services.core import codec, topics

    letters: list[Letter] = []
    for r in await topics.read_all(settings, topics.DEAD_LETTERS):
        try:
            letters.append(Letter(r.partition, r.offset, r.key, codec.decode(r.value)))
        except codec.UndecodableEvent:
            continue  # not ours to show: the DLQ only holds DeadLetter events
    return letters


def _find(letters: Sequence[Letter], offset: int, partition: int | None) -> Letter:
    found = [x for x in letters if x.offset == offset and (partition is None or x.partition == partition)]
    if not found:
        raise _fail(f"no dead letter at offset {offset}")
    if len(found) > 1:
        raise _fail(f"offset {offset} is on several dead-letter partitions: pass --partition")
    return found[0]


def _short_group(group: str) -> str:
    from services.core import topics

    return group.removeprefix(f"{topics.PREFIX}-")


@dlq_app.command("list")
def dlq_list(as_json: bool = typer.Option(False, "--json", help="one JSON object per message")) -> None:
    """Parked messages, one row per bad message (each consumer group parks it once)."""
    groups = group_letters(asyncio.run(read_letters(Settings())))
    if as_json:
        for g in groups:
            topic, partition, offset = g.first.origin
            print(json.dumps({
                "offset": g.first.offset, "dlq_offsets": [x.offset for x in g.letters],
                "origin": {"topic": topic, "partition": partition, "offset": offset},
                "groups": g.groups, "key": (g.first.key or b"").decode("utf-8", "replace"), "errors": g.errors,
                "bytes": len(g.first.parked.original),
            }))
        return
    table = Table("offset", "origin", "groups", "key", "error")
    for g in groups:
        key = (g.first.key or b"").decode("utf-8", "replace")
        table.add_row(str(g.first.offset), g.first.origin_text, ",".join(_short_group(x) for x in g.groups),
                      key[:36], g.errors[0][:80])
    out.print(table)
    out.print(f"{len(groups)} message(s), {sum(len(g.letters) for g in groups)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(
    offset: int,
    partition: int = typer.Option(None, help="dead-letter topic partition (when it has several)"),
    head: int = typer.Option(64, help="bytes of the original message to show"),
) -> None:
    """One dead letter: why, where it came from, who parked it, and the head of its bytes."""
    letters = asyncio.run(read_letters(Settings()))
    letter = _find(letters, offset, partition)
    same = next(g for g in group_letters(letters) if g.first.origin == letter.origin)
    original = letter.parked.original
    out.print(f"dead letter {letter.partition}:{letter.offset} at {letter.event.occurred_at.isoformat()}")
    out.print(f"  origin    {letter.origin_text}")
    out.print(f"  key       {(letter.key or b'').decode('utf-8', 'replace')}")
    out.print(f"  parked by {', '.join(same.groups)} (dead-letter offsets "
              f"{', '.join(str(x.offset) for x in same.letters)})")
    for e in same.errors:
        out.print(f"  error     {e}")
    out.print(f"  original  {len(original)} bytes; first {min(head, len(original))}:")
    for i in range(0, min(head, len(original)), 16):
        chunk = original[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.print(f"    {i:04x}  {chunk.hex(' '):<47}  {text}", markup=False, highlight=False)


async def redrive_letter(settings: Settings, letter: Letter) -> None:
    """Publishes the parked message's original bytes again to its origin topic and partition."""
    from aiokafka import AIOKafkaProducer

    topic, partition, _ = letter.origin
    producer = AIOKafkaProducer(**settings.kafka("admin"), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        key = letter.key if letter.key and letter.key != b"unknown" else None
        await producer.send_and_wait(topic, letter.parked.original, key=key, partition=partition)
    finally:
        await producer.stop()


@dlq_app.command("redrive")
def dlq_redrive(
    offset: int, partition: int = typer.Option(None, help="dead-letter topic partition (when it has several)")
) -> None:
    """Publish a parked message's original bytes again to where it came from (after a fix).

    Consumers that can now decode it handle it; the saga's own dedup (event ids) makes a
    message that was handled meanwhile change nothing. One re-drive per message suffices,
    whichever of its letters (one per consumer group) you name.
    """
    settings = Settings()
    letter = _find(asyncio.run(read_letters(settings)), offset, partition)
    asyncio.run(redrive_letter(settings, letter))
    out.print(f"re-published {len(letter.parked.original)} bytes to {letter.origin[0]}:{letter.origin[1]}")


# --- re-driving sagas -----------------------------------------------------------------------
class CannotRedrive(Exception):
    """The saga is in no state a re-drive applies to (the message says what to do instead)."""


@dataclass(frozen=True)
class Redrive:
    event: Event  # what to publish on the events topic
    summary: str


def redrive_id(original_event_id: str, attempt: int) -> str:
    """A re-driven event's id: new (dedup lets it through) but deterministic per attempt, so
    running the same command twice before the saga moves publishes the same event twice."""
    return str(uuid.uuid5(NAMESPACE, f"{original_event_id}/redrive/{attempt}"))


def plan_retry(state: Any) -> Redrive:
    """What `saga retry` publishes for a saga (a `services.operator.state.SagaState`); pure.

    * CompensationFailed: the input of the undo that failed (the next step's Failed or
      Compensated event), again, with a new id and the operator as producer: the step whose
      undo failed tries it again, and the chain carries on from there.
    * Compensating (the chain stopped, e.g. an event lost): its newest Failed/Compensated
      event with its own id: the step that missed it acts, the others recognise it.
    """
    history: list[dict[str, Any]] = state.history
    if state.status == "CompensationFailed":
        failures = [m for m in history if m["event_type"] == COMPENSATION_FAILED]
        last = failures[-1]
        service = last["producer"]
        step = BY_SERVICE.get(service)
        nxt = after(step) if step else None
        if step is None or nxt is None:
            raise CannotRedrive(f"CompensationFailed by {service!r}: no step of the saga undoes there")
        inputs = [m for m in history if m["event_type"] in undo_triggers(step)]
        if not inputs:
            raise CannotRedrive(f"the event that started {step.name}'s undo ({nxt.failed}) is not in the event store")
        from services.core.steplog import event_of

        cause = event_of(inputs[-1])
        event = replace(
            cause,
            event_id=redrive_id(cause.event_id, len(failures)),
            causation_id=last["event_id"],
            producer=OPERATOR,
            occurred_at=datetime.now(UTC),
        )
        return Redrive(event, f"re-drove {step.name}'s undo (attempt {len(failures) + 1}) with {event.event_type} "
                              f"{event.event_id}")
    if state.status == "Compensating":
        chain = [m for m in history if m["event_type"] in FAILED_EVENTS | COMPENSATED_EVENTS]
        from services.core.steplog import event_of

        event = event_of(chain[-1])
        return Redrive(event, f"republished {event.event_type} {event.event_id}: the compensation chain goes on")
    if state.status == "Running":
        raise CannotRedrive("the saga is running forward: `uds3 resume` re-drives it, "
                            "`uds3 saga compensate --force` undoes it")
    if state.status == "Unknown":
        raise CannotRedrive("unknown document")
    raise CannotRedrive(f"already {state.status}: nothing to re-drive")


def plan_compensate(state: Any, force: bool = False) -> Redrive:
    """What `saga compensate` publishes; pure. As `plan_retry` for a saga that is compensating
    or in CompensationFailed; with `force`, a running saga is turned round: the operator
    publishes the Failed event of the step after the current one, so the current step undoes
    whatever it wrote and the chain runs back to DocumentCompensated (the last step, which
    has no successor, is named as the failed one itself)."""
    if state.status in ("CompensationFailed", "Compensating"):
        return plan_retry(state)
    if state.status != "Running":
        return plan_retry(state)  # raises with the reason
    if not force:
        raise CannotRedrive("the saga is still running: pass --force to undo it anyway (only for a saga "
                            "whose current step will not finish; see docs/failure-handling.md)")
    current = BY_NAME.get(state.current_step, SAGA[-1])
    target = (after(current) or current).name
    reason = f"compensation requested by an operator while {current.name} was running"
    last_id = state.history[-1]["event_id"] if state.history else None
    event = Event(
        event_type=failed(target),
        document_id=state.document_id,
        saga_id=state.saga_id,
        payload={"step": target, "reason": reason, "retryable": False, "error_type": "OperatorRequest"},
        event_id=str(uuid.uuid5(NAMESPACE, f"{state.document_id}/{state.saga_id}/operator-compensate/{target}")),
        causation_id=last_id,
        producer=OPERATOR,
    )
    return Redrive(event, f"published {event.event_type} as the operator: compensation starts at {current.name}")


async def _publish(settings: Settings, event: Event) -> None:
    from services.client import Client

    async with Client(settings, principal="admin") as client:  # an operator re-drives any step's event
        await client.republish(event)


def _redrive(document_id: str, plan: Any) -> None:
    from services.operator.state import SagaReader

    settings = Settings()
    state = SagaReader(settings).state(uuid_id("document id", document_id))
    try:
        redrive = plan(state)
    except CannotRedrive as e:
        raise _fail(f"{document_id}: {e}") from None
    asyncio.run(_publish(settings, redrive.event))
    out.print(f"{document_id} ({state.status}): {redrive.summary}")


def saga_retry(document_id: str) -> None:
    """Re-drive a saga's compensation where it stopped (CompensationFailed or a stalled chain).

    After CompensationFailed (e.g. once the store that refused the delete is back), the undo
    that failed runs again and the chain continues to DocumentCompensated.
    """
    _redrive(document_id, plan_retry)


def saga_compensate(
    document_id: str,
    force: bool = typer.Option(False, "--force", help="also turn a running (stuck) saga round"),
) -> None:
    """Drive a saga to DocumentCompensated: re-drives a failed or stalled compensation; with
    --force, starts one for a running saga whose current step will not finish."""
    _redrive(document_id, lambda state: plan_compensate(state, force))
