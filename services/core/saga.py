"""The saga, declared once: which service runs each step, what starts it, what it reads, what
it emits, and what undoes it.

Read `SAGA` top to bottom and you have the whole choreography. A step starts on its
`trigger` (the success event of the step before it), once every event it `needs` from
earlier producers is in its log; it emits `success` (and its `progress`); when the step after
it fails or has compensated, it undoes its own work and emits `<Name>Compensated`. The first
step's compensation ends the saga in `DocumentCompensated`; the last step's success ends it in
`DocumentCompleted` (the runtime emits both, `completion` is the payload). Everything else is
derived from this table: each service's subscriptions and undo routing (`core/step.py`), the
topics and their writers (`core/topics.py`), the Kafka ACLs and provisioning's service list
(`operator/`), the fold behind `uds3 saga show`, the CLI's progress bars and re-drive plans,
and the AsyncAPI document. Adding a step is one row here plus its folder `services/<service>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.core import messages
from services.core.events import (
    CHUNK_STORED,
    COMPENSATION_FAILED,
    DOCUMENT_COMPENSATED,
    DOCUMENT_COMPLETED,
    DOCUMENT_SUBMITTED,
    GRAPH_LINKED,
    INTEGRITY_VERIFIED,
    PROGRESS_EVENTS,
    RELATIONAL_RECORDED,
    SECURITY_RECORDED,
    UPLOAD_COMPLETED,
    UPLOAD_PROGRESSED,
    UPLOAD_STARTED,
    VECTOR_ITEM_REQUESTED,
    VECTORS_INDEXED,
    VECTORS_PROGRESSED,
)

if TYPE_CHECKING:
    from services.core.steplog import StepLog

# Who submits documents: the client principal (CLI, Python API, other systems).
SUBMITTER = "client"


@dataclass(frozen=True)
class SagaStep:
    name: str  # the prefix of its Failed and Compensated events
    service: str  # its process, consumer group, Kafka principal and folder services/<service>/
    trigger: str  # the event that starts its forward work
    success: str  # the event that says it is done: the next step's trigger
    needs: frozenset[str] = frozenset({DOCUMENT_SUBMITTED})  # earlier events it reads from its log
    emits: tuple[str, ...] = ()  # other saga events it emits on the way
    progress: tuple[str, ...] = ()  # its high-volume progress events
    work: tuple[str, ...] = ()  # work items it fans out to its own workers (its work topic)
    store: str | None = None  # what it writes, as `uds3 audit consistency` names it

    @property
    def failed(self) -> str:
        return f"{self.name}Failed"

    @property
    def compensated(self) -> str:
        return f"{self.name}Compensated"


SAGA: tuple[SagaStep, ...] = (
    SagaStep("Upload", "uploader", trigger=DOCUMENT_SUBMITTED, success=UPLOAD_COMPLETED, needs=frozenset(),
             emits=(UPLOAD_STARTED,), progress=(CHUNK_STORED, UPLOAD_PROGRESSED), store="chunks"),
    SagaStep("Integrity", "verifier", trigger=UPLOAD_COMPLETED, success=INTEGRITY_VERIFIED),
    SagaStep("Security", "security", trigger=INTEGRITY_VERIFIED, success=SECURITY_RECORDED, store="security"),
    SagaStep("Vectors", "vector", trigger=SECURITY_RECORDED, success=VECTORS_INDEXED,
             needs=frozenset({DOCUMENT_SUBMITTED, UPLOAD_COMPLETED}), progress=(VECTORS_PROGRESSED,),
             work=(VECTOR_ITEM_REQUESTED,), store="vectors"),
    SagaStep("Graph", "graph", trigger=VECTORS_INDEXED, success=GRAPH_LINKED,
             needs=frozenset({DOCUMENT_SUBMITTED, SECURITY_RECORDED}), store="graph"),
    SagaStep("Relational", "relational", trigger=GRAPH_LINKED, success=RELATIONAL_RECORDED,
             needs=frozenset({DOCUMENT_SUBMITTED, UPLOAD_COMPLETED, SECURITY_RECORDED, VECTORS_INDEXED}),
             store="relational"),
)

# --- derived ---------------------------------------------------------------------------------------
STEPS: tuple[str, ...] = tuple(s.name for s in SAGA)
SERVICES: tuple[str, ...] = tuple(s.service for s in SAGA)
BY_NAME: dict[str, SagaStep] = {s.name: s for s in SAGA}
BY_SERVICE: dict[str, SagaStep] = {s.service: s for s in SAGA}
STEP_SERVICE: dict[str, str] = {s.name: s.service for s in SAGA}
SUCCESS_EVENT: dict[str, str] = {s.name: s.success for s in SAGA}
FIRST, LAST = SAGA[0], SAGA[-1]


def failed(step: str) -> str:
    return BY_NAME[step].failed


def compensated(step: str) -> str:
    return BY_NAME[step].compensated


def after(step: SagaStep) -> SagaStep | None:
    """The step after `step`: its Failed or Compensated event makes `step` undo its work."""
    i = SAGA.index(step)
    return SAGA[i + 1] if i + 1 < len(SAGA) else None


def undo_triggers(step: SagaStep) -> frozenset[str]:
    nxt = after(step)
    return frozenset({nxt.failed, nxt.compensated}) if nxt else frozenset()


FAILED_EVENTS = frozenset(s.failed for s in SAGA)
COMPENSATED_EVENTS = frozenset(s.compensated for s in SAGA)

ALL_EVENT_TYPES: tuple[str, ...] = (
    DOCUMENT_SUBMITTED,
    *(e for s in SAGA for e in (*s.emits, *s.progress, *s.work, s.success)),
    DOCUMENT_COMPLETED, *sorted(FAILED_EVENTS), *sorted(COMPENSATED_EVENTS),
    DOCUMENT_COMPENSATED, COMPENSATION_FAILED,
)
assert set(PROGRESS_EVENTS) <= set(ALL_EVENT_TYPES)


def _owners() -> dict[str, str]:
    owners = {DOCUMENT_SUBMITTED: SUBMITTER, DOCUMENT_COMPLETED: LAST.service, DOCUMENT_COMPENSATED: FIRST.service}
    for s in SAGA:
        owners |= {e: s.service for e in (*s.emits, *s.progress, *s.work, s.success, s.failed, s.compensated)}
    return owners


# The one producer that may publish each event type (Kafka ACLs enforce it: each producer writes
# only its own topics). CompensationFailed is not here: any service whose undo fails emits it.
OWNER: dict[str, str] = _owners()


def completion(log: StepLog, now: datetime) -> dict[str, Any]:
    """The payload of `DocumentCompleted`, from what the last step has in its log (it needs the
    submission, the security record and the vectors' counts)."""
    submission, security, vectors = log.submission(), log.last_received(SECURITY_RECORDED), \
        log.last_received(VECTORS_INDEXED)
    assert submission and security and vectors, "the last step runs only once it has what it needs"
    indexed = messages.VectorsIndexed.of(vectors)
    return {
        "content_sha256": messages.SecurityRecorded.of(security).content_sha256.lower(),
        "chunk_count": indexed.chunk_count,
        "page_count": indexed.page_count,
        "duration_ms": max(0, int((now - submission.occurred_at).total_seconds() * 1000)),
    }
