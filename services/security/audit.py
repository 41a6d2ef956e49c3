"""The audit trail's hash chain: how an entry is hashed, and how a chain is checked.

Every entry stores the hash of the entry before it (`prev_hash`) and its own hash over
`prev_hash` plus its canonical content (seq included), so an edited row no longer matches
its hash, and a deleted, inserted or moved row breaks the link of the row after it.
Deleting the newest rows is the one change a chain alone cannot show; compare the
newest `seq`/`entry_hash` with a copy kept elsewhere (e.g. the SecurityRecorded events).

`check_chain` is pure; `verify_audit` feeds it the rows of a PostgreSQL table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

GENESIS = "0" * 64
AUDIT_TABLE = "security.audit_trail"


def jsonable(value: Any) -> Any:
    """`value` as JSON that survives a jsonb round trip unchanged (so hashes stay stable).

    jsonb rewrites floats (1e20 comes back as an integer), so floats and anything else
    that is not plain JSON are kept as strings.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value.replace("\x00", "") if isinstance(value, str) else value  # jsonb refuses NUL
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return timestamp(value)
    return str(value)


def timestamp(at: datetime) -> str:
    """One text form of an instant, whatever time zone the database session returns."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Entry:
    """One row of the audit trail."""

    seq: int
    document_id: str
    event_id: str
    event_type: str
    detail: Mapping[str, Any]
    recorded_at: datetime
    prev_hash: str
    entry_hash: str


def canonical(seq: int, document_id: str, event_id: str, event_type: str,
              detail: Mapping[str, Any], recorded_at: datetime) -> str:
    content = {
        "seq": seq, "document_id": document_id, "event_id": event_id, "event_type": event_type,
        "detail": jsonable(detail), "recorded_at": timestamp(recorded_at),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, seq: int, document_id: str, event_id: str, event_type: str,
               detail: Mapping[str, Any], recorded_at: datetime) -> str:
    text = prev_hash + canonical(seq, document_id, event_id, event_type, detail, recorded_at)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_of(entry: Entry) -> str:
    """What `entry.entry_hash` must be, given its content and its `prev_hash`."""
    return chain_hash(entry.prev_hash, entry.seq, entry.document_id, entry.event_id,
                      entry.event_type, entry.detail, entry.recorded_at)


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks: `kind` is "edited", "missing" or "relinked"."""

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.message}"


def check_chain(entries: Iterable[Entry]) -> list[Problem]:
    """Every break in a chain given in `seq` order (pure; streams, keeps one row back).

    * edited: the row's content (or seq) no longer matches its own hash;
    * missing: its prev_hash is not the previous row's hash and seq numbers are skipped
      (rows deleted; a skipped seq alone is harmless: a rolled-back append);
    * relinked: its prev_hash is not the previous row's hash, no seq skipped (rows
      replaced, reordered, or a row re-hashed after an edit).
    """
    problems: list[Problem] = []
    prev: Entry | None = None
    for entry in entries:
        if hash_of(entry) != entry.entry_hash:
            problems.append(Problem(entry.seq, "edited", "content does not match its entry_hash"))
        expected = prev.entry_hash if prev else GENESIS
        if entry.prev_hash != expected:
            after = f"seq {prev.seq}" if prev else "the start of the trail"
            first_missing = prev.seq + 1 if prev else 1
            if entry.seq > first_missing:
                problems.append(Problem(entry.seq, "missing", f"entries deleted between {after} and "
                                        f"seq {entry.seq} (seq {first_missing}..{entry.seq - 1} absent)"))
            else:
                problems.append(Problem(entry.seq, "relinked",
                                        f"prev_hash does not match the entry_hash of {after}"))
        prev = entry
    return problems


def verify_audit(conn: psycopg.Connection[Any], table: str = AUDIT_TABLE) -> list[Problem]:
    """Checks the whole trail in `table` (schema.table) on `conn`; [] when intact.

    Reads with a server-side cursor, so memory stays flat however long the trail is.
    Runs in the connection's current transaction when there is one (so a caller can look
    at uncommitted changes), otherwise in a transaction of its own.
    """
    schema, _, name = table.partition(".")
    query = sql.SQL("SELECT seq, document_id, event_id, event_type, detail, recorded_at, prev_hash, "
                    "entry_hash FROM {}.{} ORDER BY seq").format(sql.Identifier(schema), sql.Identifier(name))
    with conn.transaction(), conn.cursor(name="uds3_audit_verify") as cur:
        cur.itersize = 2000
        cur.execute(query)
        return check_chain(Entry(*row) for row in cur)
