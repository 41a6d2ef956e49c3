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
