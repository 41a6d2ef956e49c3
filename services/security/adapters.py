"""The security service's port, `SecurityRecords` (identity records and the hash-chained audit
trail), and its adapters: `SecurityStore` on PostgreSQL (`security.identities`,
`security.audit_trail`) and `InMemorySecurityRecords` for tests. One contract test runs the same
assertions against both (`tests/integration/test_security_contract.py`).

Driver errors become TransientError / PermanentError in `PgStore._transaction`, the one boundary.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from services.core.errors import PermanentError
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


class SecurityRecords(Protocol):
    """One identity per document, upserted by document id (its first `recorded_at` kept), and one
    global append-only audit trail: seq from 1, increasing in append order, each entry hashed
    onto the one before it (`audit.chain_hash`), at most one entry per event id."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def record_identity(self, identity: Identity, draft: AuditDraft) -> int: ...
    def append(self, draft: AuditDraft) -> int: ...
    def append_all(self, drafts: list[AuditDraft]) -> list[int]: ...  # in order, atomically
    def remove_identity(self, document_id: str, note: Callable[[dict[str, Any]], AuditDraft]) -> int: ...
    def identity(self, document_id: str) -> dict[str, Any] | None: ...
    def entries(self, document_id: str) -> list[Entry]: ...


_SHA256 = re.compile(r"[0-9a-f]{64}")


class InMemorySecurityRecords:
    """The same contract in a dict and a list (tests of the step's own logic).

    `trail` is the whole chain, every document's entries in seq order, as `check_chain` takes it.
    Each write checks what it can first and mutates last, so a refused one leaves nothing behind,
    like the real adapter's transaction.
    """

    def __init__(self) -> None:
        self.identities: dict[str, dict[str, Any]] = {}
        self.trail: list[Entry] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def record_identity(self, identity: Identity, draft: AuditDraft) -> int:
        row = self._identity_row(identity)
        seq = self._append(draft)
        self.identities[identity.document_id] = row
        return seq

    def append(self, draft: AuditDraft) -> int:
        return self._append(draft)

    def append_all(self, drafts: list[AuditDraft]) -> list[int]:
        return [self._append(draft) for draft in drafts]

    def remove_identity(self, document_id: str, note: Callable[[dict[str, Any]], AuditDraft]) -> int:
        row = self.identities.get(document_id)
        if row is None:
            return 0
        # the real adapter's DELETE ... RETURNING casts identity to text
        removed = {"identity": str(row["identity"])} | {
            k: row[k] for k in ("content_sha256", "classification", "submitter", "recorded_at")}
        self._append(note(removed))
        del self.identities[document_id]
        return 1

    def identity(self, document_id: str) -> dict[str, Any] | None:
        row = self.identities.get(document_id)
        return dict(row) if row is not None else None

    def entries(self, document_id: str) -> list[Entry]:
        return [e for e in self.trail if e.document_id == document_id]

    def _identity_row(self, identity: Identity) -> dict[str, Any]:
        """The row the upsert leaves, refused as the table's constraints refuse it."""
        try:
            ident = uuid.UUID(identity.identity)  # the column is a uuid: it reads back as one
        except ValueError as e:
            raise PermanentError(f"security store, record identity: not a uuid: {identity.identity!r}") from e
        if not _SHA256.fullmatch(identity.content_sha256):
            raise PermanentError(f"security store, record identity: bad content_sha256 {identity.content_sha256!r}")
        if any(r["identity"] == ident for d, r in self.identities.items() if d != identity.document_id):
            raise PermanentError(f"security store, record identity: identity {ident} is another document's")
        before = self.identities.get(identity.document_id)
        # recorded_at is a column default: the ON CONFLICT update leaves it as first recorded
        recorded_at = before["recorded_at"] if before is not None else datetime.now(UTC)
        return {"document_id": identity.document_id, "identity": ident, "content_sha256": identity.content_sha256,
                "classification": identity.classification, "submitter": identity.submitter,
                "recorded_at": recorded_at}

    def _append(self, draft: AuditDraft) -> int:
        """As `_append` below: one global chain; an event already in the trail returns its seq."""
        for entry in self.trail:
            if entry.event_id == draft.event_id:
                return entry.seq
        prev_hash = self.trail[-1].entry_hash if self.trail else GENESIS
        seq = self.trail[-1].seq + 1 if self.trail else 1  # a bigserial starts at 1
        detail = jsonable(draft.detail)
        at = datetime.now(UTC)
        entry_hash = chain_hash(prev_hash, seq, draft.document_id, draft.event_id, draft.event_type, detail, at)
        self.trail.append(Entry(seq, draft.document_id, draft.event_id, draft.event_type, detail, at,
                                prev_hash, entry_hash))
        return seq


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
        return self.append_all([draft])[0]

    def append_all(self, drafts: list[AuditDraft]) -> list[int]:
        with self._transaction("append audit entries") as conn:
            return _append_all(conn, drafts)

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
    return _append_all(conn, [draft])[0]


def _append_all(conn: psycopg.Connection[Any], drafts: list[AuditDraft]) -> list[int]:
    """Appends the entries in order, but none whose event is already in the trail; returns each
    draft's seq. One lock, one look-up and one round of inserts for a whole consumer batch."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
    seq_of: dict[str, int] = dict(conn.execute(
        "SELECT event_id, seq FROM security.audit_trail WHERE event_id = ANY(%s)",
        ([d.event_id for d in drafts],)).fetchall())
    new: dict[str, AuditDraft] = {}  # an event twice in one batch is appended once
    for draft in drafts:
        if draft.event_id not in seq_of:
            new.setdefault(draft.event_id, draft)
    if not new:
        return [seq_of[d.event_id] for d in drafts]
    last = conn.execute("SELECT entry_hash FROM security.audit_trail ORDER BY seq DESC LIMIT 1").fetchone()
    prev_hash = last[0] if last else GENESIS
    # seqs are drawn under the lock, so seq order is append order (and is part of the hash)
    seqs = sorted(int(r[0]) for r in conn.execute(
        "SELECT nextval(pg_get_serial_sequence('security.audit_trail', 'seq')) FROM generate_series(1, %s)",
        (len(new),)).fetchall())
    rows = []
    at = datetime.now(UTC)
    for seq, draft in zip(seqs, new.values(), strict=True):
        detail = jsonable(draft.detail)
        entry_hash = chain_hash(prev_hash, seq, draft.document_id, draft.event_id, draft.event_type, detail, at)
        rows.append((seq, draft.document_id, draft.event_id, draft.event_type, Jsonb(detail), at, prev_hash,
                     entry_hash))
        seq_of[draft.event_id], prev_hash = seq, entry_hash
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO security.audit_trail (seq, document_id, event_id, event_type, detail, recorded_at, "
            "prev_hash, entry_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", rows)
    return [seq_of[d.event_id] for d in drafts]
