"""The graph step against the real Neo4j: nodes, relations, idempotency, undo, shared entities."""

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


def test_node_and_relations_land(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    log = run(step, settings, saga(doc, author=f"Ada {t}; Bob {t}", organisation=f"Org {t}",
                                   case_number=f"C-{t}", references=[other], metadata={"issuer": f"Gov {t}"}))
    node = store.node("Document", doc)
    assert node is not None
    assert {k: node[k] for k in ("title", "sha256", "pages", "security_level", "placeholder")} == {
        "title": f"Doc {doc[:8]}", "sha256": SHA, "pages": 2, "security_level": "internal", "placeholder": False}
    assert store.relations(doc) == {
        ("AUTHORED_BY", "Person", f"Ada {t}"), ("AUTHORED_BY", "Person", f"Bob {t}"),
        ("BELONGS_TO", "Organisation", f"Org {t}"), ("ISSUED_BY", "Organisation", f"Gov {t}"),
        ("PART_OF_CASE", "Case", f"C-{t}"), ("REFERENCES", "Document", other)}
    assert store.node("Document", other) == {"id": other, "placeholder": True}
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


def test_changed_metadata_replaces_relations(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    doc, t = str(uuid.uuid4()), tag()
    run(step, settings, saga(doc, author=f"Old {t}", case_number=f"C-{t}"))
    run(step, settings, saga(doc, author=f"New {t}", case_number=f"C-{t}"))
    assert store.relations(doc) == {("AUTHORED_BY", "Person", f"New {t}"), ("PART_OF_CASE", "Case", f"C-{t}")}
    assert store.node("Person", f"Old {t}") is None  # nothing else used it


def test_undo_removes_document_relations_and_unused_entities(step: GraphStep, settings: Settings,
                                                             store: GraphStore) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    run(step, settings, saga(doc, author=f"Ada {t}", organisation=f"Org {t}", case_number=f"C-{t}",
                             references=[other]))
    assert undo(step, settings, doc) == 1 + 4 + 4  # node, relations, entities + placeholder
    assert count(store, [f"Ada {t}", f"Org {t}", f"C-{t}"], [doc, other]) == (0, 0)
    assert undo(step, settings, doc) == 0  # idempotent


def test_shared_author_outlives_one_undo(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    a, b, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    author, case = f"Shared {t}", f"C-{t}"
    run(step, settings, saga(a, author=author, case_number=case))
    run(step, settings, saga(b, author=author))
    undo(step, settings, a)
    assert store.node("Person", author) is not None
    assert store.node("Case", case) is None  # only `a` used it
    assert store.relations(b) == {("AUTHORED_BY", "Person", author)}
    undo(step, settings, b)
    assert store.node("Person", author) is None


def test_placeholder_is_completed_and_reverted(step: GraphStep, settings: Settings, store: GraphStore) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    run(step, settings, saga(a, references=[b]))
    assert store.node("Document", b) == {"id": b, "placeholder": True}
    assert undo(step, settings, b) == 0  # a placeholder is not b's to remove
    run(step, settings, saga(b))
    node_b = store.node("Document", b)
    assert node_b is not None and node_b["placeholder"] is False and node_b["sha256"] == SHA
    assert store.relations(a) == {("REFERENCES", "Document", b)}
    undo(step, settings, b)  # `a` still references b: it goes back to a placeholder
    assert store.node("Document", b) == {"id": b, "placeholder": True}
    assert store.relations(a) == {("REFERENCES", "Document", b)}
    undo(step, settings, a)  # nothing references b any more: the placeholder goes too
    assert store.node("Document", a) is None and store.node("Document", b) is None


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
