"""Hostile strings in every field stay data, in every store: Cypher and SQL take values as
parameters only, and Milvus (whose filter parser takes none) gets ids that passed the UUID rule.
Each case reads back exactly what was written and leaves another document untouched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.core.config import Settings
from services.core.step import Context
from services.core.steplog import StepLog
from services.graph.step import GraphStep
from services.relational.step import RelationalStep
from services.security.step import SecurityStep
from tests.integration import test_graph_store as graph_case
from tests.integration import test_relational_store as relational_case
from tests.integration import test_security_store as security_case

pytestmark = pytest.mark.stack

# Each would change a query built by string concatenation.
HOSTILE = [
    'x"}) DETACH DELETE n WITH 1 AS x MATCH (m) DETACH DELETE m //',
    "' OR '1'='1' --",
    "$id",
    "`Document`",
    "Robert'); DROP TABLE relational.documents CASCADE --",
    'x" || document_id != "',
    "Zoë ∑ 𝄞 \\' \\\" {{}}",
]


@pytest.fixture(scope="module")
def steps(stack: Settings) -> Iterator[tuple[GraphStep, RelationalStep, SecurityStep]]:
    """The steps that write the graph and PostgreSQL, on the run's real stores."""
    started = (GraphStep.from_settings(stack), RelationalStep.from_settings(stack), SecurityStep.from_settings(stack))
    for step in started:
        step.start()
    yield started
    for step in started:
        step.stop()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_cypher_takes_every_field_as_data(steps: tuple[GraphStep, RelationalStep, SecurityStep],
                                          stack: Settings, hostile: str) -> None:
    graph = steps[0]
    store = graph.store
    victim = str(uuid.uuid4())
    graph_case.run(graph, stack, graph_case.saga(victim))
    doc = str(uuid.uuid4())
    graph_case.run(graph, stack, graph_case.saga(
        doc, title=hostile, author=hostile, organisation=f"{hostile} org", case_number=f"{hostile} case",
        metadata={"issuer": f"{hostile} issuer"}))
    node = store.node("Document", doc)
    assert node is not None and node["title"] == hostile
    authors = {("AUTHORED_BY", "Person", name.strip()) for name in hostile.split(";")}  # `;` separates authors
    assert store.relations(doc) == authors | { ("BELONGS_TO", "Organisation", f"{hostile} org"),
        ("ISSUED_BY", "Organisation", f"{hostile} issuer"), ("PART_OF_CASE", "Case", f"{hostile} case")}
    assert store.node("Document", victim) is not None
    graph_case.undo(graph, stack, doc)
    assert store.node("Document", doc) is None and store.node("Document", victim) is not None


@pytest.mark.parametrize("hostile", HOSTILE)
def test_sql_takes_every_field_as_data(steps: tuple[GraphStep, RelationalStep, SecurityStep],
                                       stack: Settings, hostile: str) -> None:
    _, relational, security = steps
    table, trail = relational.table, security.store
    victim = str(uuid.uuid4())
    relational_case.run(relational, stack, relational_case.saga(victim))
    doc = str(uuid.uuid4())
    events = relational_case.saga(doc)
    sub = events[0]
    events[0] = sub.with_payload(title=hostile, author=hostile, organisation=hostile, case_number=hostile,
                                 submitter=hostile, metadata={hostile: hostile})
    relational_case.run(relational, stack, events)
    row = table.get(doc)
    assert row is not None
    assert (row["title"], row["author"], row["organisation"], row["case_number"], row["metadata"]) == (
        hostile, hostile, hostile, hostile, {hostile: hostile})
    security_case.run(security, stack, events[0])
    identity = trail.identity(doc)
    assert identity is not None and identity["submitter"] == hostile
    assert table.get(victim) is not None
    relational.undo(StepLog("relational", doc), Context(stack))
    assert table.get(doc) is None and table.get(victim) is not None


@pytest.mark.parametrize("hostile", ['" || id != "', '") or (document_id != "', "x\" or true or \"y"])
def test_a_hostile_document_id_never_widens_a_milvus_filter(stack: Settings, hostile: str) -> None:
    """The filter parser takes no parameters, so ids are checked first: a quote and an expression
    in the id are refused, and no other document's vectors are counted, found or deleted."""
    from services.core.validation import InvalidInput
    from services.vector.adapters import DIM, VectorIndex, chunk_key

    index = VectorIndex(stack.milvus_uri, f"{stack.milvus_collection}_hostile").open()
    try:
        docs = [str(uuid.uuid4()), str(uuid.uuid4())]
        index.upsert([{"id": chunk_key(d, 0, i), "document_id": d, "chunk": i, "page": 1, "text": f"chunk {i}",
                       "vector": [float(i + 1)] + [0.0] * (DIM - 1)} for d in docs for i in range(3)])
        for act in (index.delete_document, index.count, lambda d: index.search([1.0] + [0.0] * (DIM - 1), 5, d)):
            with pytest.raises(InvalidInput, match="canonical UUID"):
                act(hostile)
        assert index.documents() == {docs[0]: 3, docs[1]: 3}
    finally:
        index.drop()
        index.close()
