"""The graph service's port, `Graph`, and its adapters: `GraphStore` on Neo4j and `InMemoryGraph`
for tests. One contract test runs the same assertions against both
(`tests/integration/test_graph_contract.py`).

Every write is MERGE-based and runs in one managed transaction, so a repeated apply
changes nothing and a failed one leaves nothing. Every node carries its deployment (the
topic prefix), and every query names it: deployments sharing one Neo4j database (tests,
bench runs, the default) never see, link or delete each other's nodes, and a finished run
removes its own (`drop_deployment`). Neo4j Community has one database, so this is by
property, with the uniqueness constraints per (deployment, key). Driver errors become TransientError /
PermanentError in `_translated`, the one boundary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import ConstraintError, DriverError, Neo4jError

from services.core.config import Settings
from services.core.errors import PermanentError, TransientError
from services.graph.plan import KEYS, RELATIONS, GraphPlan

# A node's identifying value, whatever its label (each label has exactly one of these).
_KEY_OF_N = "coalesce(n.id, n.name, n.number)"


@dataclass(frozen=True)
class Removal:
    relations: int  # relations of the document deleted
    document: str  # "deleted", "placeholder" (others still reference it) or "absent"
    orphans: int  # entity / placeholder nodes deleted because nothing relates to them any more


class Graph(Protocol):
    """Nodes MERGEd by (label, key), so entities are shared; a document owns its outgoing
    relations. Applying a plan again changes nothing; removing a document removes what it owns
    and every entity or placeholder nothing relates to any more."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def apply(self, plan: GraphPlan, after_node: Callable[[], None] = ...) -> None: ...
    def remove(self, document_id: str) -> Removal: ...
    def drop_deployment(self) -> int: ...
    def node(self, label: str, key: str) -> dict[str, Any] | None: ...
    def relations(self, document_id: str) -> set[tuple[str, str, str]]: ...


_Edge = tuple[str, str, str, str]  # (document id, relation type, target label, target key)


class InMemoryGraph:
    """The same contract in dicts (tests of the step's own logic). One instance is one deployment."""

    def __init__(self, deployment: str = "uds3") -> None:
        self.deployment = deployment
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}  # (label, key) -> properties
        self.edges: set[_Edge] = set()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing, like the Neo4j transaction: a failure restores the state before."""
        nodes, edges = {k: dict(v) for k, v in self.nodes.items()}, set(self.edges)
        try:
            yield
        except BaseException:
            self.nodes, self.edges = nodes, edges
            raise

    def apply(self, plan: GraphPlan, after_node: Callable[[], None] = lambda: None) -> None:
        doc = plan.document.key
        with self._transaction():
            node = self.nodes.setdefault(("Document", doc), {"id": doc})
            _set_all(node, plan.document.props)
            after_node()
            for rel in plan.relations:
                label, key = _label(rel.target.label), rel.target.key
                if (label, key) not in self.nodes:  # ON CREATE only: an existing node keeps its properties
                    self.nodes[(label, key)] = _set_all({KEYS[label]: key}, rel.target.props)
                self.edges.add((doc, _label(rel.type), label, key))
            # Relations an earlier version of the document had and this plan has not.
            planned = {(doc, r.type, r.target.label, r.target.key) for r in plan.relations}
            stale = {e for e in self.edges if e[0] == doc} - planned
            self.edges -= stale
            self._drop_orphans({(label, key) for _, _, label, key in stale})

    def remove(self, document_id: str) -> Removal:
        node = self.nodes.get(("Document", document_id))
        if node is None or node.get("placeholder"):  # a placeholder is not this document's to remove
            return Removal(0, "absent", 0)
        gone = {e for e in self.edges if e[0] == document_id}
        self.edges -= gone
        if any(e[1:] == ("REFERENCES", "Document", document_id) for e in self.edges):
            # Other documents still point here: back to a bare placeholder.
            self.nodes[("Document", document_id)] = {"id": document_id, "placeholder": True}
            document = "placeholder"
        else:
            del self.nodes[("Document", document_id)]
            document = "deleted"
        orphans = self._drop_orphans({(label, key) for _, _, label, key in gone})
        return Removal(len(gone), document, orphans)

    def drop_deployment(self) -> int:
        if self.deployment == "uds3":
            raise ValueError("refusing to drop the default deployment's graph")
        removed = len(self.nodes)
        self.nodes.clear()
        self.edges.clear()
        return removed

    def node(self, label: str, key: str) -> dict[str, Any] | None:
        found = self.nodes.get((_label(label), key))
        return dict(found) if found is not None else None

    def relations(self, document_id: str) -> set[tuple[str, str, str]]:
        return {(t, label, key) for doc, t, label, key in self.edges if doc == document_id}

    def _drop_orphans(self, candidates: set[tuple[str, str]]) -> int:
        """As `_drop_orphans` below: of the candidates, entities and placeholders with no relation."""
        used = {(label, key) for _, _, label, key in self.edges} | {("Document", e[0]) for e in self.edges}
        orphans = [c for c in candidates if c in self.nodes and c not in used
                   and (c[0] != "Document" or self.nodes[c].get("placeholder"))]
        for c in orphans:
            del self.nodes[c]
        return len(orphans)


def _set_all(props: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Cypher's `SET n += $props`: a null value removes the property."""
    for k, v in changes.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v
    return props


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except ConstraintError as e:  # two MERGEs of one new entity raced: the retry finds it
        raise TransientError(f"graph store, {what}: {e}") from e
    except (Neo4jError, DriverError) as e:
        # EntityNotFound: a node this transaction matched was deleted by a concurrent undo
        if e.is_retryable() or "EntityNotFound" in str(getattr(e, "code", "")):
            raise TransientError(f"graph store, {what}: {e}") from e
        raise PermanentError(f"graph store, {what}: {type(e).__name__}: {e}") from e
    except OSError as e:
        raise TransientError(f"graph store, {what}: {e}") from e


