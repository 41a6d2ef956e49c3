"""Step 5, security and identity: a stable identity record, and the audit trail of the saga.

Forward: upsert the document's identity (uuid5 of its id, verified content hash,
classification = requested security level, submitter) and append its audit entry, in one
transaction; emit SecurityRecorded naming that entry. The same service also observes
every non-progress saga event of every document and appends it to the audit trail.
Undo: delete the identity record; the trail is never undone, it gains an entry saying so.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from services.core import messages
from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import NAMESPACE, PROGRESS_EVENTS, SECURITY_RECORDED, Event
from services.core.saga import ALL_EVENT_TYPES
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.core.validation import DEFAULT_SECURITY_LEVEL
from services.security.adapters import AuditDraft, Identity, SecurityRecords, SecurityStore
from services.security.audit import timestamp

RECORD_REMOVED = "SecurityRecordRemoved"  # audit entry type written by undo (not a saga event)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def identity_of(document_id: str) -> str:
    """The document's identity: derived, so every replay and redelivery yields the same one."""
    return str(uuid.uuid5(NAMESPACE, f"identity/{document_id}"))


def identity_record(submission: Event, verified: Event) -> Identity:
    """The identity record from the submission and the verifier's result (pure)."""
    sha = messages.IntegrityVerified.of(verified).sha256.lower()
    if not _SHA256.match(sha):
        raise PermanentError(f"IntegrityVerified carries no valid sha256: {sha!r}")
    sub = messages.DocumentSubmitted.of(submission)
    return Identity(
        document_id=submission.document_id,
        identity=identity_of(submission.document_id),
        content_sha256=sha,
        classification=sub.security_level or DEFAULT_SECURITY_LEVEL,
        submitter=sub.submitter,
    )


def audit_draft(event: Event) -> AuditDraft:
    """The audit entry of a saga event, keyed by its event id (pure)."""
    detail: dict[str, Any] = {
        "saga_id": event.saga_id,
        "producer": event.producer,
        "causation_id": event.causation_id,
        "occurred_at": timestamp(event.occurred_at),
        "payload": dict(event.payload),
    }
    return AuditDraft(event.document_id, event.event_id, event.event_type, detail)


def removal_note(document_id: str, removed: dict[str, Any]) -> AuditDraft:
    """The entry saying the identity record was deleted; its id is derived from what was deleted."""
    stamp = timestamp(removed["recorded_at"])
    name = f"audit/{RECORD_REMOVED}/{document_id}/{removed['identity']}/{stamp}"
    event_id = str(uuid.uuid5(NAMESPACE, name))
    return AuditDraft(document_id, event_id, RECORD_REMOVED, {"removed": removed})


class SecurityStep(Step):
    service = "security"
    # The audit trail covers every saga event of a document except progress ticks.
    observes = frozenset(t for t in ALL_EVENT_TYPES if t not in PROGRESS_EVENTS)

    def __init__(self, store: SecurityRecords) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityStep:
        return cls(SecurityStore(settings.pg_dsn(*settings.service_role(cls.service))))

    def start(self) -> None:
        self.store.open()

    def stop(self) -> None:
        self.store.close()

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        submission = log.submission()
        if submission is None:
            raise PermanentError("no DocumentSubmitted received before IntegrityVerified")
        record = identity_record(submission, event)
        out = event.follow(SECURITY_RECORDED, self.service, identity=record.identity,
                           content_sha256=record.content_sha256, classification=record.classification,
                           submitter=record.submitter)
        # The entry is keyed by the outgoing event's id (independent of its payload), so when
        # SecurityRecorded comes back from Kafka, observing it adds nothing.
        seq = self.store.record_identity(record, audit_draft(out))
        log.emit_event(out.with_payload(audit_entry=seq))

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        doc = log.document_id
        removed = self.store.remove_identity(doc, lambda row: removal_note(doc, row))
        if removed:
            return Undone("security record deleted; audit trail notes the removal", removed)
        return Undone("no security record to delete", 0)

    def observe(self, event: Event, ctx: Context) -> None:
        """Appends `event` to the audit trail (a redelivered event adds nothing: UNIQUE event_id)."""
        self.store.append(audit_draft(event))

    def observe_all(self, events: list[Event], ctx: Context) -> None:
        """A consumer batch's events appended in one transaction."""
        self.store.append_all([audit_draft(e) for e in events])
