"""`uds3`: submit documents, follow sagas, and operate the system.

Errors a user can cause or fix (stack down, file missing, unknown document) print one line
and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.cli.ops import audit_app, dlq_app, saga_compensate, saga_retry
from services.client import Client
from services.core import messages, topics
from services.core.config import Settings
from services.core.errors import unreachable
from services.core.events import TERMINAL_EVENTS, UPLOAD_PROGRESSED, VECTORS_INDEXED, VECTORS_PROGRESSED, Event
from services.core.saga import SAGA, STEPS
from services.core.validation import DEFAULT_SECURITY_LEVEL, InvalidInput, uuid_id

app = typer.Typer(
    help="uds3-saga: ingest large documents into vectors, graph and relational stores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
saga_app = typer.Typer(help="Inspect and re-drive sagas.", no_args_is_help=True)
services_app = typer.Typer(help="Run the six services locally.", no_args_is_help=True)
app.add_typer(saga_app, name="saga")
app.add_typer(dlq_app, name="dlq")
app.add_typer(audit_app, name="audit")
app.add_typer(services_app, name="services")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


class UserError(Exception):
    """A problem the user can act on: printed as one line, exit code 2."""


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (UserError, InvalidInput) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        except (ConnectionError, OSError) as e:
            err.print(f"[red]error:[/red] cannot reach the stack ({e}); is it up? try `make up`")
            raise typer.Exit(3) from None
        except Exception as e:
            if unreachable(e):
                err.print(f"[red]error:[/red] cannot reach the stack ({type(e).__name__}: {e}); try `make up`")
                raise typer.Exit(3) from None
            if type(e).__name__ == "UnknownTopicOrPartitionError":
                err.print("[red]error:[/red] the saga topics do not exist yet; run `make up`")
                raise typer.Exit(3) from None
            raise

    return wrapper


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _metadata(pairs: list[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--meta takes key=value, got {pair!r}")
        meta[key] = value
    return meta


@app.command()
@friendly
def submit(
    path: Path,
    title: str = typer.Option(None),
    author: str = typer.Option(None),
    organisation: str = typer.Option(None),
    case: str = typer.Option(None, "--case", help="case number"),
    security_level: str = typer.Option(DEFAULT_SECURITY_LEVEL, "--security-level"),
    reference: list[str] = typer.Option([], "--reference", help="id of a document this one references"),
    meta: list[str] = typer.Option([], "--meta", help="free metadata, key=value"),
    sha256: str = typer.Option(None, help="declared sha256 of the file, checked by the verifier"),
    document_id: str = typer.Option(None, "--document-id", help="resubmitting the same id is recognised"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="show live progress until the saga ends"),
) -> None:
    """Submit a document; shows live progress per step until its saga ends."""
    if not path.exists():
        raise UserError(f"{path}: no such file")

    async def go() -> Event | None:
        async with Client() as client:
            # A file outside the ingest inbox is copied into it first (the services read only there).
            with Progress(TextColumn("staging into the inbox"), BarColumn(), TaskProgressColumn(), console=err,
                          transient=True) as bar:
                task = bar.add_task("stage", total=None)
                sub = await client.submit(
                    path,
                    title=title,
                    author=author,
                    organisation=organisation,
                    case_number=case,
                    references=reference,
                    metadata=_metadata(meta),
                    security_level=security_level,
                    declared_sha256=sha256,
                    document_id=document_id,
                    staged=lambda done, total: bar.update(task, completed=done, total=total),
                )
            if not wait:
                print(sub.document_id)
                return None
            err.print(f"submitted [bold]{sub.document_id}[/bold] (saga {sub.saga_id})")
            return await follow(client, sub.document_id, sub.submitted_at_ms)

    terminal = run(go())
    if terminal is not None:
        show_terminal(terminal)
        if terminal.event_type != "DocumentCompleted":
            raise typer.Exit(1)


async def follow(client: Client, document_id: str, since_ms: int | None) -> Event:
    """A live bar per step, fed by the document's events."""
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err) as bars:
        tasks = {s.name: bars.add_task(s.name, total=None, info="") for s in SAGA}
        async for event in client.progress(document_id, since_ms):
            update_bars(bars, tasks, event)
            if event.event_type in TERMINAL_EVENTS:
                return event
    raise UserError("the event stream ended before the saga did")


def update_bars(bars: Progress, tasks: dict[str, Any], e: Event) -> None:
    p = e.payload
    if e.event_type == UPLOAD_PROGRESSED:
        up = messages.UploadProgressed.of(e)
        bars.update(
            tasks["Upload"],
            total=up.bytes_total,
            completed=up.bytes_done,
            info=f"{up.bytes_done / 1e6:.0f}/{up.bytes_total / 1e6:.0f} MB {up.bytes_per_second / 1e6:.0f} MB/s",
        )
    elif e.event_type == VECTORS_PROGRESSED:
        vec = messages.VectorsProgressed.of(e)
        bars.update(
            tasks["Vectors"],
            total=vec.pages_total or None,
            completed=vec.pages_done,
            info=f"{vec.chunks_done} chunks, {vec.chunks_per_second:.0f}/s"
            + (f", {vec.pages_ocr} pages by OCR" if vec.pages_ocr else ""),
        )
    for step in SAGA:
        if e.event_type == step.success:
            bars.update(tasks[step.name], total=1, completed=1, info="done")
        elif e.event_type == step.failed:
            bars.update(tasks[step.name], info=f"[red]failed: {p.get('reason', '')}[/red]")
        elif e.event_type == step.compensated:
            bars.update(tasks[step.name], info=f"[yellow]compensated: {p.get('detail', '')}[/yellow]")


