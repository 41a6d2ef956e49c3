"""The saga table (`services/core/saga.py`) is the one place the choreography is written."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from services.compose import step_class
from services.core import codec
from services.core.events import DOCUMENT_SUBMITTED
from services.core.saga import ALL_EVENT_TYPES, FIRST, LAST, OWNER, SAGA, after, undo_triggers


def test_each_step_starts_on_the_success_of_the_one_before() -> None:
    assert FIRST.trigger == DOCUMENT_SUBMITTED
    for before, step in pairwise(SAGA):
        assert step.trigger == before.success
        assert step.needs <= {DOCUMENT_SUBMITTED, *(e for s in SAGA[: SAGA.index(step)] for e in (s.success, *s.emits))}


def test_each_step_is_undone_by_the_failure_or_compensation_of_the_next() -> None:
    for step in SAGA:
        nxt = after(step)
        assert undo_triggers(step) == ({nxt.failed, nxt.compensated} if nxt else set())
    assert after(LAST) is None


def test_every_row_has_its_service_folder_and_the_step_there_follows_the_row() -> None:
    for row in SAGA:
        assert (Path("services") / row.service / "step.py").is_file()
        cls = step_class(row.service)
        step = cls.__new__(cls)  # its row only: no adapters needed
        assert (step.step, step.reacts_to, step.needs) == (row.name, {row.trigger}, row.needs)


def test_every_event_of_the_table_has_a_schema_and_one_owner() -> None:
    assert set(ALL_EVENT_TYPES) <= set(codec.REGISTRY.current)
    assert {e for s in SAGA for e in (s.success, s.failed, s.compensated, *s.emits, *s.progress)} <= set(OWNER)
    assert all(OWNER[e] == s.service for s in SAGA for e in (s.success, s.failed, s.compensated))


def test_each_service_reads_only_the_topics_that_carry_its_inputs() -> None:
    """Its trigger's, its undo's, what it needs, the endings; the audit trail notes everything."""
    from services.compose import build_step
    from services.core import topics
    from services.core.config import Settings

    def reads(service: str) -> set[str]:
        inputs = build_step(service, Settings()).inputs
        return {t.name.removeprefix(f"{topics.PREFIX}.") for t in topics.consumed(inputs)}

    endings = {"uploader.events", "relational.events"}  # DocumentCompensated, DocumentCompleted
    assert reads("uploader") == {"submissions", "verifier.events"} | endings
    assert reads("vector") == {"submissions", "security.events", "graph.events"} | endings
    assert reads("security") == {t.name.removeprefix(f"{topics.PREFIX}.") for t in topics.SAGA_TOPICS}
    saga_topics = {t.name for t in topics.SAGA_TOPICS}
    for row in SAGA:  # every saga event type a step acts on travels on a topic it reads
        step = build_step(row.service, Settings())
        read = {t.name for t in topics.consumed(step.inputs)}
        assert all(topics.carriers(t) & read for t in step.inputs if topics.carriers(t) & saga_topics)