class GraphStore:
    def __init__(self, uri: str, user: str = "", password: str = "", deployment: str = "uds3") -> None:
        self.uri = uri
        self.auth = (user, password) if user else None
        self.deployment = deployment  # a query parameter only, never spliced into Cypher
        self._driver: Driver | None = None
        self._schema_ready = False

    @classmethod
    def of(cls, settings: Settings) -> GraphStore:
        return cls(settings.neo4j_uri, settings.neo4j_user, settings.neo4j_password, settings.deployment)

    def open(self) -> None:
        if self._driver is None:  # creating a driver connects lazily: no I/O here
            self._driver = GraphDatabase.driver(self.uri, auth=self.auth, max_transaction_retry_time=10,
                                                connection_acquisition_timeout=10)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None

    def _session_driver(self) -> Driver:
        if self._driver is None:
            raise PermanentError("graph store used before open()")
        if not self._schema_ready:  # on first use, so a late Neo4j is a retriable error, not a crash
            for label, key in KEYS.items():
                self._driver.execute_query(
                    f"CREATE CONSTRAINT uds3_{label.lower()}_{key}_in_deployment IF NOT EXISTS "
                    f"FOR (n:{label}) REQUIRE (n.deployment, n.{key}) IS UNIQUE")
                # Nodes from before deployments were kept apart belong to the default one.
                self._driver.execute_query(f"MATCH (n:{label}) WHERE n.deployment IS NULL SET n.deployment = 'uds3'")
                self._driver.execute_query(f"DROP CONSTRAINT uds3_{label.lower()}_{key} IF EXISTS")
            self._schema_ready = True
        return self._driver

    def _write(self, what: str, work: Any, *args: Any) -> Any:
        with _translated(what):
            driver = self._session_driver()
            with driver.session() as session:
                return session.execute_write(work, self.deployment, *args)

    def _read(self, what: str, work: Any, *args: Any) -> Any:
        with _translated(what):
            driver = self._session_driver()
            with driver.session() as session:
                return session.execute_read(work, self.deployment, *args)

    # --- writes ------------------------------------------------------------------------------
    def apply(self, plan: GraphPlan, after_node: Callable[[], None] = lambda: None) -> None:
        """`after_node` runs inside the transaction once the document node is written, before
        its relations: a checkpoint (and the place a fault after partial work is injected)."""
        self._write("apply plan", _apply, plan, after_node)

    def remove(self, document_id: str) -> Removal:
        result: Removal = self._write("remove document", _remove, document_id)
        return result

    def drop_deployment(self) -> int:
        """Deletes every node of this deployment (a finished test or bench run), in batches."""
        if self.deployment == "uds3":
            raise ValueError("refusing to drop the default deployment's graph")
        removed = 0
        while n := int(self._write("drop deployment", _drop_batch)):
            removed += n
        return removed

    # --- reads (status, tests) ---------------------------------------------------------------
    def node(self, label: str, key: str) -> dict[str, Any] | None:
        """The node's properties (without its deployment)."""
        def read(tx: ManagedTransaction, dep: str) -> dict[str, Any] | None:
            record = tx.run(f"MATCH (n:{_label(label)} {{deployment: $dep, {KEYS[label]}: $key}}) "
                            "RETURN properties(n) AS p", dep=dep, key=key).single()
            return {k: v for k, v in record["p"].items() if k != "deployment"} if record else None

        found: dict[str, Any] | None = self._read("read node", read)
        return found

    def relations(self, document_id: str) -> set[tuple[str, str, str]]:
        """The document's outgoing relations as (type, target label, target key)."""
        def read(tx: ManagedTransaction, dep: str) -> set[tuple[str, str, str]]:
            rows = tx.run(f"MATCH (:Document {{deployment: $dep, id: $id}})-[r]->(n) RETURN type(r) AS t, "
                          f"labels(n)[0] AS l, {_KEY_OF_N} AS k", dep=dep, id=document_id)
            return {(row["t"], row["l"], row["k"]) for row in rows}

        found: set[tuple[str, str, str]] = self._read("read relations", read)
        return found


