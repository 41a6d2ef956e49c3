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

from services.core.config import Settings
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


class DatabaseClaimed(RuntimeError):
    """The database serves the services of another topic prefix."""


def check_claim(settings: Settings, service: str, prefix: str) -> None:
    """A service's check at start: this database was provisioned for this topic prefix."""
    with psycopg.connect(settings.pg_dsn(*settings.service_role(service))) as conn:
        check_claim_on(conn, settings, prefix)


def check_claim_on(conn: psycopg.Connection, settings: Settings, prefix: str) -> None:
    try:
        row = conn.execute("SELECT topic_prefix FROM public.uds3_deployment").fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None or row[0] != prefix:
        owner = f"topic prefix {row[0]!r}" if row else "no deployment (not provisioned)"
        raise DatabaseClaimed(
            f"database {settings.pg_database!r} belongs to {owner}, not {prefix!r}: give each topic prefix "
            "its own database (UDS3_PG_DATABASE), or run `python -m services.operator.provision`"
        )
