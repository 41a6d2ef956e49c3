"""`uds3 audit repair`: a completed document that a store lost (an operator error, a restore from
an old backup) is rebuilt from the chunk store and the event store, and the audit is clean."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.core.config import Settings
from services.core.store import StepStore
from services.graph.adapters import GraphStore
from services.operator.consistency import audit
from services.operator.state import SagaReader
from services.vector.adapters import VectorIndex
from tests.e2e.stores import footprint
from tests.e2e.test_bad_input import terminal_events
from tests.e2e.test_cli import uds3
from tests.running import Services
from tests.security.test_forged_events import completed

pytestmark = pytest.mark.stack


def wipe_vectors(doc: str, s: Settings) -> None:
    index = VectorIndex.of(s).open()
    try:
        index.delete_document(doc)
    finally:
        index.close()


def test_a_document_that_lost_its_vectors_and_its_graph_is_repaired(
    services: Services, stack: Settings, run_dir: Path
) -> None:
    folder = run_dir / "repair"
    folder.mkdir()
    doc, untouched = (asyncio.run(completed(folder, name)) for name in ("lost.txt", "untouched.txt"))
    before, other = footprint(doc), footprint(untouched)
    wipe_vectors(doc, stack)
    graph = GraphStore.of(stack)
    graph.open()
    try:
        graph.remove(doc)
    finally:
        graph.close()
    lost = footprint(doc)
    assert (lost.vectors, lost.graph_nodes) == (0, 0)
    assert {s for v in audit(stack, [doc]).violations for s in v.stores} == {"vectors", "graph"}

    repaired = uds3("audit", "repair", "-d", doc, timeout=300)
    assert repaired.returncode == 0, (repaired.stdout, repaired.stderr, services.logs())
    assert "consistent" in repaired.stdout
    assert footprint(doc) == before and footprint(untouched) == other
    assert audit(stack, [doc, untouched]).ok
    # The saga did not move: still Completed, announced once; each repair is in its step's log.
    assert asyncio.run(terminal_events(stack, doc)) == ["DocumentCompleted"]
    assert SagaReader().state(doc).status == "Completed"
    for service, emitted in (("vector", "VectorsIndexed"), ("graph", "GraphLinked")):
        log = StepStore(service, stack, admin=True).step_log(doc)
        assert [m["emitted"][-1] for m in log.repaired] == [emitted]  # published nowhere

    again = uds3("audit", "repair", "-d", doc)
    assert again.returncode == 0 and "nothing to repair" in again.stdout
