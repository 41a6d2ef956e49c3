"""The saga's state for a document, rebuilt from the six services' event stores alone (G5).

No service keeps the saga's state: each service's `StepLog` holds what it received and
emitted, and the saga is their union, ordered by causation and time; the saga table
(`core/saga.py`) says what each event means. `fold()` is pure; `SagaReader` does the reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.core.config import Settings
from services.core.events import (
    COMPENSATION_FAILED,
    DOCUMENT_COMPENSATED,
    DOCUMENT_COMPLETED,
    DOCUMENT_SUBMITTED,
    PROGRESS_EVENTS,
    TERMINAL_EVENTS,
)
from services.core.saga import SAGA, SERVICES, after
from services.core.steplog import StepLog, log_id
from services.core.store import StepStore

STATUS_OF_TERMINAL = {
    DOCUMENT_COMPLETED: "Completed",
    DOCUMENT_COMPENSATED: "Compensated",
    COMPENSATION_FAILED: "CompensationFailed",
}


@dataclass
class SagaState:
    document_id: str
    saga_id: str = ""
    status: str = "Unknown"  # Running, Compensating, Completed, Compensated, CompensationFailed
    current_step: str = ""
    steps: dict[str, str] = field(default_factory=dict)  # step -> done / failed / compensated
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    submitted_at: str = ""
    finished_at: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in STATUS_OF_TERMINAL.values()


def fold(document_id: str, messages: Iterable[dict[str, Any]]) -> SagaState:
    """Replays a document's saga events into its state."""
    state = SagaState(document_id)
    seen: set[str] = set()
    for m in causal_order(messages):
        if m["event_id"] in seen:
            continue
        seen.add(m["event_id"])
        kind = m["event_type"]
        if kind in PROGRESS_EVENTS:
            state.progress[kind] = m["payload"]
            continue
        state.history.append(m)
        if kind == DOCUMENT_SUBMITTED and not state.saga_id:  # a resubmission joins the first saga
            state.saga_id, state.status, state.submitted_at = m["saga_id"], "Running", m["occurred_at"]
            state.current_step = SAGA[0].name
        for step in SAGA:
            if kind == step.success:
                state.steps[step.name] = "done"
                nxt = after(step)
                state.current_step = nxt.name if nxt else "Finalize"
            elif kind == step.failed:
                state.steps[step.name] = "failed"
                state.status, state.current_step = "Compensating", step.name
                state.errors.append(f"{step.name}: {m['payload'].get('reason', '')}")
            elif kind == step.compensated:
                state.steps[step.name] = "compensated"
                state.current_step = step.name
        if kind in TERMINAL_EVENTS:
            state.status, state.finished_at = STATUS_OF_TERMINAL[kind], m["occurred_at"]
            if kind == COMPENSATION_FAILED:
                state.errors.append(m["payload"].get("reason", ""))
    return state


def causal_order(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """By time, and by causation where times tie (the wire keeps milliseconds only); a terminal
    event is the last of its instant (it is emitted with, or after, the step event it closes)."""
    listed = list(messages)
    cause = {m["event_id"]: m["causation_id"] for m in listed}

    def depth(event_id: str) -> int:
        n, seen = 0, set()
        while (event_id := cause.get(event_id)) and event_id not in seen:  # type: ignore[assignment]
            seen.add(event_id)
            n += 1
        return n

    def millisecond(occurred_at: str) -> datetime:  # a copy read off Kafka has no microseconds
        at = datetime.fromisoformat(occurred_at)
        return at.replace(microsecond=at.microsecond // 1000 * 1000)

    return sorted(listed, key=lambda m: (millisecond(m["occurred_at"]), depth(m["event_id"]),
                                         m["event_type"] in TERMINAL_EVENTS))


class SagaReader:
    """Reads every service's event store (with the admin role: this is an operator's view)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.stores = {s: StepStore(s, self.settings, admin=True) for s in SERVICES}

    def messages(self, document_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for service, store in self.stores.items():
            try:
                log: StepLog = store.repository.get(log_id(service, document_id))
            except Exception as e:
                if type(e).__name__ == "AggregateNotFoundError":
                    continue
                raise
            out.extend(log.received)
            out.extend(log.emitted)
        return out

    def state(self, document_id: str) -> SagaState:
        return fold(document_id, self.messages(document_id))

    def document_ids(self) -> list[str]:
        """Every document the uploader has seen (each saga starts there)."""
        store = self.stores["uploader"]
        ids = []
        for n in store.recorder.select_notifications(start=1, limit=1_000_000, topics=[_OPENED_TOPIC]):
            ids.append(store.mapper.to_domain_event(n).document_id)  # type: ignore[attr-defined]
        return ids


_OPENED_TOPIC = "services.core.steplog:StepLog.Opened"
