"""The consistency audit's comparison (G2) and the re-drive decisions of `uds3 saga retry /
compensate` and `uds3 dlq`, on fake inputs (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.cli.ops import (
    OPERATOR,
    CannotRedrive,
    Letter,
    group_letters,
    plan_compensate,
    plan_retry,
    redrive_id,
)
from services.core.events import DEAD_LETTER, Event
from services.core.runtime import REDRIVE_PRODUCER
from services.operator.consistency import Held, Inventory, SagaFacts, check, saga_facts
from services.operator.state import fold

SHA = "ab" * 32
OTHER = "cd" * 32


def completed(doc: str, *, chunks: int = 1, vectors: int = 3, sha: str = SHA) -> Inventory:
    """An inventory in which `doc` completed and every store agrees."""
    return Inventory(
        sagas={doc: SagaFacts("Completed", upload_chunks=chunks, text_chunks=vectors, content_sha256=sha)},
        chunks={doc: Held(chunks, sha)},
        vectors={doc: Held(vectors)} if vectors else {},
        graph={doc: Held(1, sha)},
        relational={doc: Held(vectors, sha)},
        security={doc: Held(1, sha)},
    )


def kinds(inv: Inventory) -> list[tuple[str, str]]:
    return [(v.kind, v.detail) for v in check(inv).violations]


def test_completed_document_with_every_store_in_agreement_is_consistent() -> None:
    report = check(completed("d1"))
    assert report.ok and report.statuses == {"Completed": 1} and report.documents == 1


def test_completed_document_without_text_needs_no_vectors() -> None:
    assert check(completed("d1", vectors=0)).ok


@pytest.mark.parametrize("store", ["chunks", "vectors", "graph", "relational", "security"])
def test_completed_document_missing_from_a_store_is_a_violation(store: str) -> None:
    inv = completed("d1")
    del getattr(inv, store)["d1"]
    found = kinds(inv)
    assert found and found[0][0] == "missing" and store in found[0][1]


def test_vector_count_must_equal_the_chunk_count() -> None:
    inv = completed("d1", vectors=5)
    inv.vectors["d1"] = Held(4)
    assert kinds(inv) == [("mismatch", "vector count 4 != chunk_count 5")]


def test_stored_chunks_must_match_the_upload() -> None:
    inv = completed("d1", chunks=3)
    inv.chunks["d1"] = Held(2, SHA)
    assert kinds(inv) == [("mismatch", "2 stored chunks, the upload recorded 3")]


def test_relational_row_must_name_the_same_chunk_count() -> None:
    inv = completed("d1", vectors=5)
    inv.relational["d1"] = Held(6, SHA)
    assert kinds(inv) == [("mismatch", "relational chunk_count 6 != 5")]


@pytest.mark.parametrize("store", ["chunks", "graph", "relational", "security"])
def test_every_store_must_name_the_same_content_hash(store: str) -> None:
    inv = completed("d1")
    getattr(inv, store)["d1"] = Held(getattr(inv, store)["d1"].count, OTHER)
    found = kinds(inv)
    assert len(found) == 1 and found[0][0] == "mismatch" and found[0][1].startswith(store)


def test_compensated_document_must_leave_nothing() -> None:
    inv = Inventory(sagas={"d1": SagaFacts("Compensated")})
    assert check(inv).ok
    inv.vectors["d1"] = Held(2)
    inv.graph["d1"] = Held(1)
    assert kinds(inv) == [("leftover", "compensated, but still in vectors (2), graph")]


def test_zero_vectors_are_nothing_left() -> None:
    inv = Inventory(sagas={"d1": SagaFacts("Compensated")}, vectors={"d1": Held(0)})
    assert check(inv).ok


def test_anything_stored_for_an_unknown_document_is_an_orphan() -> None:
    inv = Inventory(relational={"ghost": Held(1, SHA)}, chunks={"ghost": Held(1)})
    assert kinds(inv) == [("orphan", "no saga in the event store, but in chunks (1), relational")]
    assert check(inv).statuses == {"Unknown": 1}


@pytest.mark.parametrize("status", ["Running", "Compensating"])
def test_sagas_in_flight_may_hold_anything(status: str) -> None:
    inv = completed("d1")
    inv.sagas["d1"] = SagaFacts(status)
    del inv.graph["d1"]
    assert check(inv).ok


def test_compensation_failed_is_a_note_naming_what_is_left_not_a_violation() -> None:
    inv = Inventory(sagas={"d1": SagaFacts("CompensationFailed", remaining=("Upload", "Graph"))},
                    graph={"d1": Held(1, SHA)})
    report = check(inv)
    assert report.ok
    assert [n.kind for n in report.notes] == ["compensation-failed"]
    assert "graph" in report.notes[0].detail and "Upload, Graph" in report.notes[0].detail


def test_report_covers_every_document_of_every_store() -> None:
    inv = completed("a")
    inv.sagas["b"] = SagaFacts("Compensated")
    inv.security["c"] = Held(1, SHA)
    report = check(inv)
    assert report.documents == 3
    assert report.statuses == {"Completed": 1, "Compensated": 1, "Unknown": 1}
    assert [v.document_id for v in report.violations] == ["c"]
    assert report.as_dict()["violations"][0]["kind"] == "orphan"


# --- sagas, folded from messages as the event store holds them -------------------------------
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class History:
    """Builds a saga's messages, one event after the other."""

    def __init__(self, doc: str = "doc-1") -> None:
        self.doc, self.saga = doc, "saga-1"
        self.messages: list[dict[str, Any]] = []

    def add(self, event_type: str, producer: str, **payload: Any) -> dict[str, Any]:
        m = {
            "event_type": event_type, "event_id": str(uuid.uuid4()), "document_id": self.doc,
            "saga_id": self.saga, "causation_id": self.messages[-1]["event_id"] if self.messages else None,
            "correlation_id": self.saga, "occurred_at": (T0 + timedelta(seconds=len(self.messages))).isoformat(),
            "producer": producer, "schema_version": 1, "payload": payload,
        }
        self.messages.append(m)
        return m

    def state(self) -> Any:
        return fold(self.doc, self.messages)


