"""Creates what the services need in PostgreSQL: one role and one schema per service.

Run once by the admin role (`python -m services.core.provision`, done by `make up`).
Each service connects with its own role, which owns only its own schema (its event store
tables and its own tables): least privilege. Each service's SQL migrations live in
`services/<name>/migrations/*.sql` and are applied here in file-name order, once each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
from psycopg import sql

from services.core.config import REPO_ROOT, Settings

SERVICES = ("uploader", "verifier", "security", "vector", "graph", "relational")


def provision(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    with psycopg.connect(settings.pg_dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.uds3_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
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
        for service in SERVICES:
            _migrate(conn, service, settings)


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


if __name__ == "__main__":
    provision()
    print("provisioned roles, schemas and migrations", file=sys.stderr)
