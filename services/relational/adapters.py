"""The relational service's port, `Documents`, and its adapters: `DocumentsTable` on
PostgreSQL (`relational.documents`) and `InMemoryDocuments` for tests. One contract test runs
the same assertions against both (`tests/integration/test_documents_contract.py`).

Driver errors become TransientError / PermanentError in `PgStore._transaction`, the one boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from services.core.pg import PgStore
from services.relational.row import DocumentRow

_COLUMNS = tuple(DocumentRow.__dataclass_fields__)
# completed_at keeps the first completion: a repeated handle must not move it.
_UPSERT = sql.SQL(
    "INSERT INTO relational.documents ({cols}, updated_at) VALUES ({vals}, now()) "
    "ON CONFLICT (document_id) DO UPDATE SET {sets}, updated_at = now(), "
    "completed_at = COALESCE(relational.documents.completed_at, EXCLUDED.completed_at)"
).format(
    cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
    vals=sql.SQL(", ").join(sql.Placeholder(c) for c in _COLUMNS),
    sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                            for c in _COLUMNS if c not in ("document_id", "completed_at")),
)


class Documents(Protocol):
    """One row per document, upserted by document id; the first completion time is kept."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def upsert(self, row: DocumentRow) -> None: ...
    def delete(self, document_id: str) -> int: ...
    def get(self, document_id: str) -> dict[str, Any] | None: ...


class InMemoryDocuments:
    """The same contract in a dict (tests of the step's own logic)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def upsert(self, row: DocumentRow) -> None:
        values = row.columns()
        before = self.rows.get(row.document_id)
        if before is not None and before["completed_at"] is not None:
            values["completed_at"] = before["completed_at"]
        self.rows[row.document_id] = {**values, "metadata": dict(row.metadata), "updated_at": datetime.now(UTC)}

    def delete(self, document_id: str) -> int:
        return 1 if self.rows.pop(document_id, None) is not None else 0

    def get(self, document_id: str) -> dict[str, Any] | None:
        row = self.rows.get(document_id)
        return dict(row) if row is not None else None


class DocumentsTable(PgStore):
    name = "relational"

    def upsert(self, row: DocumentRow) -> None:
        values = row.columns()
        values["metadata"] = Jsonb(dict(row.metadata))
        with self._transaction("upsert document") as conn:
            conn.execute(_UPSERT, values)

    def delete(self, document_id: str) -> int:
        with self._transaction("delete document") as conn:
            return conn.execute("DELETE FROM relational.documents WHERE document_id = %s",
                                (document_id,)).rowcount

    def get(self, document_id: str) -> dict[str, Any] | None:
        with self._transaction("read document") as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM relational.documents WHERE document_id = %s",
                               (document_id,)).fetchone()
