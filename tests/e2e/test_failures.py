"""Failure handling against the real services: reverse-order compensation from every step,
transient faults retried, an undo that keeps failing (CompensationFailed) and its re-drive.

The session's services run with the fault spec of `tests/conftest.py` (`service_env`): a
document whose title contains `fail-<step>` fails that step permanently, `flaky-graph`
fails the graph step twice (transiently), `stuck-undo` makes the graph step's undo fail.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer
from typer.testing import CliRunner, Result

from services.cli.ops import audit_app, saga_compensate, saga_retry
from services.client import Client, Submission
from services.core.chunkstore import ChunkStore
from services.core.config import Settings
from services.core.events import (
    CHUNK_STORED,
    COMPENSATION_FAILED,
    DOCUMENT_COMPENSATED,
    DOCUMENT_COMPLETED,
    TERMINAL_EVENTS,
    VECTORS_PROGRESSED,
    Event,
)
from services.core.saga import COMPENSATED_EVENTS, FAILED_EVENTS, STEPS, compensated, failed
from services.operator.state import SagaReader
from services.processes import ServiceProcess
from services.security.audit import verify_audit
from tests.documents import paragraph, pdf_file, text_file
from tests.e2e.stores import Footprint, footprint
from tests.running import Services

pytestmark = pytest.mark.stack

FAIL_TITLE = {step: f"fail-{step.lower()}" for step in STEPS}  # fail-upload ... fail-relational
OUTCOME_TIMEOUT = 240
# The steps that fail after part of their work is written, and the progress event that shows it.
AFTER_PARTIAL_WORK = {"Upload": CHUNK_STORED, "Vectors": VECTORS_PROGRESSED, "Graph": None}


@dataclass
class Run:
    """A document submitted by this module, and its terminal event."""

    sub: Submission
    outcome: Event


def chain(document_id: str) -> list[str]:
    """The saga's failure/compensation/terminal events, in the order the event store has them."""
    kinds = FAILED_EVENTS | COMPENSATED_EVENTS | TERMINAL_EVENTS
    return [m["event_type"] for m in SagaReader().state(document_id).history if m["event_type"] in kinds]


def expected_chain(failed_step: str) -> list[str]:
    earlier = STEPS[: STEPS.index(failed_step)]
    return [failed(failed_step), *(compensated(s) for s in reversed(earlier)), DOCUMENT_COMPENSATED]


