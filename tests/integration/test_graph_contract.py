"""The graph service's port: the same assertions against the in-memory and the Neo4j adapter,
so a test that uses the in-memory one tests what production does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.core.config import Settings
from services.core.errors import PermanentError
from services.graph.adapters import Graph, GraphStore, InMemoryGraph, Removal
from services.graph.plan import RELATIONS, GraphPlan, Node, Relation

pytestmark = pytest.mark.stack
SHA = "9c" * 32


@pytest.fixture(params=["in-memory", "neo4j"])
def graph(request: pytest.FixtureRequest, stack: Settings) -> Iterator[Graph]:
    port: Graph = InMemoryGraph(stack.deployment) if request.param == "in-memory" else GraphStore.of(stack)
    port.open()
    yield port
    port.close()


def tag() -> str:
    return uuid.uuid4().hex[:8]


def plan(doc: str, *relations: tuple[str, str], title: str | None = "T") -> GraphPlan:
    """The document's plan with one relation per (type, target key), as `plan_for` builds it."""
    props = {"title": title, "sha256": SHA, "pages": 2, "chunks": 4, "security_level": "internal",
             "saga_id": "s", "placeholder": False}
    return GraphPlan(Node("Document", doc, props), tuple(
        Relation(t, Node(RELATIONS[t], key, {"placeholder": True} if RELATIONS[t] == "Document" else {}))
        for t, key in relations))


def snapshot(graph: Graph, p: GraphPlan) -> object:
    return [graph.relations(p.document.key), *(graph.node(n.label, n.key) for n in p.nodes)]


def test_a_plan_applied_reads_back(graph: Graph) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    graph.apply(plan(doc, ("AUTHORED_BY", f"Ada {t}"), ("AUTHORED_BY", f"Bob {t}"),
                     ("BELONGS_TO", f"Org {t}"), ("ISSUED_BY", f"Org {t}"), ("PART_OF_CASE", f"C-{t}"),
                     ("REFERENCES", other)))
    assert graph.node("Document", doc) == {"id": doc, "title": "T", "sha256": SHA, "pages": 2, "chunks": 4,
                                           "security_level": "internal", "saga_id": "s", "placeholder": False}
    assert graph.relations(doc) == {
        ("AUTHORED_BY", "Person", f"Ada {t}"), ("AUTHORED_BY", "Person", f"Bob {t}"),
        ("BELONGS_TO", "Organisation", f"Org {t}"), ("ISSUED_BY", "Organisation", f"Org {t}"),
        ("PART_OF_CASE", "Case", f"C-{t}"), ("REFERENCES", "Document", other)}
    assert graph.node("Person", f"Ada {t}") == {"name": f"Ada {t}"}
    assert graph.node("Case", f"C-{t}") == {"number": f"C-{t}"}
    assert graph.node("Document", other) == {"id": other, "placeholder": True}  # referenced, not ingested
    assert graph.node("Person", f"Org {t}") is None  # a key is per label
    assert graph.remove(doc) == Removal(6, "deleted", 5)


def test_applying_twice_changes_nothing(graph: Graph) -> None:
    doc, other, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    p = plan(doc, ("AUTHORED_BY", f"Ada {t}"), ("BELONGS_TO", f"Org {t}"), ("REFERENCES", other))
    graph.apply(p)
    once = snapshot(graph, p)
    graph.apply(p)
    assert snapshot(graph, p) == once
    assert graph.remove(doc) == Removal(3, "deleted", 3)


def test_a_null_property_is_not_stored_and_a_new_plan_clears_it(graph: Graph) -> None:
    doc = str(uuid.uuid4())
    graph.apply(plan(doc))
    graph.apply(plan(doc, title=None))
    found = graph.node("Document", doc)
    assert found is not None and "title" not in found
    graph.remove(doc)


def test_changed_metadata_replaces_relations_and_drops_unused_entities(graph: Graph) -> None:
    doc, t = str(uuid.uuid4()), tag()
    graph.apply(plan(doc, ("AUTHORED_BY", f"Old {t}"), ("PART_OF_CASE", f"C-{t}"),
                     ("BELONGS_TO", f"Org {t}"), ("ISSUED_BY", f"Org {t}")))
    graph.apply(plan(doc, ("AUTHORED_BY", f"New {t}"), ("PART_OF_CASE", f"C-{t}"), ("BELONGS_TO", f"Org {t}")))
    assert graph.relations(doc) == {("AUTHORED_BY", "Person", f"New {t}"), ("PART_OF_CASE", "Case", f"C-{t}"),
                                    ("BELONGS_TO", "Organisation", f"Org {t}")}
    assert graph.node("Person", f"Old {t}") is None  # nothing else used it
    assert graph.node("Organisation", f"Org {t}") is not None  # still related by BELONGS_TO
    assert graph.remove(doc) == Removal(3, "deleted", 3)