def forward_until_relational_failed() -> History:
    h = History()
    h.add("DocumentSubmitted", "client", title="t")
    h.add("UploadCompleted", "uploader", sha256=SHA, chunk_count=1)
    h.add("IntegrityVerified", "verifier")
    h.add("SecurityRecorded", "security")
    h.add("VectorsIndexed", "vector", chunk_count=4)
    h.add("GraphLinked", "graph")
    h.add("RelationalFailed", "relational", step="Relational", reason="boom", retryable=False,
          error_type="PermanentError")
    return h


def test_saga_facts_take_counts_and_hash_from_the_events() -> None:
    h = forward_until_relational_failed()
    h.add("CompensationFailed", "graph", failed_step="Relational",
          remaining=["Upload", "Integrity", "Security", "Vectors", "Graph"], reason="Graph: refused")
    facts = saga_facts(h.state())
    assert facts == SagaFacts("CompensationFailed", upload_chunks=1, text_chunks=4, content_sha256=SHA,
                              remaining=("Upload", "Integrity", "Security", "Vectors", "Graph"))
    assert saga_facts(History().state()).status == "Unknown"


def test_retry_after_compensation_failed_re_drives_the_failed_undo_with_a_new_id() -> None:
    h = forward_until_relational_failed()
    cause = h.messages[-1]
    failure = h.add("CompensationFailed", "graph", failed_step="Relational", remaining=["Graph"], reason="x")
    plan = plan_retry(h.state())
    e = plan.event
    assert e.event_type == "RelationalFailed" and e.payload == cause["payload"]
    assert e.event_id == redrive_id(cause["event_id"], 1) != cause["event_id"]
    assert e.producer == OPERATOR == REDRIVE_PRODUCER  # the runtime lets exactly these through
    assert e.causation_id == failure["event_id"]
    assert plan_retry(h.state()).event.event_id == e.event_id  # same attempt, same id: deduplicated
    # a second failure of the same undo: the next attempt gets the next id
    h.add("CompensationFailed", "graph", failed_step="Relational", remaining=["Graph"], reason="x")
    assert plan_retry(h.state()).event.event_id == redrive_id(cause["event_id"], 2)


def test_retry_after_an_undo_failed_further_down_the_chain_re_drives_that_undo() -> None:
    h = forward_until_relational_failed()
    compensated = h.add("GraphCompensated", "graph", step="Graph", detail="", failed_step="Relational")
    h.add("CompensationFailed", "vector", failed_step="Relational", remaining=["Vectors"], reason="x")
    e = plan_retry(h.state()).event
    assert e.event_type == "GraphCompensated"
    assert e.event_id == redrive_id(compensated["event_id"], 1)
    assert plan_compensate(h.state()).event.event_id == e.event_id


