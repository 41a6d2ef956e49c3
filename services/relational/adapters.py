"""PostgreSQL I/O of the relational service: the `relational.documents` table.

Driver errors become TransientError / PermanentError in `PgStore._transaction`, the one boundary.
"""

from __future__ import annotations

from typing import Any

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
