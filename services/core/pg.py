"""The PostgreSQL adapter base of the services' own tables: one pool, one error boundary.

Driver errors become TransientError (the database is unreachable or restarting: retry)
or PermanentError (a constraint or a statement failed: retrying cannot help) here only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from services.core.errors import PermanentError, TransientError


class PgStore:
    """`__init__` does no I/O; `open()` and `close()` are idempotent."""

    name = "store"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: ConnectionPool | None = None

    def open(self) -> None:
        if self._pool is None:
            # wait=False: an unreachable database surfaces as a retriable error on first use
            self._pool = ConnectionPool(self.dsn, min_size=1, max_size=2, timeout=10, open=False,
                                        check=ConnectionPool.check_connection, name=self.name)
            self._pool.open(wait=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            raise PermanentError(f"{self.name} store used before open()")
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
            raise TransientError(f"{self.name} store, {what}: {e}") from e
        except psycopg.Error as e:
            raise PermanentError(f"{self.name} store, {what}: {type(e).__name__}: {e}") from e
