"""Operator commands: the audit trail, consistency, dead letters, and re-driving sagas."""

from __future__ import annotations

import psycopg
import typer
from rich.console import Console

from services.core.config import Settings

audit_app = typer.Typer(help="Audit trail and consistency checks.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter topic: inspect and re-drive.", no_args_is_help=True)
out = Console()


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit trail's hash chain; names every place it breaks."""
    from services.security.audit import verify_audit

    with psycopg.connect(Settings().pg_dsn()) as conn:
        problems = verify_audit(conn)
    for p in problems:
        out.print(f"[red]{p.kind}[/red] at seq {p.seq}: {p.message}")
    if problems:
        raise typer.Exit(1)
    out.print("[green]audit trail intact[/green]")
