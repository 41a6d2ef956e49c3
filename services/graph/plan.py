"""What the graph should hold for a document, decided without Neo4j: a `GraphPlan`.

The document node, plus one relation from it to each entity named by the submission:

| submission field            | relation                 | target node                |
|-----------------------------|--------------------------|----------------------------|
| author (";"-separated)      | AUTHORED_BY              | (:Person {name})           |
| organisation                | BELONGS_TO               | (:Organisation {name})     |
| metadata issuer / issued_by | ISSUED_BY                | (:Organisation {name})     |
| case_number                 | PART_OF_CASE             | (:Case {number})           |
| references (document ids)   | REFERENCES               | (:Document {id})           |

Every relation starts at the document, so a document owns exactly its outgoing relations;
entity nodes are shared and exist while some document relates to them. Names are matched
after trimming and collapsing whitespace (case is kept: "ACME" and "Acme" stay distinct).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core import messages
from services.core.errors import PermanentError
from services.core.events import Event
from services.core.validation import DEFAULT_SECURITY_LEVEL

# Each label and the property that identifies its nodes (a uniqueness constraint).
KEYS: Mapping[str, str] = {"Document": "id", "Person": "name", "Organisation": "name", "Case": "number"}
RELATIONS: Mapping[str, str] = {  # relation type -> label of its target
    "AUTHORED_BY": "Person",
    "BELONGS_TO": "Organisation",
    "ISSUED_BY": "Organisation",
    "PART_OF_CASE": "Case",
    "REFERENCES": "Document",
}
ISSUER_KEYS = ("issuer", "issued_by")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Node:
    label: str
    key: str  # the value of KEYS[label]
    props: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Relation:
    type: str
    target: Node  # the start is always the plan's document


@dataclass(frozen=True)
class GraphPlan:
    document: Node
    relations: tuple[Relation, ...]

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.document, *dict.fromkeys(r.target for r in self.relations))


def clean(name: object) -> str:
    return _SPACES.sub(" ", str(name or "")).strip()


def plan_for(submission: Event, security: Event | None, vectors: Event) -> GraphPlan:
    """The plan for a document from its submission, SecurityRecorded and VectorsIndexed (pure)."""
    if security is None:
        raise PermanentError("no SecurityRecorded received before VectorsIndexed")
    sub, doc_id = messages.DocumentSubmitted.of(submission), submission.document_id
    indexed = messages.VectorsIndexed.of(vectors)
    document = Node("Document", doc_id, {
        "title": clean(sub.title) or None,
        "sha256": messages.SecurityRecorded.of(security).content_sha256,
        "pages": indexed.page_count,
        "chunks": indexed.chunk_count,
        "security_level": sub.security_level or DEFAULT_SECURITY_LEVEL,
        "saga_id": submission.saga_id,
        "placeholder": False,
    })
    metadata: Mapping[str, Any] = sub.metadata
    issuer = next((metadata[k] for k in ISSUER_KEYS if clean(metadata.get(k))), None)
    wanted: list[tuple[str, Iterable[object]]] = [
        ("AUTHORED_BY", (sub.author or "").split(";")),
        ("BELONGS_TO", [sub.organisation]),
        ("ISSUED_BY", [issuer]),
        ("PART_OF_CASE", [sub.case_number]),
        ("REFERENCES", [r for r in sub.references if clean(r) != doc_id]),
    ]
    relations: dict[Relation, None] = {}  # ordered set: duplicates collapse
    for rel_type, names in wanted:
        for name in map(clean, names):
            if name:
                label = RELATIONS[rel_type]
                # a referenced document not ingested yet is created as a placeholder
                props = {"placeholder": True} if label == "Document" else {}
                relations[Relation(rel_type, Node(label, name, props))] = None
    return GraphPlan(document, tuple(relations))
