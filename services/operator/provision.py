"""Creates what the services need in PostgreSQL: one role and one schema per service.

Run once by the admin role (`python -m services.operator.provision`, done by `make up`).
Each service connects with its own role, which owns only its own schema (its event store
tables and its own tables): least privilege. Each service's SQL migrations live in
`services/<name>/migrations/*.sql` and are applied here in file-name order, once each.

A database belongs to one deployment, named by its topic prefix. Each service's event store
is its outbox and its relay publishes everything unpublished in its schema to *its* topics:
services of two prefixes on one database would publish (and so steal) each other's events.
`provision` claims the database for a prefix and every service checks the claim at start.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from services.core import topics
from services.core.config import REPO_ROOT, Settings
from services.core.pg import check_claim_on
from services.core.saga import SERVICES


def provision(settings: Settings | None = None, prefix: str = topics.PREFIX) -> None:
    settings = settings or Settings()
    with psycopg.connect(settings.pg_dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.uds3_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS public.uds3_deployment (topic_prefix text PRIMARY KEY)")
        conn.execute(
            "INSERT INTO public.uds3_deployment SELECT %s WHERE NOT EXISTS (SELECT FROM public.uds3_deployment)",
            (prefix,),
        )
        check_claim_on(conn, settings, prefix)
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for service in SERVICES:
            role, password = settings.service_role(service)
            # Roles are cluster-wide and created once (to rotate a password: ALTER ROLE by hand).
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
                )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    sql.Identifier(service), sql.Identifier(role)
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(settings.pg_database), sql.Identifier(role)
                )
            )
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON public.uds3_deployment TO {}").format(sql.Identifier(role)))
        for service in SERVICES:
            _migrate(conn, service, settings)
    # The object store's buckets (folders need nothing).
    if settings.chunk_store_url:
        from services.core.s3chunks import S3Chunks

        S3Chunks.of(settings).ensure_bucket()
    if settings.inbox_url:
        from services.core.inbox import S3Inbox

        S3Inbox.of(settings).ensure_bucket()


def create_database(settings: Settings, prefix: str = topics.PREFIX) -> None:
    """A new database for one deployment (a test or bench run), provisioned for its prefix."""
    with psycopg.connect(_maintenance_dsn(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    provision(settings, prefix)


def drop_database(settings: Settings) -> None:
    if settings.pg_database == "uds3":
        raise ValueError("refusing to drop the default database 'uds3'")
    with psycopg.connect(_maintenance_dsn(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(settings.pg_database)))


def drop_shared_stores(settings: Settings) -> None:
    """Deletes a finished run's data from the stores deployments share: its nodes in the Neo4j
    database and its collection on the Milvus server (its deployment's only)."""
    from services.graph.adapters import GraphStore
    from services.vector.adapters import VectorIndex

    if settings.deployment == "uds3":
        raise ValueError("refusing to drop the default deployment's stores")
    graph = GraphStore.of(settings)
    graph.open()
    try:
        graph.drop_deployment()
    finally:
        graph.close()
    vectors = VectorIndex.of(settings).open()
    try:
        vectors.drop()
    finally:
        vectors.close()


def _maintenance_dsn(settings: Settings) -> str:
    return settings.pg_dsn().rsplit("/", 1)[0] + "/postgres"


def _migrate(conn: psycopg.Connection, service: str, settings: Settings) -> None:
    folder = REPO_ROOT / "services" / service / "migrations"
    role, _ = settings.service_role(service)
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        name = f"{service}/{path.name}"
        if conn.execute("SELECT 1 FROM public.uds3_migrations WHERE name = %s", (name,)).fetchone():
            continue
        with conn.transaction():
            # Migrations may refer to the service's role and schema by these placeholders.
            conn.execute(_render(path, role=role, schema=service).encode())  # bytes: a file, not a literal
            conn.execute("INSERT INTO public.uds3_migrations (name) VALUES (%s)", (name,))


def _render(path: Path, **names: str) -> str:
    text = path.read_text()
    for key, value in names.items():
        text = text.replace("{" + key + "}", '"' + value + '"')
    return text


def main() -> None:
    """`make up`: the deployment's PostgreSQL roles, schemas and migrations, then its Kafka
    principals, topics and ACLs (idempotent, as the admin of each)."""
    from services.operator import access

    provision()
    print("provisioned roles, schemas and migrations", file=sys.stderr)
    created = asyncio.run(access.provision_kafka(Settings()))
    for topic in topics.ALL_TOPICS:
        state = "created" if topic.name in created else "exists"
        print(f"{topic.name}: {topic.partitions} partitions, {state}; written by {', '.join(topic.writers)}")


if __name__ == "__main__":
    main()
