"""Step 7, graph insert: the document node and its relations to people, organisations,
cases and the documents it references (see `plan.py` for the mapping).

Forward: build the `GraphPlan` (pure) and apply it in one MERGE-only transaction; emit
GraphLinked. Undo: delete the document's relations and node (a node other documents
still reference becomes a placeholder again) and every entity or placeholder node that
no longer has any relation; entities another document uses are never touched.
"""

from __future__ import annotations

from services.core.config import Settings
from services.core.errors import PermanentError
from services.core.events import GRAPH_LINKED, SECURITY_RECORDED, Event
from services.core.step import Context, Step, Undone
from services.core.steplog import StepLog
from services.graph.adapters import Graph, GraphStore
from services.graph.plan import plan_for


class GraphStep(Step):
    service = "graph"

    def __init__(self, store: Graph) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> GraphStep:
        return cls(GraphStore.of(settings))

    def start(self) -> None:
        self.store.open()

    def stop(self) -> None:
        self.store.close()

    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        submission = log.submission()
        if submission is None:
            raise PermanentError("no DocumentSubmitted received before VectorsIndexed")
        plan = plan_for(submission, log.last_received(SECURITY_RECORDED), event)
        self.store.apply(plan, after_node=lambda: ctx.checkpoint(log))
        log.emit_event(event.follow(GRAPH_LINKED, self.service, node_id=plan.document.key,
                                    relations=len(plan.relations)))

    def undo(self, log: StepLog, ctx: Context) -> Undone:
        # Reads the graph rather than the log: it removes what is there, whatever got written.
        removal = self.store.remove(log.document_id)
        detail = (f"document node {removal.document}, {removal.relations} relations deleted, "
                  f"{removal.orphans} unused entity/placeholder nodes deleted")
        removed = removal.relations + removal.orphans + (removal.document != "absent")
        return Undone(detail, removed)