def test_an_apply_that_fails_after_the_node_leaves_nothing(graph: Graph) -> None:
    doc, t = str(uuid.uuid4()), tag()

    def fail() -> None:
        raise PermanentError("injected")

    with pytest.raises(PermanentError, match="injected"):
        graph.apply(plan(doc, ("AUTHORED_BY", f"Ada {t}")), after_node=fail)
    assert graph.node("Document", doc) is None and graph.node("Person", f"Ada {t}") is None
    assert graph.relations(doc) == set()


def test_documents_share_one_entity_node_until_the_last_is_removed(graph: Graph) -> None:
    a, b, t = str(uuid.uuid4()), str(uuid.uuid4()), tag()
    author, org, case = f"Shared {t}", f"Org {t}", f"C-{t}"
    graph.apply(plan(a, ("AUTHORED_BY", author), ("BELONGS_TO", org), ("PART_OF_CASE", case)))
    graph.apply(plan(b, ("AUTHORED_BY", author), ("BELONGS_TO", org)))
    assert graph.relations(b) == {("AUTHORED_BY", "Person", author), ("BELONGS_TO", "Organisation", org)}
    assert graph.remove(a) == Removal(3, "deleted", 1)  # only the case was a's alone
    assert graph.node("Person", author) == {"name": author} and graph.node("Organisation", org) == {"name": org}
    assert graph.node("Case", case) is None and graph.node("Document", a) is None
    assert graph.relations(a) == set()
    assert graph.relations(b) == {("AUTHORED_BY", "Person", author), ("BELONGS_TO", "Organisation", org)}
    assert graph.remove(b) == Removal(2, "deleted", 2)
    assert graph.node("Person", author) is None and graph.node("Organisation", org) is None


def test_removing_an_unknown_or_removed_document_removes_nothing(graph: Graph) -> None:
    doc, t = str(uuid.uuid4()), tag()
    assert graph.remove(str(uuid.uuid4())) == Removal(0, "absent", 0)
    graph.apply(plan(doc, ("AUTHORED_BY", f"Ada {t}")))
    assert graph.remove(doc) == Removal(1, "deleted", 1)
    assert graph.remove(doc) == Removal(0, "absent", 0)


def test_a_referenced_document_is_a_placeholder_until_ingested_and_again_after_removal(graph: Graph) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    graph.apply(plan(a, ("REFERENCES", b)))
    assert graph.node("Document", b) == {"id": b, "placeholder": True}
    assert graph.remove(b) == Removal(0, "absent", 0)  # a placeholder is not b's to remove
    graph.apply(plan(b))
    node_b = graph.node("Document", b)
    assert node_b is not None and node_b["placeholder"] is False and node_b["sha256"] == SHA
    assert graph.relations(a) == {("REFERENCES", "Document", b)}
    assert graph.remove(b) == Removal(0, "placeholder", 0)  # `a` still references b
    assert graph.node("Document", b) == {"id": b, "placeholder": True}
    assert graph.relations(a) == {("REFERENCES", "Document", b)}
    assert graph.remove(a) == Removal(1, "deleted", 1)  # nothing references b any more: it goes too
    assert graph.node("Document", a) is None and graph.node("Document", b) is None


def test_an_existing_document_is_not_reset_by_a_reference_to_it(graph: Graph) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    graph.apply(plan(b))
    graph.apply(plan(a, ("REFERENCES", b)))
    node_b = graph.node("Document", b)
    assert node_b is not None and node_b["placeholder"] is False
    assert graph.remove(a) == Removal(1, "deleted", 0)  # b is a document, not an orphan
    assert graph.remove(b) == Removal(0, "deleted", 0)


def test_an_unknown_label_is_refused(graph: Graph) -> None:
    with pytest.raises(PermanentError, match="unknown graph label"):
        graph.node("Robot", "x")
