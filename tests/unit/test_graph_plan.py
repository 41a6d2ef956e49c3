"""The graph plan: which nodes and relations a document gets (no Neo4j)."""

from __future__ import annotations

import pytest

from services.core.errors import PermanentError
from services.core.events import DOCUMENT_SUBMITTED, SECURITY_RECORDED, VECTORS_INDEXED, Event
from services.graph.plan import GraphPlan, Node, Relation, plan_for

SHA = "ab" * 32


def facts(**payload: object) -> tuple[Event, Event, Event]:
    sub = Event(DOCUMENT_SUBMITTED, "doc-1", "saga-1", payload={
        "source_uri": "file:///inbox/a.pdf", "size_bytes": 1, "content_type": "", "submitter": "s",
        "title": "  Annual   report ", "security_level": "confidential", "references": [], "metadata": {},
        **payload})
    sec = sub.follow(SECURITY_RECORDED, "security", identity="i", content_sha256=SHA, classification="confidential",
                     submitter="s", audit_entry=1)
    vec = sec.follow(VECTORS_INDEXED, "vector", collection="c", page_count=12, chunk_count=40, pages_without_text=0,
                     embedding_model="m")
    return sub, sec, vec


def rels(plan: GraphPlan) -> list[tuple[str, str, str]]:
    return [(r.type, r.target.label, r.target.key) for r in plan.relations]


def test_document_node_carries_the_facts() -> None:
    plan = plan_for(*facts())
    assert plan.document == Node("Document", "doc-1")
    assert dict(plan.document.props) == {"title": "Annual report", "sha256": SHA, "pages": 12, "chunks": 40,
                                         "security_level": "confidential", "saga_id": "saga-1",
                                         "placeholder": False}
    assert plan.relations == ()


def test_entities_from_submission_and_metadata() -> None:
    plan = plan_for(*facts(author="Ada Lovelace; Charles  Babbage;", organisation="ACME",
                           case_number="C-7", references=["doc-2", "doc-3", "doc-2", "doc-1"],
                           metadata={"issuer": "Ministry", "other": "x"}))
    assert rels(plan) == [
        ("AUTHORED_BY", "Person", "Ada Lovelace"),
        ("AUTHORED_BY", "Person", "Charles Babbage"),
        ("BELONGS_TO", "Organisation", "ACME"),
        ("ISSUED_BY", "Organisation", "Ministry"),
        ("PART_OF_CASE", "Case", "C-7"),
        ("REFERENCES", "Document", "doc-2"),  # duplicates collapse, self-references dropped
        ("REFERENCES", "Document", "doc-3"),
    ]
    referenced = [r.target for r in plan.relations if r.type == "REFERENCES"]
    assert all(dict(n.props) == {"placeholder": True} for n in referenced)
    assert len(plan.nodes) == 1 + 7


def test_same_organisation_as_owner_and_issuer_is_one_node() -> None:
    plan = plan_for(*facts(organisation="ACME", metadata={"issued_by": " ACME "}))
    assert rels(plan) == [("BELONGS_TO", "Organisation", "ACME"), ("ISSUED_BY", "Organisation", "ACME")]
    assert plan.nodes == (Node("Document", "doc-1"), Node("Organisation", "ACME"))
    assert Relation("BELONGS_TO", Node("Organisation", "ACME")) in plan.relations


def test_blank_values_make_no_relations() -> None:
    plan = plan_for(*facts(author=" ", organisation=None, case_number="", metadata={"issuer": ""}))
    assert plan.relations == ()


def test_plan_needs_the_security_record() -> None:
    sub, _, vec = facts()
    with pytest.raises(PermanentError):
        plan_for(sub, None, vec)


def test_plan_is_deterministic() -> None:
    f = facts(author="A;B", references=["x", "y"])
    assert plan_for(*f) == plan_for(*f)