def show_terminal(e: Event) -> None:
    colour = "green" if e.event_type == "DocumentCompleted" else "red"
    out.print(f"[{colour}]{e.event_type}[/{colour}] {e.document_id} {json.dumps(dict(e.payload), default=str)}")


@app.command()
@friendly
def watch(document_id: str) -> None:
    """Follow a document's saga live until it ends."""
    state = _known_state(document_id)
    if state.terminal:
        out.print(f"{document_id} already {state.status}")
        return

    async def go() -> Event:
        async with Client() as client:
            return await follow(client, document_id, None)

    show_terminal(run(go()))


@app.command()
@friendly
def status(
    document_id: str = typer.Argument(None),
    last: int = typer.Option(20, "--last", "-n", help="the newest N documents (0: all)"),
) -> None:
    """One document's saga state, or a table of the newest ones (from the event store)."""
    reader = _reader()
    known = [uuid_id("document id", document_id)] if document_id else reader.document_ids()
    ids = known[-last:] if last > 0 else known
    caption = None if document_id else f"the newest {len(ids)} of {len(known)} (--last 0: all)"
    table = Table("document", "status", "step", "errors", caption=caption)
    for doc in ids:
        state = reader.state(doc)
        if not state.history:
            raise UserError(f"unknown document {doc}")
        table.add_row(doc, state.status, state.current_step, "; ".join(state.errors)[:80])
    out.print(table)


