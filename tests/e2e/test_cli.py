"""The user's side: the CLI and the async client against the real stack and services."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.client import Client
from services.core.config import REPO_ROOT
from services.operator.state import SagaReader
from tests.documents import paragraph, text_file
from tests.running import Services

pytestmark = pytest.mark.stack


def uds3(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def doc_file(run_dir: Path) -> Path:
    folder = run_dir / "cli"
    folder.mkdir(exist_ok=True)
    return text_file(folder, f"note-{time.monotonic_ns()}.txt", paragraph(time.monotonic_ns() % 1000, 300))


def test_submit_shows_progress_and_ends_with_completion(services: Services, doc_file: Path) -> None:
    result = uds3("submit", str(doc_file), "--title", "CLI note", "--author", "A. Clerk", "--meta", "shelf=B7")
    assert result.returncode == 0, result.stderr + services.logs()
    assert "DocumentCompleted" in result.stdout
    assert "submitted" in result.stderr and "Vectors" in result.stderr  # the live bars


def test_no_wait_then_saga_show_and_status_from_the_event_store(services: Services, doc_file: Path) -> None:
    submitted = uds3("submit", str(doc_file), "--no-wait")
    doc = submitted.stdout.strip()
    assert submitted.returncode == 0 and len(doc) == 36
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = uds3("saga", "show", doc, "--json")
        if shown.returncode == 0 and json.loads(shown.stdout)["status"] == "Completed":
            break
        time.sleep(1)
    state = json.loads(shown.stdout)
    assert state["status"] == "Completed", state
    assert [m["event_type"] for m in state["history"]][:2] == ["DocumentSubmitted", "UploadStarted"]
    assert state["history"][-1]["event_type"] == "DocumentCompleted"
    status = uds3("status", doc)
    assert status.returncode == 0 and "Completed" in status.stdout
    newest = uds3("status", "--last", "1")  # the newest document the uploader has seen: this one
    assert newest.returncode == 0 and doc[:8] in newest.stdout and "the newest 1 of" in newest.stdout, newest.stdout
    resumed = uds3("resume", doc)
    assert "nothing to resume" in resumed.stdout


def test_subscribe_since_streams_terminal_events_as_json_lines(services: Services, doc_file: Path) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 5))
    done = uds3("submit", str(doc_file))
    assert done.returncode == 0, done.stderr
    doc = done.stdout.split()[1]
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "subscribe", "--since", since],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        found = None
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline:
            line = json.loads(proc.stdout.readline())
            found = line if line["document_id"] == doc else None
    finally:
        proc.kill()
    assert found is not None and found["event_type"] == "DocumentCompleted"


def test_common_errors_are_one_clear_line(services: Services, run_dir: Path) -> None:
    missing = uds3("submit", str(run_dir / "no-such.pdf"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    unknown = uds3("saga", "show", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 2 and "unknown document" in unknown.stderr
    source = text_file(run_dir, "refused.txt", "x")
    for args, reason in [
        (("saga", "show", "../../etc"), "document id must be a canonical UUID"),
        (("saga", "retry", '" || true'), "document id must be a canonical UUID"),
        (("audit", "consistency", "-d", "doc-1"), "document id must be a canonical UUID"),
        (("search", "harbour", "--document", "*"), "document id must be a canonical UUID"),
        (("submit", str(source), "--document-id", "../x"), "document id must be a canonical UUID"),
        (("submit", str(source), "--security-level", "top-secret"), "security level must be one of"),
        (("submit", str(source), "--sha256", "abc"), "64 lower-case hex digits"),
        (("submit", str(source), "--title", "two\nlines"), "title contains control characters"),
        (("submit", str(source), "--reference", "/etc/passwd"), "reference must be a canonical UUID"),
    ]:
        refused = uds3(*args)
        assert refused.returncode == 2 and reason in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_stack_down_is_a_clear_error(run_dir: Path, env_applied: dict[str, str]) -> None:
    path = text_file(run_dir, "down.txt", "x")
    kafka_down = uds3("submit", str(path), env={"UDS3_KAFKA_BOOTSTRAP": "127.0.0.1:9"}, timeout=120)
    assert kafka_down.returncode == 3, kafka_down.stderr
    assert "cannot reach the stack" in kafka_down.stderr and "Traceback" not in kafka_down.stderr
    assert "Unclosed" not in kafka_down.stderr  # nothing left open behind the error
    pg_down = uds3("status", env={"UDS3_PG_PORT": "9"})
    assert pg_down.returncode == 3 and "cannot reach the stack" in pg_down.stderr, pg_down.stderr


async def test_async_client_submit_progress_wait_and_subscribe(services: Services, doc_file: Path) -> None:
    async with Client() as client:
        completions = client.subscribe_completions(since_ms=int(time.time() * 1000) - 5_000)
        sub = await client.submit(doc_file, title="client note")
        seen = [e.event_type async for e in client.progress(sub.document_id, sub.submitted_at_ms)]
        outcome = await asyncio.wait_for(client.wait(sub.document_id, sub.submitted_at_ms), 60)
        async for e in completions:
            if e.document_id == sub.document_id:
                streamed = e
                break
    # Steps and progress come from two topics: each is in order, their interleaving is not.
    assert "DocumentSubmitted" in seen and seen[-1] == "DocumentCompleted", seen
    assert "VectorsIndexed" in seen
    # Progress travels on its own topic and may trail the terminal event: check it was recorded.
    assert "UploadProgressed" in SagaReader().state(sub.document_id).progress
    assert outcome.event_type == streamed.event_type == "DocumentCompleted"


def test_a_file_outside_the_inbox_is_staged_into_it(services: Services, run_dir: Path, tmp_path: Path) -> None:
    """The services read only the deployment's inbox (the run's folder here): the client copies a
    file from elsewhere into it, and the saga completes on the copy."""
    source = text_file(tmp_path, "elsewhere.txt", paragraph(11, 400))
    assert not source.resolve().is_relative_to(run_dir.resolve())
    seen: list[tuple[int, int]] = []

    async def submit() -> tuple[str, str]:
        async with Client() as client:
            sub = await client.submit(source, title="staged", staged=lambda done, total: seen.append((done, total)))
            outcome = await asyncio.wait_for(client.wait(sub.document_id, sub.submitted_at_ms), 120)
        return sub.document_id, outcome.event_type

    doc, outcome = asyncio.run(submit())
    assert outcome == "DocumentCompleted", services.logs()
    staged = run_dir / "staged" / doc / "elsewhere.txt"
    assert staged.read_bytes() == source.read_bytes() and seen[-1] == (source.stat().st_size,) * 2
