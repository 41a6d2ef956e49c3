"""The fan-out of a large document's vector step: its work items and their ledger.

A PDF of more than `item_pages` pages is split into page ranges (`plan_items`); each range is
one work item (`VectorItemRequested` on the vector work topic) that any vector process embeds.
The ledger (`vector.item_plans`, `vector.items`, PostgreSQL) is what the workers share:

* each item's progress (chunks stored: a worker killed mid-item resumes after its last batch),
  and its totals once done; the worker that finishes the last item emits `VectorsIndexed`;
* the fence: a worker writes each batch of vectors while it holds the plan row FOR SHARE, and
  an undo sets `fenced` first, which waits for those batches; after it no item writes again, so
  no vector appears after the document's vectors were deleted.

`InMemoryItems` is the same contract in a dict, for tests of the step's own logic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from services.core.pg import PgStore


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
    def finish(self, document_id: str, item: int, chunks: int, pages: int, pages_without_text: int) -> Totals: ...
    def totals(self, document_id: str) -> Totals | None: ...
    def fence(self, document_id: str) -> bool: ...


_TOTALS = ("SELECT p.items, count(*) FILTER (WHERE i.done), coalesce(sum(i.chunks_done) FILTER (WHERE i.done), 0), "
           "coalesce(sum(i.pages_done) FILTER (WHERE i.done), 0), "
           "coalesce(sum(i.pages_without_text) FILTER (WHERE i.done), 0), "
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

    def finish(self, document_id: str, item: int, chunks: int, pages: int, pages_without_text: int) -> Totals:
        """Marks the item done (finishers take turns on the plan row) and returns the totals."""
        with self._transaction("finish item") as conn:
            _unfenced(conn.execute("SELECT fenced FROM vector.item_plans WHERE document_id = %s FOR UPDATE",
                                   (document_id,)).fetchone())
            conn.execute("UPDATE vector.items SET done = true, chunks_done = %s, pages_done = %s, "
                         "pages_without_text = %s WHERE document_id = %s AND item = %s",
                         (chunks, pages, pages_without_text, document_id, item))
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


def _unfenced(row: Any) -> None:
    if row is None or row[0]:
        raise Fenced("the document's vectors are undone: no item writes again")


class InMemoryItems:
    """The same contract in memory; one lock stands in for the plan row's."""

    def __init__(self) -> None:
        self.plans: dict[str, dict[str, Any]] = {}
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.lock = threading.RLock()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def plan(self, document_id: str, items: int, pages: int, item_pages: int) -> None:
        with self.lock:
            if document_id not in self.plans:
                self.plans[document_id] = {"items": items, "pages": pages, "item_pages": item_pages, "fenced": False}
                for n in range(items):
                    self.rows[(document_id, n)] = {"chunks_done": 0, "pages_done": 0, "pages_without_text": 0,
                                                   "done": False}

    def state(self, document_id: str, item: int) -> ItemState | None:
        plan, row = self.plans.get(document_id), self.rows.get((document_id, item))
        if plan is None or row is None:
            return None
        return ItemState(plan["fenced"], plan["items"], plan["pages"], plan["item_pages"], row["chunks_done"],
                         row["done"])

    @contextmanager
    def _unfenced(self, document_id: str) -> Iterator[None]:
        with self.lock:
            _unfenced((self.plans[document_id]["fenced"],) if document_id in self.plans else None)
            yield

    def write_batch(self, document_id: str, item: int, chunks_done: int, write: Callable[[], None]) -> None:
        with self._unfenced(document_id):
            write()
            self.rows[(document_id, item)]["chunks_done"] = chunks_done

    def finish(self, document_id: str, item: int, chunks: int, pages: int, pages_without_text: int) -> Totals:
        with self._unfenced(document_id):
            self.rows[(document_id, item)].update(chunks_done=chunks, pages_done=pages,
                                                  pages_without_text=pages_without_text, done=True)
            totals = self.totals(document_id)
            assert totals is not None
            return totals

    def totals(self, document_id: str) -> Totals | None:
        plan = self.plans.get(document_id)
        if plan is None:
            return None
        done = [r for (d, _), r in self.rows.items() if d == document_id and r["done"]]
        return Totals(plan["items"], len(done), sum(r["chunks_done"] for r in done),
                      sum(r["pages_done"] for r in done), sum(r["pages_without_text"] for r in done), 0.0)

    def fence(self, document_id: str) -> bool:
        with self.lock:
            if document_id not in self.plans:
                return False
            self.plans[document_id]["fenced"] = True
            return True
