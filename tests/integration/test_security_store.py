"""The security step against the real PostgreSQL: identity, audit trail, undo, tampering, the lock.

What any adapter of the port must do (upserts, seq order, one entry per event, removal) is in
test_security_contract.py, against this adapter and the in-memory one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from services.core.config import Settings
from services.core.events import DOCUMENT_SUBMITTED, INTEGRITY_VERIFIED, SECURITY_RECORDED, Event
from services.core.step import Context
from services.core.steplog import StepLog, message_of
from services.security.audit import verify_audit
from services.security.step import RECORD_REMOVED, SecurityStep, identity_of

pytestmark = pytest.mark.stack
SHA = "5e" * 32


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    """The run's provisioned database; a stack that is down fails the run, it is never skipped."""
    return stack


@pytest.fixture(scope="module")
def step(settings: Settings) -> Iterator[SecurityStep]:
    s = SecurityStep.from_settings(settings)
    s.start()
    yield s
    s.stop()
    s.stop()  # idempotent


@pytest.fixture
def admin(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.pg_dsn()) as conn:
        yield conn


def submitted(doc: str) -> Event:
    return Event(DOCUMENT_SUBMITTED, doc, str(uuid.uuid4()), producer="client", payload={
        "source_uri": f"/data/{doc}.pdf", "size_bytes": 3, "content_type": "application/pdf",
        "title": "Audit test", "security_level": "confidential", "submitter": "alice",
        "references": [], "metadata": {}})


def run(step: SecurityStep, settings: Settings, sub: Event) -> tuple[Event, StepLog]:
    """One forward run from a fresh log, as after a crash before the log was recorded."""
    doc = sub.document_id
    verified = sub.follow(INTEGRITY_VERIFIED, "verifier", sha256=SHA, chunks_checked=1, size_bytes=3)
    log = StepLog("security", doc)
    log.receive(message_of(sub))
    log.receive(message_of(verified))
    step.handle(verified, log, Context(settings))
    out = log.last_emitted(SECURITY_RECORDED)
    assert out is not None
    return out, log


def test_identity_and_audit_entry_land(step: SecurityStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    out, _ = run(step, settings, submitted(doc))
    identity = step.store.identity(doc)
    assert identity is not None
    assert (str(identity["identity"]), identity["content_sha256"], identity["classification"],
            identity["submitter"]) == (identity_of(doc), SHA, "confidential", "alice")
    assert dict(out.payload) | {"audit_entry": 0} == {"identity": identity_of(doc), "content_sha256": SHA,
                                                       "classification": "confidential", "submitter": "alice",
                                                       "audit_entry": 0}
    [entry] = step.store.entries(doc)
    assert (entry.seq, entry.event_id, entry.event_type) == (out.payload["audit_entry"], out.event_id,
                                                             SECURITY_RECORDED)


def test_handling_twice_changes_nothing(step: SecurityStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    sub = submitted(doc)
    first, _ = run(step, settings, sub)
    second, _ = run(step, settings, sub)
    assert (first.event_id, first.payload["audit_entry"]) == (second.event_id, second.payload["audit_entry"])


def test_observe_appends_each_event_once(step: SecurityStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    sub = submitted(doc)
    out, _ = run(step, settings, sub)
    ctx = Context(settings)
    for event in (sub, sub, out, out):  # redeliveries; SecurityRecorded is already in the trail
        step.observe(event, ctx)
    entries = step.store.entries(doc)
    assert [e.event_type for e in entries] == [SECURITY_RECORDED, DOCUMENT_SUBMITTED]
    assert entries[1].detail["payload"]["title"] == "Audit test"


def test_undo_deletes_the_record_and_keeps_the_trail(step: SecurityStep, settings: Settings) -> None:
    doc = str(uuid.uuid4())
    _, log = run(step, settings, submitted(doc))
    undone = step.undo(log, Context(settings))
    assert undone.removed == 1
    assert step.store.identity(doc) is None
    entries = step.store.entries(doc)
    assert [e.event_type for e in entries] == [SECURITY_RECORDED, RECORD_REMOVED]
    assert entries[1].detail["removed"]["identity"] == identity_of(doc)
    assert step.undo(log, Context(settings)).removed == 0  # idempotent: nothing left


def problems_at(conn: psycopg.Connection) -> set[tuple[int, str]]:
    return {(p.seq, p.kind) for p in verify_audit(conn)}


def test_tampered_detail_is_reported_at_its_seq(step: SecurityStep, settings: Settings,
                                                 admin: psycopg.Connection) -> None:
    doc = str(uuid.uuid4())
    out, _ = run(step, settings, submitted(doc))
    seq = out.payload["audit_entry"]
    before = problems_at(admin)
    admin.commit()
    # as superuser, inside a transaction that is rolled back: the shared trail stays intact
    admin.execute("UPDATE security.audit_trail SET detail = '{\"forged\": true}' WHERE seq = %s", (seq,))
    assert problems_at(admin) - before == {(seq, "edited")}
    admin.rollback()
    assert problems_at(admin) == before


def test_deleted_row_is_reported(step: SecurityStep, settings: Settings, admin: psycopg.Connection) -> None:
    doc = str(uuid.uuid4())
    sub = submitted(doc)
    out, _ = run(step, settings, sub)
    step.observe(sub, Context(settings))  # a second entry after the first
    seq = out.payload["audit_entry"]
    before = problems_at(admin)
    admin.commit()
    admin.execute("DELETE FROM security.audit_trail WHERE seq = %s", (seq,))
    following = admin.execute("SELECT min(seq) FROM security.audit_trail WHERE seq > %s", (seq,)).fetchone()
    assert following is not None and following[0] is not None
    found = problems_at(admin) - before
    assert found == {(following[0], "missing")}
    admin.rollback()


def test_concurrent_appends_keep_one_chain(step: SecurityStep, settings: Settings,
                                           admin: psycopg.Connection) -> None:
    doc = str(uuid.uuid4())
    sub = submitted(doc)
    before = problems_at(admin)
    admin.commit()
    ctx = Context(settings)
    events = [sub.follow("UploadStarted", "uploader", seq=i) for i in range(24)]

    def append(part: list[Event]) -> None:
        for e in part:
            step.observe(e, ctx)

    threads = [threading.Thread(target=append, args=(events[i::4] * 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(step.store.entries(doc)) == 24
    assert problems_at(admin) - before == set()
