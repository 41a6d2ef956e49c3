"""The security service's port: the same assertions against the in-memory and the PostgreSQL
adapter, so a test that uses the in-memory one tests what production does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from services.core.config import Settings
from services.core.errors import PermanentError
from services.security.adapters import AuditDraft, Identity, InMemorySecurityRecords, SecurityRecords, SecurityStore
from services.security.audit import Problem, check_chain, hash_of, jsonable, verify_audit

pytestmark = pytest.mark.stack
SHA = "5e" * 32
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["in-memory", "postgresql"])
def records(request: pytest.FixtureRequest, stack: Settings) -> Iterator[SecurityRecords]:
    port: SecurityRecords = InMemorySecurityRecords() if request.param == "in-memory" else \
        SecurityStore(stack.pg_dsn(*stack.service_role("security")))
    port.open()
    yield port
    port.close()


def chain_problems(port: SecurityRecords) -> list[Problem]:
    """The whole trail checked as the project checks it (the port itself never exposes it)."""
    if isinstance(port, InMemorySecurityRecords):
        return check_chain(port.trail)
    assert isinstance(port, SecurityStore)
    with psycopg.connect(port.dsn) as conn:  # the security role may read the trail
        return verify_audit(conn)


def identity(doc: str, **changes: Any) -> Identity:
    base = Identity(document_id=doc, identity=str(uuid.uuid4()), content_sha256=SHA,
                    classification="confidential", submitter="alice")
    return replace(base, **changes)


def draft(doc: str, event_type: str = "SecurityRecorded", **detail: Any) -> AuditDraft:
    return AuditDraft(doc, str(uuid.uuid4()), event_type, detail)


def removal(row: dict[str, Any]) -> AuditDraft:
    return AuditDraft(row["document_id"], str(uuid.uuid4()), "SecurityRecordRemoved",
                      {"removed": {k: v for k, v in row.items() if k != "document_id"}})


def note_for(doc: str, seen: list[dict[str, Any]]) -> Any:
    def note(row: dict[str, Any]) -> AuditDraft:
        seen.append(row)
        return removal({"document_id": doc, **row})
    return note


def test_an_identity_reads_back_as_recorded(records: SecurityRecords) -> None:
    doc = str(uuid.uuid4())
    written, entry = identity(doc), draft(doc, k="v")
    seq = records.record_identity(written, entry)
    found = records.identity(doc)
    assert found is not None
    recorded_at = found.pop("recorded_at")
    assert isinstance(recorded_at, datetime) and recorded_at.tzinfo is not None
    assert found == {"document_id": doc, "identity": uuid.UUID(written.identity), "content_sha256": SHA,
                     "classification": "confidential", "submitter": "alice"}
    [appended] = records.entries(doc)
    assert (appended.seq, appended.document_id, appended.event_id, appended.event_type, appended.detail) == (
        seq, doc, entry.event_id, "SecurityRecorded", {"k": "v"})
    assert seq >= 1 and records.identity(str(uuid.uuid4())) is None


def test_re_recording_replaces_the_identity_and_appends_one_entry(records: SecurityRecords) -> None:
    doc = str(uuid.uuid4())
    first = identity(doc)
    seq1 = records.record_identity(first, draft(doc))
    before = records.identity(doc)
    seq2 = records.record_identity(replace(first, classification="secret", submitter="bob"), draft(doc))
    after = records.identity(doc)
    assert before is not None and after is not None
    assert (after["classification"], after["submitter"]) == ("secret", "bob")
    assert after["recorded_at"] == before["recorded_at"]  # the first recording time is kept
    assert [e.seq for e in records.entries(doc)] == [seq1, seq2] and seq1 < seq2


def test_the_same_event_is_appended_once(records: SecurityRecords) -> None:
    """A redelivered event adds nothing and gets back the seq it was given the first time."""
    doc = str(uuid.uuid4())
    recorded, observed = draft(doc), draft(doc, "DocumentSubmitted")
    seq = records.record_identity(identity(doc), recorded)
    assert records.record_identity(identity(doc), recorded) == seq
    assert records.append(recorded) == seq
    observed_seq = records.append(observed)
    assert records.append(observed) == observed_seq
    assert [(e.seq, e.event_id) for e in records.entries(doc)] == [(seq, recorded.event_id),
                                                                    (observed_seq, observed.event_id)]


def test_the_trail_is_one_chain_in_seq_order(records: SecurityRecords) -> None:
    doc, other = str(uuid.uuid4()), str(uuid.uuid4())
    detail = {"n": 1, "f": 1.5, "at": T0, "t": ("a", None), "nested": {"ok": True}, "nul": "a\x00b"}
    seqs = [records.append(draft(d, "UploadStarted", i=i, **detail)) for i in range(3) for d in (doc, other)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6  # increasing across documents: one global trail
    entries = records.entries(doc)
    assert [e.seq for e in entries] == seqs[0::2]  # only this document's entries, in seq order
    assert [e.detail for e in entries] == [jsonable({"i": i, **detail}) for i in range(3)]  # as hashed
    assert all(hash_of(e) == e.entry_hash for e in entries)
    assert chain_problems(records) == []
    assert records.entries(str(uuid.uuid4())) == []


def test_a_batch_is_appended_in_order_each_event_once(records: SecurityRecords) -> None:
    """A consumer batch's entries at once: in the order given, chained onto the trail, an event
    already in the trail (or twice in the batch) keeping its one seq."""
    doc, other = str(uuid.uuid4()), str(uuid.uuid4())
    earlier = draft(doc, "DocumentSubmitted")
    first = records.append(earlier)
    batch = [draft(doc, "UploadStarted"), draft(other, "DocumentSubmitted"), earlier, draft(doc, "UploadCompleted")]
    seqs = records.append_all([*batch, batch[1]])
    assert seqs[2] == first and seqs[4] == seqs[1]
    new = [seqs[0], seqs[1], seqs[3]]
    assert new == sorted(new) and first < new[0] and len(set(new)) == 3
    assert [(e.seq, e.event_type) for e in records.entries(doc)] == [
        (first, "DocumentSubmitted"), (seqs[0], "UploadStarted"), (seqs[3], "UploadCompleted")]
    assert records.append_all(batch) == seqs[:4]  # redelivered: nothing new
    assert chain_problems(records) == []


def test_remove_identity_removes_it_and_extends_the_trail(records: SecurityRecords) -> None:
    doc, other = str(uuid.uuid4()), str(uuid.uuid4())
    written = identity(doc)
    seq = records.record_identity(written, draft(doc))
    records.record_identity(identity(other), draft(other))
    stored = records.identity(doc)
    assert stored is not None
    seen: list[dict[str, Any]] = []
    assert records.remove_identity(doc, note_for(doc, seen)) == 1
    assert records.identity(doc) is None and records.identity(other) is not None
    # the note is given the deleted row, its identity as text
    assert seen == [{"identity": written.identity, "content_sha256": SHA, "classification": "confidential",
                     "submitter": "alice", "recorded_at": stored["recorded_at"]}]
    entries = records.entries(doc)
    assert [e.event_type for e in entries] == ["SecurityRecorded", "SecurityRecordRemoved"]
    assert entries[0].seq == seq < entries[1].seq
    assert entries[1].detail["removed"]["identity"] == written.identity
    assert chain_problems(records) == []
    # nothing left: nothing removed, no note, nothing appended
    assert records.remove_identity(doc, note_for(doc, seen)) == 0
    assert len(seen) == 1 and records.entries(doc) == entries


def test_removing_an_unknown_document(records: SecurityRecords) -> None:
    doc = str(uuid.uuid4())
    seen: list[dict[str, Any]] = []
    assert records.remove_identity(doc, note_for(doc, seen)) == 0
    assert seen == [] and records.entries(doc) == [] and records.identity(doc) is None


def test_a_refused_identity_leaves_nothing(records: SecurityRecords) -> None:
    """record_identity is one transaction: a row the table refuses appends no entry either."""
    doc = str(uuid.uuid4())
    for bad in (identity(doc, content_sha256="XYZ"), identity(doc, identity="not-a-uuid")):
        with pytest.raises(PermanentError):
            records.record_identity(bad, draft(doc))
    taken = identity(str(uuid.uuid4()))
    records.record_identity(taken, draft(taken.document_id))
    with pytest.raises(PermanentError):  # an identity is unique across documents
        records.record_identity(identity(doc, identity=taken.identity), draft(doc))
    assert records.identity(doc) is None and records.entries(doc) == []


def test_a_failed_note_removes_nothing(records: SecurityRecords) -> None:
    """remove_identity is one transaction: the identity stays when its note cannot be written."""
    doc = str(uuid.uuid4())
    records.record_identity(identity(doc), draft(doc))

    def broken(row: dict[str, Any]) -> AuditDraft:
        raise RuntimeError("no note")

    with pytest.raises(RuntimeError, match="no note"):
        records.remove_identity(doc, broken)
    assert records.identity(doc) is not None and len(records.entries(doc)) == 1
