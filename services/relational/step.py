"""Step 8, relational insert (and step 9, finalize): the document's metadata row.

Forward: build the row from the events the service remembers (pure, `row.py`), upsert it
by document id, emit RelationalRecorded: this is the saga's last step, so the runtime then
emits DocumentCompleted. Undo: delete the row.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.core.config import Settings
from services.core.events import (
    RELATIONAL_RECORDED,
    SECURITY_RECORDED,
    UPLOAD_COMPLETED,
    VECTORS_INDEXED,
    Event,
)
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.relational.adapters import Documents, DocumentsTable
from services.relational.row import TABLE, document_row


class RelationalStep(Step):
    service = "relational"

    def __init__(self, table: Documents) -> None:
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> RelationalStep:
        return cls(DocumentsTable(settings.pg_dsn(*settings.service_role(cls.service))))

    def start(self) -> None:
        self.table.open()

    def stop(self) -> None:
        self.table.close()

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        now = datetime.now(UTC)
        row = document_row(log.submission(), log.last_received(UPLOAD_COMPLETED),
                           log.last_received(SECURITY_RECORDED), log.last_received(VECTORS_INDEXED), now)
        self.table.upsert(row)
        log.emit_event(event.follow(RELATIONAL_RECORDED, self.service, table=TABLE, row_id=row.document_id))

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        removed = self.table.delete(log.document_id)
        return Undone(f"{removed} row deleted from {TABLE}", removed)
