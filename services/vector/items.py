"""The fan-out of a large document's vector step: its work items and their ledger.

A PDF of more than `item_pages` pages is split into page ranges (`plan_items`); each range is
one work item (`VectorItemRequested` on the vector work topic) that any vector process embeds.
The ledger (`vector.item_plans`, `vector.items`, PostgreSQL) is what the workers share:

* each item's progress (chunks stored: a worker killed mid-item resumes after its last batch),
  and its totals once done; the worker that finishes the last item emits `VectorsIndexed`;
* the fence: a worker writes each batch of vectors while it holds the plan row FOR SHARE, and
  an undo sets `fenced` first, which waits for those batches; after it no item writes again, so
  no vector appears after the document's vectors were deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services.core.pg import PgStore
from services.vector.ocr import Reading


def plan_items(pages: int, item_pages: int) -> list[range]:
    """The page ranges (0-based page indexes) of a document's work items; a document of up to
    `item_pages` pages is one item. The same for every worker and every run: ids of chunks and
    vectors depend on it."""
    if item_pages < 1:
        raise ValueError("item_pages must be >= 1")
    return [range(first, min(first + item_pages, pages)) for first in range(0, pages, item_pages)]


class Fenced(Exception):
    """The document's vectors are being (or were) undone: this item writes nothing more."""


@dataclass(frozen=True)
class ItemState:
    fenced: bool
    items: int
    pages: int
    item_pages: int
    chunks_done: int
    done: bool


@dataclass(frozen=True)
class Totals:
    """What the finished items of a document add up to."""

    items: int
    items_done: int
    chunks: int
    pages: int
    pages_without_text: int
    pages_ocr: int
    seconds: float  # since the plan was made

    @property
    def complete(self) -> bool:
        return self.items_done == self.items


class Items(Protocol):
    def open(self) -> None: ...
    def close(self) -> None: ...
    def plan(self, document_id: str, items: int, pages: int, item_pages: int) -> None: ...
    def state(self, document_id: str, item: int) -> ItemState | None: ...
    def write_batch(self, document_id: str, item: int, chunks_done: int, write: Callable[[], None]) -> None: ...
    def finish(self, document_id: str, item: int, chunks: int, pages: int, pages_without_text: int,
               pages_ocr: int) -> Totals: ...
    def totals(self, document_id: str) -> Totals | None: ...
    def fence(self, document_id: str) -> bool: ...
    def reading(self, document_id: str, page: int) -> Reading | None: ...
    def remember(self, document_id: str, page: int, reading: Reading) -> None: ...
    def forget_readings(self, document_id: str) -> int: ...


_TOTALS = ("SELECT p.items, count(*) FILTER (WHERE i.done), coalesce(sum(i.chunks_done) FILTER (WHERE i.done), 0), "
           "coalesce(sum(i.pages_done) FILTER (WHERE i.done), 0), "
           "coalesce(sum(i.pages_without_text) FILTER (WHERE i.done), 0), "
           "coalesce(sum(i.pages_ocr) FILTER (WHERE i.done), 0), "
           "extract(epoch FROM now() - p.planned_at)::float8 "
           "FROM vector.item_plans p JOIN vector.items i USING (document_id) "
           "WHERE p.document_id = %s GROUP BY p.items, p.planned_at")


class ItemLedger(PgStore):
    name = "vector items"

    def plan(self, document_id: str, items: int, pages: int, item_pages: int) -> None:
        """Records the plan once (a redelivered trigger plans the same items again: no-op)."""
        with self._transaction("plan items") as conn:
            conn.execute("INSERT INTO vector.item_plans (document_id, items, pages, item_pages) VALUES "
                         "(%s, %s, %s, %s) ON CONFLICT (document_id) DO NOTHING",
                         (document_id, items, pages, item_pages))
            conn.execute("INSERT INTO vector.items (document_id, item) SELECT %s, n FROM generate_series(0, %s) n "
                         "ON CONFLICT DO NOTHING", (document_id, items - 1))

    def state(self, document_id: str, item: int) -> ItemState | None:
        with self._transaction("read item") as conn:
            row = conn.execute(
                "SELECT p.fenced, p.items, p.pages, p.item_pages, i.chunks_done, i.done FROM vector.item_plans p "
                "JOIN vector.items i USING (document_id) WHERE p.document_id = %s AND i.item = %s",
                (document_id, item)).fetchone()
        return ItemState(*row) if row else None

    def write_batch(self, document_id: str, item: int, chunks_done: int, write: Callable[[], None]) -> None:
        """`write()` (the batch's upsert) under the plan row's share lock, unless fenced; then
        the item's progress, in the same transaction."""
        with self._transaction("write batch") as conn:
            _unfenced(conn.execute("SELECT fenced FROM vector.item_plans WHERE document_id = %s FOR SHARE",
                                   (document_id,)).fetchone())
            write()
            conn.execute("UPDATE vector.items SET chunks_done = %s WHERE document_id = %s AND item = %s",
                         (chunks_done, document_id, item))

    def finish(self, document_id: str, item: int, chunks: int, pages: int, pages_without_text: int,
               pages_ocr: int) -> Totals:
        """Marks the item done (finishers take turns on the plan row) and returns the totals."""
        with self._transaction("finish item") as conn:
            _unfenced(conn.execute("SELECT fenced FROM vector.item_plans WHERE document_id = %s FOR UPDATE",
                                   (document_id,)).fetchone())
            conn.execute("UPDATE vector.items SET done = true, chunks_done = %s, pages_done = %s, "
                         "pages_without_text = %s, pages_ocr = %s WHERE document_id = %s AND item = %s",
                         (chunks, pages, pages_without_text, pages_ocr, document_id, item))
            row = conn.execute(_TOTALS, (document_id,)).fetchone()
            assert row is not None, "a plan that is not fenced has items"
            return Totals(*row)

    def totals(self, document_id: str) -> Totals | None:
        with self._transaction("read totals") as conn:
            row = conn.execute(_TOTALS, (document_id,)).fetchone()
        return Totals(*row) if row else None

    def fence(self, document_id: str) -> bool:
        """Stops every item of the document from writing again, once the batches being written
        now are in (the update waits for their share locks). False: it had no plan."""
        with self._transaction("fence items") as conn:
            return conn.execute("UPDATE vector.item_plans SET fenced = true WHERE document_id = %s",
                                (document_id,)).rowcount > 0


    # --- OCR readings: a cache a resumed item reads back (part of the document's vector data) ---
    def reading(self, document_id: str, page: int) -> Reading | None:
        with self._transaction("read OCR reading") as conn:
            row = conn.execute("SELECT text, confidence FROM vector.ocr_pages WHERE document_id = %s AND page = %s",
                               (document_id, page)).fetchone()
        return Reading(row[0], float(row[1])) if row else None

    def remember(self, document_id: str, page: int, reading: Reading) -> None:
        with self._transaction("remember OCR reading") as conn:
            conn.execute("INSERT INTO vector.ocr_pages (document_id, page, text, confidence) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (document_id, page, reading.text, reading.confidence))

    def forget_readings(self, document_id: str) -> int:
        with self._transaction("forget OCR readings") as conn:
            return conn.execute("DELETE FROM vector.ocr_pages WHERE document_id = %s", (document_id,)).rowcount


def _unfenced(row: Any) -> None:
    if row is None or row[0]:
        raise Fenced("the document's vectors are undone: no item writes again")
