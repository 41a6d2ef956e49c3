"""The audit trail's hash chain and the security step's pure decisions (no database)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.core.errors import PermanentError
from services.core.events import CHUNK_STORED, DOCUMENT_SUBMITTED, Event
from services.core.saga import ALL_EVENT_TYPES
from services.security.audit import GENESIS, Entry, canonical, chain_hash, check_chain, jsonable
from services.security.step import SecurityStep, audit_draft, identity_of, identity_record

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[Entry]:
    entries: list[Entry] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        detail = {"payload": {"n": seq, "names": ["a", "b"]}}
        at = T0 + timedelta(seconds=seq)
        h = chain_hash(prev, seq, "doc", f"ev-{seq}", "Something", detail, at)
        entries.append(Entry(seq, "doc", f"ev-{seq}", "Something", detail, at, prev, h))
        prev = h
    return entries


def test_intact_chain_has_no_problems() -> None:
    assert check_chain(chain(5)) == []
    assert check_chain([]) == []


def test_edited_row_is_reported_at_its_seq() -> None:
    entries = chain(5)
    entries[2] = replace(entries[2], detail={"payload": {"n": 999}})
    problems = check_chain(entries)
    assert [(p.seq, p.kind) for p in problems] == [(3, "edited")]


def test_rehashed_edit_breaks_the_next_link() -> None:
    entries = chain(5)
    edited = replace(entries[2], event_type="Forged")
    entries[2] = replace(edited, entry_hash=chain_hash(edited.prev_hash, 3, "doc", "ev-3", "Forged",
                                                       edited.detail, edited.recorded_at))
    assert [(p.seq, p.kind) for p in check_chain(entries)] == [(4, "relinked")]


def test_deleted_row_is_reported_as_missing() -> None:
    entries = chain(5)
    del entries[1]
    problems = check_chain(entries)
    assert [(p.seq, p.kind) for p in problems] == [(3, "missing")]
    assert "seq 2..2 absent" in problems[0].message


def test_deleted_first_rows_are_reported() -> None:
    assert [(p.seq, p.kind) for p in check_chain(chain(4)[2:])] == [(3, "missing")]


def test_reordered_rows_are_reported() -> None:
    entries = chain(5)
    entries[1], entries[2] = replace(entries[2], seq=2), replace(entries[1], seq=3)  # renumbered swap
    kinds = {(p.seq, p.kind) for p in check_chain(entries)}
    assert {(2, "edited"), (3, "edited")} <= kinds


def test_seq_gap_alone_is_not_a_problem() -> None:
    # a rolled-back append burns a sequence number but links nothing
    entries = chain(3)
    last = entries[-1]
    h = chain_hash(last.entry_hash, 7, "doc", "ev-7", "X", {}, T0)
    assert check_chain([*entries, Entry(7, "doc", "ev-7", "X", {}, T0, last.entry_hash, h)]) == []


def test_hash_ignores_time_zone_and_key_order() -> None:
    at_berlin = T0.astimezone(ZoneInfo("Europe/Berlin"))
    assert canonical(1, "d", "e", "t", {"a": 1, "b": 2}, T0) == canonical(1, "d", "e", "t", {"b": 2, "a": 1},
                                                                          at_berlin)


def test_jsonable_survives_jsonb() -> None:
    assert jsonable({"f": 1e20, "b": b"\x01", "l": (1, "x\x00"), "t": T0}) == {
        "f": "1e+20", "b": "01", "l": [1, "x"], "t": "2024-05-01T12:00:00.000000+00:00"}


def submission(**payload: object) -> Event:
    return Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", payload={
        "source_uri": "file:///inbox/a.pdf", "size_bytes": 1, "content_type": "", "security_level": "confidential",
        "submitter": "alice", **payload})


def test_identity_is_stable_and_hash_is_checked() -> None:
    verified = submission().follow("IntegrityVerified", "verifier", sha256="AB" * 32, chunks_checked=1, size_bytes=1)
    record = identity_record(submission(), verified)
    assert record.identity == identity_of("doc-1") and uuid.UUID(record.identity).version == 5
    assert record.content_sha256 == "ab" * 32 and record.classification == "confidential"
    with pytest.raises(PermanentError):
        identity_record(submission(), verified.with_payload(sha256="nothex"))


def test_audit_draft_is_keyed_by_event_id() -> None:
    e = submission(title="T")
    draft = audit_draft(e)
    assert (draft.event_id, draft.event_type, draft.detail["payload"]["title"]) == (e.event_id, e.event_type, "T")


def test_observes_every_event_but_progress() -> None:
    assert CHUNK_STORED not in SecurityStep.observes
    assert DOCUMENT_SUBMITTED in SecurityStep.observes
    assert len(SecurityStep.observes) == len(ALL_EVENT_TYPES) - 3
