"""PostgreSQL I/O of the relational service: the `relational.documents` table.

Driver errors become TransientError / PermanentError in `_translated`, the one boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from services.core.errors import PermanentError, TransientError
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


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
        raise TransientError(f"relational store, {what}: {e}") from e
    except psycopg.Error as e:
        raise PermanentError(f"relational store, {what}: {type(e).__name__}: {e}") from e


class DocumentsTable:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: ConnectionPool | None = None

    def open(self) -> None:
        if self._pool is None:
            # wait=False: an unreachable database surfaces as a retriable error on first use
            self._pool = ConnectionPool(self.dsn, min_size=1, max_size=2, timeout=10, open=False,
                                        check=ConnectionPool.check_connection, name="relational")
            self._pool.open(wait=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            raise PermanentError("relational store used before open()")
        with _translated(what), self._pool.connection() as conn, conn.transaction():
            yield conn

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
