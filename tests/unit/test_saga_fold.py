"""Saga state is a pure fold over the recorded events (G5)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from services.core.events import DOCUMENT_SUBMITTED, Event
from services.core.steplog import message_of
from services.operator.state import fold


def chain(*types: str, **payloads: dict[str, object]) -> list[dict[str, object]]:
    first = Event(DOCUMENT_SUBMITTED, str(uuid.uuid4()), str(uuid.uuid4()), {"title": "t"})
    events, current = [first], first
    for i, t in enumerate(types):
        current = current.follow(t, "svc", seq=i, **payloads.get(t, {}))
        events.append(current)
    return [message_of(e) for e in events]


def test_a_completed_saga_shows_every_step_done() -> None:
    messages = chain("UploadStarted", "UploadCompleted", "IntegrityVerified", "SecurityRecorded", "VectorsIndexed",
                     "GraphLinked", "RelationalRecorded", "DocumentCompleted")
    state = fold(messages[0]["document_id"], messages)  # type: ignore[arg-type]
    assert state.status == "Completed" and state.terminal
    assert state.steps == {s: "done" for s in ("Upload", "Integrity", "Security", "Vectors", "Graph", "Relational")}


def test_a_failure_then_reverse_compensation_ends_compensated() -> None:
    messages = chain("UploadCompleted", "IntegrityVerified", "SecurityRecorded", "VectorsFailed",
                     "SecurityCompensated", "IntegrityCompensated", "UploadCompensated", "DocumentCompensated",
                     VectorsFailed={"reason": "corrupt PDF"})
    state = fold(messages[0]["document_id"], messages)  # type: ignore[arg-type]
    assert state.status == "Compensated"
    assert state.steps["Vectors"] == "failed" and state.steps["Upload"] == "compensated"
    assert state.errors == ["Vectors: corrupt PDF"]


def test_order_of_reading_and_duplicates_do_not_change_the_state() -> None:
    messages = chain("UploadStarted", "UploadProgressed", "UploadCompleted", "IntegrityVerified",
                     UploadProgressed={"bytes_done": 5})
    doc = str(messages[0]["document_id"])
    shuffled = messages + messages[1:3]
    random.Random(4).shuffle(shuffled)
    assert fold(doc, shuffled) == fold(doc, messages)
    assert fold(doc, messages).progress["UploadProgressed"] == {"bytes_done": 5}
    assert fold(doc, messages).status == "Running" and fold(doc, messages).current_step == "Security"


def test_a_terminal_event_is_the_last_of_its_instant_and_a_resubmission_joins_the_first_saga() -> None:
    """The step event and the terminal event it closes share a millisecond and a cause (the
    relational step emits both); every service also receives the terminal event."""
    submitted = Event(DOCUMENT_SUBMITTED, str(uuid.uuid4()), str(uuid.uuid4()), {"title": "t"})
    recorded = submitted.follow("RelationalRecorded", "relational")
    completed = submitted.follow("DocumentCompleted", "relational", seq=1)
    again = Event(DOCUMENT_SUBMITTED, submitted.document_id, str(uuid.uuid4()), {"title": "t"},
                  occurred_at=recorded.occurred_at + timedelta(seconds=1))
    same_instant = [message_of(e) | {"occurred_at": message_of(recorded)["occurred_at"]}
                    for e in (completed, recorded)]
    state = fold(submitted.document_id, [message_of(submitted), *same_instant, message_of(again)])
    assert [m["event_type"] for m in state.history][1:3] == ["RelationalRecorded", "DocumentCompleted"]
    assert state.status == "Completed" and state.saga_id == submitted.saga_id