def _label(label: str) -> str:
    """Labels and relation types are spliced into Cypher: only the known ones are allowed."""
    if label not in KEYS and label not in RELATIONS:
        raise PermanentError(f"unknown graph label {label!r}")
    return label


def _drop_batch(tx: ManagedTransaction, dep: str) -> int:
    record = tx.run("MATCH (n {deployment: $dep}) WITH n LIMIT 1000 DETACH DELETE n RETURN count(*) AS n",
                    dep=dep).single()
    return int(record["n"]) if record else 0


def _apply(tx: ManagedTransaction, dep: str, plan: GraphPlan, after_node: Callable[[], None]) -> None:
    doc = plan.document
    tx.run("MERGE (d:Document {deployment: $dep, id: $id}) SET d += $props", dep=dep, id=doc.key,
           props=dict(doc.props)).consume()
    after_node()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rel in plan.relations:
        groups[(_label(rel.type), _label(rel.target.label))].append(
            {"key": rel.target.key, "props": dict(rel.target.props)})
    for (rel_type, label), targets in groups.items():
        tx.run(f"MATCH (d:Document {{deployment: $dep, id: $id}}) UNWIND $targets AS t "
               f"MERGE (n:{label} {{deployment: $dep, {KEYS[label]}: t.key}}) ON CREATE SET n += t.props "
               f"MERGE (d)-[:{rel_type}]->(n)", dep=dep, id=doc.key, targets=targets).consume()
    # Relations an earlier version of this document had and this plan has not (resubmission
    # with changed metadata): drop them, and the entities only they used.
    planned = [[r.type, r.target.label, r.target.key] for r in plan.relations]
    stale = tx.run(f"MATCH (:Document {{deployment: $dep, id: $id}})-[r]->(n) "
                   f"WHERE NOT [type(r), labels(n)[0], {_KEY_OF_N}] IN $planned "
                   f"DELETE r RETURN collect(DISTINCT elementId(n)) AS ids",
                   dep=dep, id=doc.key, planned=planned).single()
    if stale and stale["ids"]:
        _drop_orphans(tx, stale["ids"])


def _remove(tx: ManagedTransaction, dep: str, document_id: str) -> Removal:
    doc = {"dep": dep, "id": document_id}
    # Lock the node first: a concurrent ingestion that references it waits for this decision.
    found = tx.run("MATCH (d:Document {deployment: $dep, id: $id}) WHERE NOT coalesce(d.placeholder, false) "
                   "SET d.uds3_lock = true REMOVE d.uds3_lock RETURN d.id AS id", doc).single()
    if found is None:  # never linked, already removed, or only a placeholder others created
        return Removal(0, "absent", 0)
    gone = tx.run("MATCH (:Document {deployment: $dep, id: $id})-[r]->(n) DELETE r "
                  "RETURN count(r) AS n, collect(DISTINCT elementId(n)) AS ids", doc).single()
    assert gone is not None
    referenced = tx.run("MATCH (d:Document {deployment: $dep, id: $id}) "
                        "RETURN EXISTS { (d)<-[:REFERENCES]-() } AS yes", doc).single()
    if referenced and referenced["yes"]:
        # Other documents still point here: keep the node as a bare placeholder, as if this
        # document had never been ingested (a later ingestion completes it again).
        tx.run("MATCH (d:Document {deployment: $dep, id: $id}) "
               "SET d = {deployment: d.deployment, id: d.id, placeholder: true}", doc).consume()
    else:
        tx.run("MATCH (d:Document {deployment: $dep, id: $id}) DETACH DELETE d", doc).consume()
    orphans = _drop_orphans(tx, gone["ids"]) if gone["ids"] else 0
    return Removal(int(gone["n"]), "placeholder" if referenced and referenced["yes"] else "deleted", orphans)


def _drop_orphans(tx: ManagedTransaction, element_ids: list[str]) -> int:
    """Deletes those of the nodes that nothing relates to any more: entities and placeholders.

    The nodes are write-locked before the check, so a concurrent ingestion that links one of
    them either committed first (the check sees its relation) or waits and then retries.
    """
    tx.run("MATCH (n) WHERE elementId(n) IN $ids SET n.uds3_lock = true REMOVE n.uds3_lock",
           ids=element_ids).consume()
    record = tx.run("MATCH (n) WHERE elementId(n) IN $ids AND NOT (n)--() "
                    "AND (NOT n:Document OR coalesce(n.placeholder, false)) "
                    "DELETE n RETURN count(n) AS n", ids=element_ids).single()
    return int(record["n"]) if record else 0
