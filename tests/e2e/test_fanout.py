"""One large document embedded by two vector processes at once (fan-out over the work topic):
both take items, a worker SIGKILLed mid-item hands its items over and at most its batch is
redone, `VectorsIndexed` comes once with the chunks and ids one process gives, and an item that
fails for good compensates every item's vectors, including those still being embedded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.client import Client
from services.core import topics
from services.core.config import Settings
from services.core.events import DOCUMENT_COMPENSATED, DOCUMENT_COMPLETED, VECTORS_INDEXED, Event
from services.core.store import StepStore
from services.processes import ServiceProcess
from services.vector.adapters import VectorIndex
from services.vector.items import plan_items
from services.vector.text import chunk_pages, iter_pdf_pages
from tests.documents import paragraph, pdf_file
from tests.e2e.stores import footprint
from tests.e2e.test_bad_input import outcomes
from tests.e2e.test_vector_e2e import EMBEDDING
from tests.running import Services

pytestmark = pytest.mark.stack

PAGES = 100


@pytest.fixture(scope="module")
def second_vector(services: Services) -> Iterator[ServiceProcess]:
    """A second vector process beside the session's, in the same groups (saga and work)."""
    proc = start_worker(ServiceProcess("vector", replica=1, env=services.env))
    yield proc
    proc.stop()


def start_worker(proc: ServiceProcess) -> ServiceProcess:
    """Starts it and waits until the work group gave it half the partitions (the other half are
    the session's vector process's)."""
    since = proc.log_path.stat().st_size if proc.log_path.exists() else 0
    proc.start()
    deadline = time.monotonic() + 90
    half = f"work assigned partitions={topics.WORK_PARTITIONS // 2}"
    while half not in proc.log_path.read_bytes()[since:].decode(errors="replace"):
        assert time.monotonic() < deadline and proc.alive, proc.log_tail()
        time.sleep(0.2)
    return proc


def large_pdf(folder: Path, name: str, seed: int) -> Path:
    folder.mkdir(exist_ok=True)
    return pdf_file(folder, name, [paragraph(seed + p, 1500) for p in range(PAGES)])


def expected_ids(source: Path, item_pages: int) -> set[str]:
    """What one process doing every item stores: item n's chunks, numbered from 0 within it."""
    return {f"{n:05d}:{c.index:07d}" for n, r in enumerate(plan_items(PAGES, item_pages))
            for c in chunk_pages(iter_pdf_pages(lambda: source, pages=r))}


def started(log: Path, document_id: str) -> set[tuple[int, int]]:
    """(item, chunk) of every chunk a process started to embed, from its log (a line per batch)."""
    text = log.read_text(errors="replace")
    return {(int(m["item"]), i) for m in EMBEDDING.finditer(text) if m["doc"] == document_id
            for i in range(int(m["first"]), int(m["last"]) + 1)}


def stored_ids(document_id: str) -> set[str]:
    index = VectorIndex.of(Settings()).open()
    try:
        rows = index.client.query(index.collection, filter=f'document_id == "{document_id}"', output_fields=["id"])
        return {r["id"].removeprefix(f"{document_id}:") for r in rows}
    finally:
        index.close()


def test_two_workers_share_a_document_and_one_killed_mid_item_hands_it_over(
    services: Services, second_vector: ServiceProcess, run_dir: Path
) -> None:
    source = large_pdf(run_dir / "fanout", "large.pdf", 900)
    item_pages = Settings().vector_item_pages
    assert len(plan_items(PAGES, item_pages)) >= 2
    first = services.procs["vector"]

    async def run() -> Event:
        async with Client() as client:
            sub = await client.submit(source, title="fanout-share")
            deadline = time.monotonic() + 180
            while not started(second_vector.log_path, sub.document_id):
                assert time.monotonic() < deadline, second_vector.log_tail()
                await asyncio.sleep(0.05)
            second_vector.kill()  # mid-item: its first batch has begun
            return (await outcomes(client, [sub]))[0]

    outcome = asyncio.run(run())
    doc = outcome.document_id
    assert outcome.event_type == DOCUMENT_COMPLETED, (outcome, services.logs())
    expected = expected_ids(source, item_pages)
    assert outcome.payload["chunk_count"] == len(expected)
    assert stored_ids(doc) == expected  # every chunk once, with the ids one process gives
    indexed = list(StepStore("vector", admin=True).step_log(doc).emitted_of(VECTORS_INDEXED))
    assert len(indexed) == 1 and indexed[0].payload["chunk_count"] == len(expected)
    by_killed, by_first = started(second_vector.log_path, doc), started(first.log_path, doc)
    killed_items = {item for item, _ in by_killed}
    assert {item for item, _ in by_first} - killed_items, "the first process took no item of its own"
    assert killed_items and all((item, 0) in by_first for item in killed_items)  # and finished the killed one
    batch = int(services.env.get("UDS3_EMBED_BATCH", Settings().embed_batch))
    assert len(by_killed & by_first) <= batch, "more than the batch in flight was redone"
    start_worker(second_vector)  # back for the next test


def test_an_item_failing_for_good_compensates_every_item_even_those_in_flight(
    services: Services, second_vector: ServiceProcess, run_dir: Path
) -> None:
    source = large_pdf(run_dir / "fanout", "failing.pdf", 1900)
    assert second_vector.alive

    async def run() -> Event:
        async with Client() as client:  # fails at its first checkpoint: the end of the first item
            return (await outcomes(client, [await client.submit(source, title="fanout fail-mid-vectors")]))[0]

    outcome = asyncio.run(run())
    assert outcome.event_type == DOCUMENT_COMPENSATED and outcome.payload["failed_step"] == "Vectors", \
        (outcome, services.logs())
    assert footprint(outcome.document_id).empty
    time.sleep(3)  # what was in flight when it failed has had time to try to write
    assert footprint(outcome.document_id).vectors == 0