@saga_app.command("show")
@friendly
def saga_show(document_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A saga's state and history, rebuilt from the event store alone."""
    state = _known_state(document_id)
    if as_json:
        print(json.dumps(state.__dict__, default=str, indent=2))
        return
    out.print(
        f"[bold]{document_id}[/bold] saga {state.saga_id}: [bold]{state.status}[/bold] (step {state.current_step})"
    )
    for step in STEPS:
        out.print(f"  {step:<11} {state.steps.get(step, '-')}")
    indexed = next((m["payload"] for m in state.history if m["event_type"] == VECTORS_INDEXED), None)
    if indexed:  # the pages read, those read by OCR (scans), and those with no text at all
        out.print(f"  pages       {indexed['page_count']} read, {indexed.get('pages_ocr', 0)} by OCR, "
                  f"{indexed['pages_without_text']} without text")
    for kind, p in state.progress.items():
        out.print(f"  progress {kind}: {json.dumps(p, default=str)}")
    for e in state.errors:
        out.print(f"  [red]error[/red] {e}")
    table = Table("at", "event", "producer", "details")
    for m in state.history:
        table.add_row(
            m["occurred_at"][11:23], m["event_type"], m["producer"], json.dumps(m["payload"], default=str)[:90]
        )
    out.print(table)


def _last_step_event(state: Any) -> Event:
    """The newest recorded saga event: republishing it re-drives whichever step is waiting for it."""
    from services.core.steplog import event_of

    return event_of(state.history[-1])


saga_app.command("retry")(friendly(saga_retry))
saga_app.command("compensate")(friendly(saga_compensate))


@app.command()
@friendly
def resume(document_id: str) -> None:
    """Re-drive a stuck saga: republish its last recorded event (consumers that already
    handled it change nothing; the step that missed it, or crashed in it, carries on)."""
    state = _known_state(document_id)
    if state.terminal:
        out.print(f"{document_id} already {state.status}: nothing to resume")
        return
    event = _last_step_event(state)

    async def go() -> None:
        async with Client(principal="admin") as client:  # an operator's action: any step's topic
            await client.republish(event)

    run(go())
    out.print(f"re-drove {document_id} from {event.event_type} (step {state.current_step})")


@app.command()
@friendly
def replay(older_than: float = typer.Option(60.0, help="only sagas whose last event is older (seconds)")) -> None:
    """After an outage: resume every saga that has not ended, from the event store."""
    from datetime import UTC, datetime

    reader = _reader()
    now = datetime.now(UTC)
    stuck = []
    for doc in reader.document_ids():
        state = reader.state(doc)
        if state.history and not state.terminal:
            last = datetime.fromisoformat(state.history[-1]["occurred_at"])
            if (now - last).total_seconds() >= older_than:
                stuck.append(_last_step_event(state))

    async def go() -> None:
        async with Client(principal="admin") as client:  # an operator's action: any step's topic
            for event in stuck:
                await client.republish(event)

    run(go())
    out.print(f"re-drove {len(stuck)} saga(s)")


@app.command()
@friendly
def subscribe(
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    group: str = typer.Option(None, help="consumer group: resume where it left off (named <prefix>-client-<group>)"),
    since: str = typer.Option(None, help="replay from a point in time (ISO 8601, e.g. 2026-11-29T10:00:00+00:00)"),
) -> None:
    """Stream terminal events (DocumentCompleted, DocumentCompensated, CompensationFailed) as JSON lines."""

    async def go() -> None:
        client = Client()
        since_ms = None
        if since:
            from datetime import datetime

            try:
                since_ms = int(datetime.fromisoformat(since).timestamp() * 1000)
            except ValueError as bad:
                raise UserError(f"--since takes an ISO 8601 time, got {since!r}") from bad
        allowed = topics.client_group_prefix()  # the only groups a client principal may join
        named = group if not group or group.startswith(allowed) else allowed + group
        async for e in client.subscribe_completions(from_beginning, named, since_ms):
            print(
                json.dumps(
                    {
                        "event_type": e.event_type,
                        "document_id": e.document_id,
                        "saga_id": e.saga_id,
                        "event_id": e.event_id,
                        "occurred_at": e.occurred_at.isoformat(),
                        "payload": dict(e.payload),
                    },
                    default=str,
                ),
                flush=True,
            )

    with contextlib.suppress(KeyboardInterrupt):
        run(go())


@app.command()
@friendly
def search(
    query: str,
    k: int = typer.Option(5, "-k"),
    document: str | None = typer.Option(None, "--document", "-d", help="only this document's chunks"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Top-k chunks for a query: document id, page, score, and OCR's confidence for a scanned page."""
    from services.vector.adapters import VectorIndex
    from services.vector.embedding import load_embedder

    settings = Settings()
    if document is not None:
        uuid_id("document id", document)
    try:
        index = VectorIndex.of(settings).open()
    except Exception as e:
        raise UserError(str(e)) from e
    embedder = load_embedder(settings.embedder, model_dir=settings.model_dir)  # type: ignore[arg-type]
    vector = embedder.embed([query])[0]
    table = Table("score", "document", "page", "chunk", "ocr", "text")
    try:
        hits = index.search(vector.tolist(), k, document)
    finally:
        index.close()
    if as_json:
        print(json.dumps(hits, default=str, indent=2))
        return
    for hit in hits:
        table.add_row(
            f"{hit['score']:.3f}",
            hit["document_id"],
            str(hit["page"]),
            str(hit["chunk"]),
            f"{hit['ocr_confidence']:.0f}%" if hit.get("ocr") else "",  # read from a scan, with its confidence
            hit["text"][:70].replace("\n", " "),
        )
    out.print(table)


@services_app.command("up")
@friendly
def services_up(
    replicas: int = typer.Option(1, "--replicas", min=1, max=6, help="processes per service (one consumer group)"),
) -> None:
    """Start the six services in the background (logs in .stack/services/)."""
    from services.processes import running_detached, start_all

    if running_detached():
        out.print("services already running")
        return
    procs = start_all(replicas=replicas)
    out.print("started: " + ", ".join(f"{p.service} (pid {p.proc.pid})" for p in procs if p.proc))


@services_app.command("down")
@friendly
def services_down() -> None:
    """Stop the services started by `services up`."""
    from services.processes import stop_detached

    out.print(f"stopped {stop_detached()} service processes")


@services_app.command("status")
@friendly
def services_status() -> None:
    from services.processes import metrics_base, metrics_port, running_detached

    settings, base = Settings(), metrics_base(dict(os.environ))
    for name, pid in sorted(running_detached().items()):
        service, _, replica = name.rpartition("-")
        port = metrics_port(service, int(replica), base) if replica.isdigit() else 0
        endpoint = f"  metrics http://{settings.metrics_addr}:{port}/metrics" if port else ""
        out.print(f"{name:<14} running pid {pid}{endpoint}")


@app.command()
@friendly
def console(
    host: str = typer.Option("127.0.0.1", help="the address to serve on (keep it local, or put TLS in front)"),
    port: int = typer.Option(8088),
) -> None:
    """A live web console: sagas, one saga's timeline, dead letters (re-drive needs
    UDS3_CONSOLE_TOKEN), search."""
    import uvicorn

    from services.console.app import create_app

    token = os.environ.get("UDS3_CONSOLE_TOKEN") or None
    err.print(f"console on http://{host}:{port}/ ({'re-drive allowed with the token' if token else 'read only'})")
    # Live pages hold a stream open: a stop waits 2 s for them, not forever.
    uvicorn.run(create_app(Settings(), token), host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


def _known_state(document_id: str) -> Any:
    state = _reader().state(uuid_id("document id", document_id))
    if not state.history:
        raise UserError(f"unknown document {document_id}")
    return state


def _reader() -> Any:
    from services.operator.state import SagaReader

    return SagaReader()


if __name__ == "__main__":
    app()