def test_retry_of_a_stalled_compensation_republishes_its_newest_event_as_it_was() -> None:
    h = forward_until_relational_failed()
    stalled = h.add("GraphCompensated", "graph", step="Graph", detail="", failed_step="Relational")
    state = h.state()
    assert state.status == "Compensating"
    e = plan_retry(state).event
    assert (e.event_type, e.event_id, e.producer) == ("GraphCompensated", stalled["event_id"], "graph")


def test_nothing_to_re_drive_for_finished_or_running_sagas() -> None:
    h = History()
    h.add("DocumentSubmitted", "client")
    with pytest.raises(CannotRedrive, match="resume"):
        plan_retry(h.state())
    with pytest.raises(CannotRedrive, match="--force"):
        plan_compensate(h.state())
    h.add("DocumentCompleted", "relational", chunk_count=1)
    with pytest.raises(CannotRedrive, match="already Completed"):
        plan_retry(h.state())
    with pytest.raises(CannotRedrive, match="already Completed"):
        plan_compensate(h.state(), force=True)
    with pytest.raises(CannotRedrive, match="unknown"):
        plan_retry(History().state())


def test_forced_compensation_of_a_running_saga_fails_the_step_after_the_current_one() -> None:
    h = History()
    h.add("DocumentSubmitted", "client")
    h.add("UploadCompleted", "uploader", sha256=SHA, chunk_count=1)
    h.add("IntegrityVerified", "verifier")
    h.add("SecurityRecorded", "security")  # the vector step is running
    e = plan_compensate(h.state(), force=True).event
    assert e.event_type == "GraphFailed"  # the vector step undoes its own partial work first
    assert e.producer == OPERATOR and e.payload["error_type"] == "OperatorRequest"
    assert "Vectors" in e.payload["reason"]
    assert plan_compensate(h.state(), force=True).event.event_id == e.event_id


# --- dead letters -----------------------------------------------------------------------------
def letter(offset: int, origin_offset: int, group: str, error: str = "bad marker") -> Letter:
    event = Event(DEAD_LETTER, "k", "k", {
        "original": b"\x00", "topic": "p.saga.events", "partition": 2, "offset": origin_offset,
        "error": error, "consumer_group": group}, occurred_at=T0 + timedelta(seconds=offset))
    return Letter(0, offset, b"k", event)


def test_dead_letters_are_grouped_by_the_message_they_park() -> None:
    letters = [letter(0, 7, "p-uploader"), letter(1, 7, "p-graph"), letter(2, 9, "p-graph", "unknown schema"),
               letter(3, 7, "p-graph")]
    groups = group_letters(letters)
    assert [g.first.origin for g in groups] == [("p.saga.events", 2, 7), ("p.saga.events", 2, 9)]
    assert groups[0].groups == ["p-graph", "p-uploader"] and len(groups[0].letters) == 3
    assert groups[1].errors == ["unknown schema"]
    assert groups[0].first.origin_text == "p.saga.events:2@7"


# --- the runtime side of a re-drive -----------------------------------------------------------
def test_an_undo_that_ended_in_compensation_failed_runs_again_only_for_an_operator_re_drive() -> None:
    from services.core.errors import PermanentError
    from services.core.step import Context, Undone
    from services.core.steplog import StepLog
    from tests.unit.test_runtime import Recording, at, runtime_for, submitted

    class Flaky(Recording):
        refuse = True

        def undo(self, log: StepLog, ctx: Context) -> Undone:
            if self.refuse:
                raise PermanentError("store refuses delete")
            self.undone += 1
            return Undone("deleted", 1)

    step = Flaky("graph", [])
    rt = runtime_for(step)
    sub = submitted()
    rt.process(sub, at(0))
    cause = sub.follow("RelationalFailed", "relational", step="Relational", reason="x", retryable=False,
                       error_type="PermanentError")
    rt.process(cause, at(1))
    assert rt.store.step_log(sub.document_id).has_emitted("CompensationFailed")
    step.refuse = False
    other = Event(cause.event_type, cause.document_id, cause.saga_id, cause.payload, event_id=str(uuid.uuid4()),
                  producer="relational")
    rt.process(other, at(2))  # not a re-drive: the saga stays where it ended
    assert step.undone == 0
    redrive = Event(cause.event_type, cause.document_id, cause.saga_id, cause.payload,
                    event_id=redrive_id(cause.event_id, 1), producer=OPERATOR)
    rt.process(redrive, at(3))
    rt.process(redrive, at(4))  # the same re-drive twice: once
    assert step.undone == 1
    log = rt.store.step_log(sub.document_id)
    done = log.last_emitted("GraphCompensated")
    assert done is not None and done.causation_id == redrive.event_id
