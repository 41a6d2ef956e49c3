"""The graph step against the real Neo4j: what it links and reports, no duplicate nodes or
relations in the database, its undo, and deployments sharing one database. The port's own
contract (read back, shared entities, removal, placeholders) is `test_graph_contract.py`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from services.core.config import Settings
from services.core.events import DOCUMENT_SUBMITTED, GRAPH_LINKED, SECURITY_RECORDED, VECTORS_INDEXED, Event
from services.core.step import Context
from services.core.steplog import StepLog, message_of
from services.graph.adapters import GraphStore
from services.graph.step import GraphStep

pytestmark = pytest.mark.stack
SHA = "9c" * 32


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    """The run's provisioned database; a stack that is down fails the run, it is never skipped."""
    return stack


@pytest.fixture(scope="module")
def step(settings: Settings) -> Iterator[GraphStep]:
    s = GraphStep.from_settings(settings)
    s.start()
    yield s
    s.stop()
    s.stop()  # idempotent


@pytest.fixture
def store(step: GraphStep) -> GraphStore:
    assert isinstance(step.store, GraphStore)  # these tests read Neo4j itself as well
    return step.store


def tag() -> str:
    return uuid.uuid4().hex[:8]


def saga(doc: str, **payload: object) -> list[Event]:
    sub = Event(DOCUMENT_SUBMITTED, doc, str(uuid.uuid4()), producer="client", payload={
        "source_uri": f"/data/{doc}.pdf", "size_bytes": 1, "content_type": "application/pdf",
        "title": f"Doc {doc[:8]}", "security_level": "internal", "submitter": "s", "references": [],
        "metadata": {}, **payload})
    sec = sub.follow(SECURITY_RECORDED, "security", identity="i", content_sha256=SHA, classification="internal",
                     submitter="s", audit_entry=1)
    vec = sec.follow(VECTORS_INDEXED, "vector", collection="c", chunk_count=4, page_count=2,
                     pages_without_text=0, embedding_model="m")
    return [sub, sec, vec]


def run(step: GraphStep, settings: Settings, events: list[Event]) -> StepLog:
    log = StepLog("graph", events[0].document_id)
    for e in events:
        log.receive(message_of(e))
    step.handle(events[-1], log, Context(settings))
    return log


def undo(step: GraphStep, settings: Settings, doc: str) -> int:
    return step.undo(StepLog("graph", doc), Context(settings)).removed


def count(store: GraphStore, names: list[str], docs: list[str]) -> tuple[int, int]:
    """Nodes named by this test and relations touching them."""
    assert store._driver is not None
    record = store._driver.execute_query(
        "MATCH (n) WHERE n.id IN $docs OR n.name IN $names OR n.number IN $names "
        "OPTIONAL MATCH (n)-[r]-() RETURN count(DISTINCT n) AS nodes, count(DISTINCT r) AS rels",
        docs=docs, names=names).records[0]
    return record["nodes"], record["rels"]


def test_the_step_links_its_plan_and_reports_it(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    log = run(step, settings, saga(doc, author=f"Ada {t}; Bob {t}", organisation=f"Org {t}",
                                   case_number=f"C-{t}", references=[other], metadata={"issuer": f"Gov {t}"}))
    assert store.relations(doc) == {
        ("AUTHORED_BY", "Person", f"Ada {t}"), ("AUTHORED_BY", "Person", f"Bob {t}"),
        ("BELONGS_TO", "Organisation", f"Org {t}"), ("ISSUED_BY", "Organisation", f"Gov {t}"),
        ("PART_OF_CASE", "Case", f"C-{t}"), ("REFERENCES", "Document", other)}
    linked = log.last_emitted(GRAPH_LINKED)
    assert linked is not None and dict(linked.payload) == {"node_id": doc, "relations": 6}


def test_handling_twice_changes_nothing(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    events = saga(doc, author=f"Ada {t}", organisation=f"Org {t}", case_number=f"C-{t}", references=[other])
    names = [f"Ada {t}", f"Org {t}", f"C-{t}"]
    first = run(step, settings, events)
    counts = count(store, names, [doc, other])
    second = run(step, settings, events)
    assert count(store, names, [doc, other]) == counts == (5, 4)
    assert [m["event_id"] for m in first.emitted] == [m["event_id"] for m in second.emitted]


def test_undo_removes_document_relations_and_unused_entities(step: GraphStep, settings: Settings,
                                                             store: GraphStore) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    run(step, settings, saga(doc, author=f"Ada {t}", organisation=f"Org {t}", case_number=f"C-{t}",
                             references=[other]))
    assert undo(step, settings, doc) == 1 + 4 + 4  # node, relations, entities + placeholder
    assert count(store, [f"Ada {t}", f"Org {t}", f"C-{t}"], [doc, other]) == (0, 0)
    assert undo(step, settings, doc) == 0  # idempotent


def test_deployments_sharing_the_database_never_see_touch_or_keep_each_others_nodes(
    step: GraphStep, settings: Settings, store: GraphStore
) -> None:
    """Tests, bench runs and the default deployment share one Neo4j database: the same document
    and the same author in another deployment are other nodes; its undo and its removal at the
    end of its run leave ours alone."""
    doc, t = str(uuid.uuid4()), tag()
    events = saga(doc, author=f"Ada {t}")
    elsewhere = GraphStep(GraphStore.of(replace(settings, deployment=f"{settings.deployment}-elsewhere")))
    elsewhere.start()
    try:
        run(step, settings, events)
        run(elsewhere, settings, events)
        assert elsewhere.store.node("Document", doc) is not None
        assert count(store, [f"Ada {t}"], [doc]) == (4, 2)  # two documents, two authors, one relation each
        undo(elsewhere, settings, doc)
        assert store.relations(doc) == {("AUTHORED_BY", "Person", f"Ada {t}")}
        run(elsewhere, settings, events)
        assert elsewhere.store.drop_deployment() == 2
        assert elsewhere.store.node("Document", doc) is None and store.node("Document", doc) is not None
    finally:
        elsewhere.stop()
        undo(step, settings, doc)
    assert count(store, [f"Ada {t}"], [doc]) == (0, 0)