async def footprint_of(document_id: str) -> Footprint:
    """`footprint()`, retried: a new Milvus connection of this process is now and then refused at
    once (gRPC GOAWAY "too many pings", when an earlier test left a client open to the same
    server); the next one gets through."""
    for attempt in range(5):
        try:
            return await asyncio.to_thread(footprint, document_id)
        except Exception:
            if attempt == 4:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def audit_entries(document_id: str, wanted: set[str], timeout: float = 30) -> list[str]:
    """The document's audit trail entry types, once all of `wanted` are in (the security
    service observes events asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(Settings().pg_dsn()) as conn:
            rows = conn.execute(
                "SELECT event_type FROM security.audit_trail WHERE document_id = %s ORDER BY seq", (document_id,)
            ).fetchall()
        types = [r[0] for r in rows]
        if wanted <= set(types) or time.monotonic() > deadline:
            return types
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def runs(services: Services, run_dir: Path) -> AsyncIterator[dict[str, Run]]:
    """Every failure case of this module, submitted at once (they run in parallel)."""
    folder = run_dir / "failures"
    folder.mkdir()
    cases: dict[str, tuple[Path, dict[str, Any]]] = {}
    for i, step in enumerate(STEPS):
        path = pdf_file(folder, f"{step}.pdf", [paragraph(100 + i * 3 + p, 1500) for p in range(2)])
        cases[step] = (path, {"title": f"case {FAIL_TITLE[step]} {i}"})
    for i, step in enumerate(AFTER_PARTIAL_WORK):
        path = pdf_file(folder, f"mid-{step}.pdf", [paragraph(500 + i * 3 + p, 1500) for p in range(2)])
        cases[f"mid-{step}"] = (path, {"title": f"case fail-mid-{step.lower()}"})
    cases["flaky"] = (text_file(folder, "flaky.txt", paragraph(200, 2500)), {"title": "flaky-graph note"})
    cases["stuck"] = (
        pdf_file(folder, "stuck.pdf", [paragraph(300 + p, 1500) for p in range(2)]),
        {"title": "stuck-undo fail-relational"},
    )
    cases["mismatch"] = (
        text_file(folder, "mismatch.txt", paragraph(400, 800)),
        {"title": "declared hash is wrong", "declared_sha256": "00" * 32},
    )
    async with Client() as client:
        subs = {
            name: await client.submit(path, author="A. Clerk; B. Scribe", organisation="Records Office",
                                      case_number="C-F", **kw)
            for name, (path, kw) in cases.items()
        }
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(client.wait(s.document_id, s.submitted_at_ms) for s in subs.values())), OUTCOME_TIMEOUT
        )
    yield {name: Run(sub, o) for (name, sub), o in zip(subs.items(), outcomes, strict=True)}


@pytest.mark.parametrize("step", STEPS)
async def test_failure_at_each_step_compensates_every_earlier_step_in_reverse(
    runs: dict[str, Run], services: Services, step: str
) -> None:
    run = runs[step]
    doc = run.sub.document_id
    assert run.outcome.event_type == DOCUMENT_COMPENSATED, services.logs()
    assert run.outcome.payload["failed_step"] == step
    assert "injected permanent fault" in run.outcome.payload["reason"]
    assert chain(doc) == expected_chain(step)
    state = SagaReader().state(doc)
    assert state.status == "Compensated"
    assert state.steps[step] == "failed"
    assert all(state.steps[s] == "compensated" for s in STEPS[: STEPS.index(step)])
    left = await footprint_of(doc)
    assert left.empty, left


@pytest.mark.parametrize("step", AFTER_PARTIAL_WORK)
async def test_a_step_that_fails_after_partial_work_removes_it_before_the_chain_starts(
    runs: dict[str, Run], services: Services, step: str
) -> None:
    """The fault fires at the step's first checkpoint: a chunk already stored, a batch of
    vectors already upserted, the graph's document node written but not its relations."""
    run = runs[f"mid-{step}"]
    doc = run.sub.document_id
    assert run.outcome.event_type == DOCUMENT_COMPENSATED, services.logs()
    assert "injected permanent fault" in run.outcome.payload["reason"] and "(mid)" in run.outcome.payload["reason"]
    assert chain(doc) == expected_chain(step)
    progress = AFTER_PARTIAL_WORK[step]
    if progress:  # what the step had recorded of its work before the fault
        assert progress in SagaReader().state(doc).progress
    left = await footprint_of(doc)
    assert left.empty, left


async def test_declared_hash_mismatch_is_a_real_failure_that_compensates(runs: dict[str, Run]) -> None:
    run = runs["mismatch"]
    doc = run.sub.document_id
    assert run.outcome.event_type == DOCUMENT_COMPENSATED
    assert run.outcome.payload["failed_step"] == "Integrity"
    assert "declared sha256" in run.outcome.payload["reason"]
    assert chain(doc) == expected_chain("Integrity")
    assert (await footprint_of(doc)).empty


async def test_transient_fault_is_retried_and_the_saga_completes(runs: dict[str, Run], services: Services) -> None:
    run = runs["flaky"]
    doc = run.sub.document_id
    assert run.outcome.event_type == DOCUMENT_COMPLETED
    assert chain(doc) == [DOCUMENT_COMPLETED]  # nothing failed, nothing compensated
    f = await footprint_of(doc)
    assert (f.chunks, f.graph_nodes, f.relational_rows, f.security_records) == (1, 1, 1, 1)
    assert f.vectors == run.outcome.payload["chunk_count"] >= 1
    retries = [
        line for line in services.procs["graph"].log_path.read_text(errors="replace").splitlines()
        if "transient fault, retrying" in line and f"doc={doc}" in line
    ]
    assert len(retries) == 2, retries


async def test_audit_trail_records_the_compensations_and_stays_intact(runs: dict[str, Run]) -> None:
    doc = runs["Relational"].sub.document_id
    wanted = {*(compensated(s) for s in STEPS[:-1]), failed("Relational"), DOCUMENT_COMPENSATED,
              "SecurityRecordRemoved"}
    types = await audit_entries(doc, wanted)
    assert wanted <= set(types), types
    # the removal note comes with the undo, SecurityCompensated after it
    assert types.index("SecurityRecordRemoved") < types.index(compensated("Security"))
    with psycopg.connect(Settings().pg_dsn()) as conn:
        assert verify_audit(conn) == []


