"""What every service implements: one saga step, its forward work and its undo.

A service is a `Step` subclass with three methods; the shared runtime (`runtime.py`) does
the rest the same way for all six: consuming, deduplicating, retrying, recording, relaying,
and routing failures into the reverse-order compensation chain.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from services.core.config import Settings
from services.core.events import Event
from services.core.saga import BY_SERVICE, FIRST, LAST, SagaStep, undo_triggers
from services.core.steplog import ENDINGS, StepLog


class Interrupted(Exception):
    """The service is stopping: abandon the current input; it resumes from the last checkpoint."""


@dataclass
class Context:
    """What a handler may use besides its log: settings, checkpoints and the stop flag."""

    settings: Settings
    checkpoint: Callable[[StepLog], None] = lambda log: None
    stopping: threading.Event = field(default_factory=threading.Event)
    # The step's log of a document as recorded now (a work item's handler adds to it).
    log_of: Callable[[str], StepLog] = lambda document_id: StepLog("", document_id)
    # Do all the work here, fanning nothing out (an operator's repair runs on a scratch log).
    inline: bool = False

    def check_stop(self) -> None:
        if self.stopping.is_set():
            raise Interrupted


@dataclass(frozen=True)
class Undone:
    """What a compensation removed, for the `<Step>Compensated` event."""

    detail: str
    removed: int = 0


class Step(ABC):
    """One service's step. What starts it, what it needs and what undoes it come from its row
    of the saga table (`core/saga.py`), found by the service's name."""

    service: str  # the process and consumer group name, e.g. "uploader": its row in the saga table
    observes: frozenset[str] = frozenset()  # inputs it only takes note of (e.g. the audit trail)

    @property
    def row(self) -> SagaStep:
        return BY_SERVICE[self.service]

    @property
    def step(self) -> str:
        """The saga step it owns, e.g. "Upload" (the prefix of its Failed/Compensated events)."""
        return self.row.name

    @property
    def reacts_to(self) -> frozenset[str]:
        """The events that start its forward work."""
        return frozenset({self.row.trigger})

    @property
    def needs(self) -> frozenset[str]:
        """The inputs that must be in the log before the forward work runs: each producer has
        its own topic, so a trigger can arrive before an input it depends on (the runtime
        parks it until they are all there)."""
        return self.row.needs

    @property
    def remembers(self) -> frozenset[str]:
        """The inputs kept in its log: what it needs, and its triggers."""
        return self.row.needs | self.reacts_to

    @property
    def undone_by(self) -> frozenset[str]:
        """The next step's Failed and Compensated events: they make this step undo its work."""
        return undo_triggers(self.row)

    @property
    def inputs(self) -> frozenset[str]:
        """Every event type it acts on, keeps or takes note of (it reads the topics that carry
        them, and ignores every other event there); every step knows when a saga has ended."""
        return self.reacts_to | self.undone_by | self.remembers | ENDINGS | self.observes

    @property
    def is_first(self) -> bool:
        return self.row is FIRST

    @property
    def is_last(self) -> bool:
        return self.row is LAST

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Step:
        """The service's bootstrap: the step with its adapters, built from the settings (no I/O).
        Tests pass in-memory or differently configured adapters to the constructor instead."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections (called once, before consuming; idempotent)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Close connections (idempotent)."""

    def observe(self, event: Event, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Take note of an event this step does not act on (must be idempotent)."""

    def observe_all(self, events: list[Event], ctx: Context) -> None:
        """Take note of a consumer batch's such events, in order (a step may write them at once)."""
        for event in events:
            self.observe(event, ctx)

    @abstractmethod
    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        """Do the forward work for `event` and emit the next events into `log`.

        Must be idempotent: the log shows what an earlier (crashed) attempt already did.
        Raise PermanentError or TransientError (services.core.errors) on failure.
        """

    def work(self, item: Event, ctx: Context) -> None:
        """Do one work item the step fanned out (its row's `work` events; any replica may get
        any item). Must be idempotent; adds what follows to the document's log itself
        (`ctx.log_of`, `ctx.checkpoint`). Raise StepError subclasses like `handle`."""
        raise NotImplementedError(f"{self.service} fans out no work")

    @abstractmethod
    def undo(self, log: StepLog, ctx: Context) -> Undone:
        """Remove everything this step wrote for the document (idempotent; may find nothing)."""
