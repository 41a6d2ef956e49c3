"""PostgreSQL I/O of the security service: identity records and the audit trail.

Driver errors become TransientError / PermanentError in `PgStore._transaction`, the one boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from services.core.pg import PgStore
from services.security.audit import GENESIS, Entry, chain_hash, jsonable

# Every append takes this transaction-level lock: the chain needs one writer at a time.
AUDIT_LOCK = 0x0DD5_A0D1  # arbitrary, fixed: "uds3 audit"


@dataclass(frozen=True)
class Identity:
    document_id: str
    identity: str
    content_sha256: str
    classification: str
    submitter: str


@dataclass(frozen=True)
class AuditDraft:
    """An entry to append; seq, time and hashes are assigned under the lock."""

    document_id: str
    event_id: str
    event_type: str
    detail: dict[str, Any]


class SecurityStore(PgStore):
    name = "security"

    # --- forward work ------------------------------------------------------------------------
    def record_identity(self, identity: Identity, draft: AuditDraft) -> int:
        """Upserts the identity and appends its audit entry atomically; returns the entry's seq."""
        with self._transaction("record identity") as conn:
            conn.execute(
                "INSERT INTO security.identities (document_id, identity, content_sha256, classification, "
                "submitter) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (document_id) DO UPDATE SET "
                "identity = EXCLUDED.identity, content_sha256 = EXCLUDED.content_sha256, "
                "classification = EXCLUDED.classification, submitter = EXCLUDED.submitter",
                (identity.document_id, identity.identity, identity.content_sha256,
                 identity.classification, identity.submitter))
            return _append(conn, draft)

    def append(self, draft: AuditDraft) -> int:
        with self._transaction("append audit entry") as conn:
            return _append(conn, draft)

    # --- compensation ------------------------------------------------------------------------
    def remove_identity(self, document_id: str, note: Callable[[dict[str, Any]], AuditDraft]) -> int:
        """Deletes the identity and, if there was one, appends `note(deleted row)` atomically."""
        with self._transaction("remove identity") as conn:
            row = conn.execute(
                "DELETE FROM security.identities WHERE document_id = %s RETURNING identity::text, "
                "content_sha256, classification, submitter, recorded_at", (document_id,)).fetchone()
            if row is None:
                return 0
            keys = ("identity", "content_sha256", "classification", "submitter", "recorded_at")
            _append(conn, note(dict(zip(keys, row, strict=True))))
            return 1

    # --- queries -----------------------------------------------------------------------------
    def identity(self, document_id: str) -> dict[str, Any] | None:
        with self._transaction("read identity") as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM security.identities WHERE document_id = %s",
                               (document_id,)).fetchone()

    def entries(self, document_id: str) -> list[Entry]:
        with self._transaction("read audit trail") as conn:
            rows = conn.execute(
                "SELECT seq, document_id, event_id, event_type, detail, recorded_at, prev_hash, entry_hash "
                "FROM security.audit_trail WHERE document_id = %s ORDER BY seq", (document_id,)).fetchall()
            return [Entry(*row) for row in rows]


def _append(conn: psycopg.Connection[Any], draft: AuditDraft) -> int:
    """Appends one entry unless its event is already in the trail; returns its seq."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
    found = conn.execute("SELECT seq FROM security.audit_trail WHERE event_id = %s",
                         (draft.event_id,)).fetchone()
    if found:
        return int(found[0])
    last = conn.execute("SELECT entry_hash FROM security.audit_trail ORDER BY seq DESC LIMIT 1").fetchone()
    prev_hash = last[0] if last else GENESIS
    # seq is drawn under the lock, so seq order is append order (and is part of the hash)
    seq_row = conn.execute("SELECT nextval(pg_get_serial_sequence('security.audit_trail', 'seq'))").fetchone()
    assert seq_row is not None
    seq = int(seq_row[0])
    detail = jsonable(draft.detail)
    at = datetime.now(UTC)
    entry_hash = chain_hash(prev_hash, seq, draft.document_id, draft.event_id, draft.event_type, detail, at)
    conn.execute(
        "INSERT INTO security.audit_trail (seq, document_id, event_id, event_type, detail, recorded_at, "
        "prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (seq, draft.document_id, draft.event_id, draft.event_type, Jsonb(detail), at, prev_hash, entry_hash))
    return seq
