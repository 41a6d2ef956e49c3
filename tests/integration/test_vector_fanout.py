"""The vector step's fan-out with the real ledger (PostgreSQL), model and milvus-lite server: a
large PDF becomes work items that any process embeds, in any order and at once; the last one
to finish emits `VectorsIndexed`, with the chunks and ids one process doing all of them gives;
an undo fences the items, so none writes after it, not even one writing at that moment.

The runtime's Kafka loops are the e2e tests' (tests/e2e/test_fanout.py); here the step's
`work` is called as `Runtime._work_item` calls it, from threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import VECTOR_ITEM_REQUESTED, VECTORS_INDEXED, VECTORS_PROGRESSED, Event
from services.core.steplog import StepLog
from services.vector.items import plan_items
from services.vector.step import VectorStep
from services.vector.text import chunk_pages, iter_pdf_pages
from tests.documents import paragraph, pdf_file
from tests.integration.test_uploader import Harness, harness, make_settings
from tests.integration.test_vector_step import folder, secured

pytestmark = pytest.mark.stack

ITEM_PAGES = 4


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, stack: Settings) -> Settings:
    tmp = tmp_path_factory.mktemp("fanout")
    return make_settings(tmp, milvus_collection=f"{stack.milvus_collection}_fanout", embed_batch=4,
                         vector_item_pages=ITEM_PAGES)


@pytest.fixture
def vector(step: VectorStep, settings: Settings) -> Harness:
    return harness(step, settings, started=True)


@pytest.fixture
def uploader(settings: Settings) -> Harness:
    from services.uploader.step import UploaderStep

    return harness(UploaderStep.from_settings(settings), settings)


@pytest.fixture(scope="module")
def source(settings: Settings) -> Path:
    # 14 pages, 4 an item: items of 4, 4, 4 and 2 pages; the last page is a scan (no text)
    return pdf_file(folder(settings, "large"), "large.pdf", [paragraph(300 + p, 1500) for p in range(13)],
                    image_pages=1)


def ids(step: VectorStep, doc: str) -> set[str]:
    rows = step.vectors.client.query(step.vectors.collection, filter=f'document_id == "{doc}"', output_fields=["id"])
    return {r["id"].removeprefix(f"{doc}:") for r in rows}


def fanned_out(vector: Harness, uploader: Harness, source: Path) -> tuple[str, list[Event]]:
    """Uploads the document and starts its vector step: its id and the work items it planned."""
    start = secured(uploader, vector, source)
    vector.feed(start)
    return start.document_id, list(vector.log(start.document_id).emitted_of(VECTOR_ITEM_REQUESTED))


def run_items(step: VectorStep, vector: Harness, items: list[Event], threads: int = 2) -> None:
    """Items in the order given, shared by `threads` workers (as replicas would take them)."""
    pending, errors = list(items), []

    def worker() -> None:
        while pending:
            try:
                step.work(pending.pop(0), vector.runtime.ctx)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors


def test_items_in_any_order_and_at_once_give_what_one_process_gives(
    vector: Harness, uploader: Harness, step: VectorStep, source: Path
) -> None:
    doc, items = fanned_out(vector, uploader, source)
    assert [(i.payload["first_page"], i.payload["last_page"]) for i in items] == [(1, 4), (5, 8), (9, 12), (13, 14)]
    assert not vector.log(doc).has_emitted(VECTORS_INDEXED)  # the workers finish it
    run_items(step, vector, items[::-1])
    indexed = list(vector.log(doc).emitted_of(VECTORS_INDEXED))
    expected = [c for r in plan_items(14, ITEM_PAGES) for c in chunk_pages(iter_pdf_pages(lambda: source, pages=r))]
    assert len(indexed) == 1 and indexed[0].payload["chunk_count"] == len(expected) == step.vectors.count(doc)
    assert (indexed[0].payload["page_count"], indexed[0].payload["pages_without_text"]) == (14, 1)
    progress = [e.payload for e in vector.log(doc).emitted_of(VECTORS_PROGRESSED)]
    assert [p["batch"] for p in progress] == [1, 2, 3, 4] and progress[-1]["chunks_done"] == len(expected)

    # One process doing every item (what an operator's repair does) stores the same ids.
    again = secured(uploader, vector, source)
    scratch = StepLog("vector", again.document_id)
    for m in vector.log(again.document_id).received:
        scratch.receive(m)
    step.handle(again, scratch, replace(vector.runtime.ctx, inline=True, checkpoint=lambda _log: None))
    assert messages_of(scratch, VECTORS_INDEXED)[0]["chunk_count"] == len(expected)
    assert ids(step, again.document_id) == ids(step, doc) and len(ids(step, doc)) == len(expected)

    # A redelivered item, done or not, changes nothing.
    before = len(vector.log(doc).emitted)
    run_items(step, vector, items[1:3], threads=1)
    assert len(vector.log(doc).emitted) == before and step.vectors.count(doc) == len(expected)


def messages_of(log: StepLog, event_type: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in log.emitted if m["event_type"] == event_type]


def test_an_undo_waits_for_the_batch_being_written_and_no_item_writes_after_it(
    vector: Harness, uploader: Harness, step: VectorStep, source: Path
) -> None:
    doc, items = fanned_out(vector, uploader, source)
    real_upsert, writing, release = step.vectors.upsert, threading.Event(), threading.Event()

    def slow_upsert(rows: list[dict[str, Any]]) -> None:
        writing.set()
        release.wait(10)  # the batch is being written when the undo comes
        real_upsert(rows)

    step.vectors.upsert = slow_upsert  # type: ignore[method-assign]
    try:
        worker = threading.Thread(target=step.work, args=(items[1], vector.runtime.ctx))
        worker.start()
        assert writing.wait(30)
        undo = threading.Thread(target=lambda: step.undo(vector.log(doc), vector.runtime.ctx))
        undo.start()
        time.sleep(1)
        assert undo.is_alive(), "the fence did not wait for the batch in flight"
        release.set()
        worker.join(30)
        undo.join(30)
    finally:
        step.vectors.upsert = real_upsert  # type: ignore[method-assign]
    assert step.vectors.count(doc) == 0  # the in-flight batch landed before the delete
    run_items(step, vector, items)  # items delivered after the undo write nothing
    assert step.vectors.count(doc) == 0 and not vector.log(doc).has_emitted(VECTORS_INDEXED)


def test_an_item_that_fails_for_good_fails_the_step_and_undoes_every_item(
    vector: Harness, uploader: Harness, step: VectorStep, source: Path
) -> None:
    doc, items = fanned_out(vector, uploader, source)
    run_items(step, vector, items[:2], threads=1)
    assert step.vectors.count(doc) > 0
    vector.runtime._fail_item(items[2], PermanentError("page 9 cannot be read"))
    log = vector.log(doc)
    assert [m["payload"]["reason"] for m in log.emitted if m["event_type"] == "VectorsFailed"] == \
        ["page 9 cannot be read"]
    run_items(step, vector, items[3:])  # still queued when it failed
    assert step.vectors.count(doc) == 0 and not log.has_emitted(VECTORS_INDEXED)
    vector.runtime._fail_item(items[3], PermanentError("again"))  # a second failure decides nothing new
    assert len(vector.log(doc).emitted) == len(log.emitted)
