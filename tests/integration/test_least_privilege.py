"""Each service's PostgreSQL role reaches its own schema only; the audit trail is append-only."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from services.core.config import Settings
from services.core.saga import SERVICES

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    """The run's provisioned database; a stack that is down fails the run, it is never skipped."""
    return stack


@pytest.fixture
def connect(settings: Settings) -> Iterator:
    opened: list[psycopg.Connection] = []

    def as_service(service: str) -> psycopg.Connection:
        conn = psycopg.connect(settings.pg_dsn(*settings.service_role(service)))
        opened.append(conn)
        return conn

    yield as_service
    for conn in opened:
        conn.rollback()  # nothing a probe did is kept
        conn.close()


def refused(conn: psycopg.Connection, statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    return False


@pytest.mark.parametrize("service", SERVICES)
def test_role_owns_its_schema_and_nothing_else(connect, service: str) -> None:
    conn = connect(service)
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE TABLE {}.lp_probe (x int)").format(sql.Identifier(service)))
    for other in SERVICES:
        if other != service:
            probe = sql.SQL("CREATE TABLE {}.lp_probe (x int)").format(sql.Identifier(other)).as_string(conn)
            assert refused(conn, probe), f"{service} may create tables in schema {other}"
    assert refused(conn, "CREATE TABLE public.lp_probe (x int)")


@pytest.mark.parametrize(("service", "statement"), [
    ("relational", "SELECT * FROM security.identities"),
    ("relational", "SELECT * FROM security.audit_trail"),
    ("graph", "SELECT * FROM relational.documents"),
    ("vector", "INSERT INTO security.audit_trail (document_id, event_id, event_type, recorded_at, prev_hash, "
               "entry_hash) VALUES ('d', 'e', 't', now(), 'p', 'h')"),
    ("security", "SELECT * FROM relational.documents"),
    ("uploader", "DELETE FROM relational.documents"),
])
def test_other_services_tables_are_refused(connect, service: str, statement: str) -> None:
    assert refused(connect(service), statement)


@pytest.mark.parametrize("statement", [
    "UPDATE security.audit_trail SET detail = '{}'",
    "DELETE FROM security.audit_trail",
    "TRUNCATE security.audit_trail",
    "DROP TABLE security.audit_trail",
    "ALTER TABLE security.audit_trail DISABLE TRIGGER ALL",
    "ALTER SEQUENCE security.audit_trail_seq_seq RESTART",
])
def test_security_role_cannot_rewrite_the_audit_trail(connect, statement: str) -> None:
    assert refused(connect("security"), statement)


def test_security_role_reads_and_appends(connect) -> None:
    conn = connect("security")
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT count(*) FROM security.audit_trail")
        conn.execute("INSERT INTO security.audit_trail (document_id, event_id, event_type, recorded_at, "
                     "prev_hash, entry_hash) VALUES ('lp', gen_random_uuid()::text, 'Probe', now(), 'p', "
                     "gen_random_uuid()::text)")
        conn.execute("INSERT INTO security.identities (document_id, identity, content_sha256, classification, "
                     f"submitter) VALUES ('lp', gen_random_uuid(), '{'0' * 64}', 'x', 'y')")
        conn.execute("DELETE FROM security.identities WHERE document_id = 'lp'")


def test_relational_role_upserts_and_deletes(connect) -> None:
    conn = connect("relational")
    upsert = ("INSERT INTO relational.documents (document_id, saga_id, content_type, source_uri, size_bytes, "
              "page_count, chunk_count, content_sha256, security_level, status, submitted_at) "
              f"VALUES ('lp', 's', 'text/plain', 'file:///x', 1, 0, %s, '{'0' * 64}', 'internal', 'Completed', now()) "
              "ON CONFLICT (document_id) DO UPDATE SET chunk_count = EXCLUDED.chunk_count")
    with conn.transaction(force_rollback=True):
        conn.execute(upsert, (1,))
        conn.execute(upsert, (2,))  # the same row again: updated, not duplicated
        rows = conn.execute("SELECT chunk_count FROM relational.documents WHERE document_id = 'lp'").fetchall()
        deleted = conn.execute("DELETE FROM relational.documents WHERE document_id = 'lp'").rowcount
    assert rows == [(2,)] and deleted == 1


def test_a_database_serves_one_topic_prefix(settings: Settings, connect) -> None:
    """Services of another prefix on this database would relay (steal) its events: refused."""
    from services.core import topics
    from services.core.pg import DatabaseClaimed, check_claim
    from services.operator.provision import provision

    for service in SERVICES:
        check_claim(settings, service, topics.PREFIX)  # this run's prefix: accepted
    with pytest.raises(DatabaseClaimed, match=f"belongs to topic prefix '{topics.PREFIX}', not 'elsewhere'"):
        check_claim(settings, "graph", prefix="elsewhere")
    with pytest.raises(DatabaseClaimed):
        provision(settings, prefix="elsewhere")
    assert refused(connect("uploader"), "UPDATE public.uds3_deployment SET topic_prefix = 'elsewhere'")
    check_claim(settings, "uploader", topics.PREFIX)  # unchanged by the attempts