async def test_undo_that_fails_ends_in_compensation_failed_naming_what_is_left(runs: dict[str, Run]) -> None:
    run = runs["stuck"]
    doc = run.sub.document_id
    assert run.outcome.event_type == COMPENSATION_FAILED
    p = run.outcome.payload
    assert p["failed_step"] == "Relational"
    assert p["remaining"] == ["Upload", "Integrity", "Security", "Vectors", "Graph"]
    assert p["reason"].startswith("Graph:")
    assert chain(doc) == [failed("Relational"), COMPENSATION_FAILED]
    assert SagaReader().state(doc).status == "CompensationFailed"
    left = await footprint_of(doc)
    # the relational step removed its own row; everything before it is still there
    assert left.relational_rows == 0
    assert left.chunks and left.vectors and left.graph_nodes == 1 and left.security_records == 1, left


async def audit_cli(*args: str) -> Result:
    """`uds3 audit ...`; exit 3 (a store could not be read, see footprint_of) is tried again."""
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    for _ in range(5):
        result = await asyncio.to_thread(CliRunner().invoke, app, ["audit", *args])
        if result.exit_code != 3:
            break
        await asyncio.sleep(1)
    return result


async def test_consistency_audit_reads_every_store_and_finds_an_orphan(runs: dict[str, Run]) -> None:
    docs = [r.sub.document_id for r in runs.values()]
    result = await audit_cli("consistency", "--json", *(a for d in docs for a in ("-d", d)))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["violations"] == []
    assert report["statuses"].get("Completed") == 1  # flaky-graph
    ended = report["statuses"].get("Compensated", 0) + report["statuses"].get("CompensationFailed", 0)
    assert ended == 8 + len(AFTER_PARTIAL_WORK)
    # something in a store that no saga knows: an orphan (exit 1)
    ghost = str(uuid.uuid4())
    ChunkStore(Settings().chunk_store_dir).put(ghost, 0, b"left behind")
    try:
        result = await audit_cli("consistency", "-d", ghost, "--json")
        assert result.exit_code == 1, result.output
        assert [(v["kind"], v["document_id"]) for v in json.loads(result.output)["violations"]] == [("orphan", ghost)]
    finally:
        ChunkStore(Settings().chunk_store_dir).delete(ghost)


def _saga_cli() -> typer.Typer:
    """The `saga retry/compensate` commands as main.py mounts them."""
    app = typer.Typer()
    app.command("retry")(saga_retry)
    app.command("compensate")(saga_compensate)
    return app


async def saga_cli(*args: str) -> Result:
    """Runs `uds3 saga ...` (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, _saga_cli(), list(args))


async def until(document_id: str, done: Any, timeout: float = 120) -> list[str]:
    """Polls the event store until `done(chain)` holds; returns the chain."""
    deadline = time.monotonic() + timeout
    while True:
        found = chain(document_id)
        if done(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def test_saga_retry_re_drives_the_failed_undo_to_document_compensated(
    runs: dict[str, Run], services: Services
) -> None:
    doc = runs["stuck"].sub.document_id
    assert SagaReader().state(doc).status == "CompensationFailed"
    # while the graph store still refuses, a retry fails the same way: a second CompensationFailed
    result = await saga_cli("retry", doc)
    assert result.exit_code == 0, result.output
    found = await until(doc, lambda c: c.count(COMPENSATION_FAILED) == 2)
    assert found == [failed("Relational"), COMPENSATION_FAILED, COMPENSATION_FAILED], found
    # the operator fixes the graph store (here: the graph service without the undo fault) ...
    without_undo_fault = ",".join(
        f for f in services.env["UDS3_FAULTS"].split(",") if not f.startswith("graph:undo-")
    )
    services.procs["graph"].stop()
    services.procs["graph"] = ServiceProcess("graph", env={**services.env, "UDS3_FAULTS": without_undo_fault}).start()
    try:
        # ... and re-drives the compensation: the graph undo runs again, the chain goes on
        result = await saga_cli("compensate", doc)
        assert result.exit_code == 0, result.output
        found = await until(doc, lambda c: DOCUMENT_COMPENSATED in c, timeout=180)
        assert [k for k in found if k != COMPENSATION_FAILED] == expected_chain("Relational"), (found, services.logs())
        assert SagaReader().state(doc).status == "Compensated"
        left = await footprint_of(doc)
        assert left.empty, left
        # a saga that has ended compensated has nothing left to re-drive
        assert (await saga_cli("retry", doc)).exit_code == 2
    finally:
        services.procs["graph"].stop()
        services.procs["graph"] = ServiceProcess("graph", env=services.env).start()
