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
from services.core.events import DOCUMENT_SUBMITTED, STEPS, Event
from services.core.steplog import StepLog


class Interrupted(Exception):
    """The service is stopping: abandon the current input; it resumes from the last checkpoint."""


@dataclass
class Context:
    """What a handler may use besides its log: settings, checkpoints and the stop flag."""

    settings: Settings
    checkpoint: Callable[[StepLog], None] = lambda log: None
    stopping: threading.Event = field(default_factory=threading.Event)

    def check_stop(self) -> None:
        if self.stopping.is_set():
            raise Interrupted


@dataclass(frozen=True)
class Undone:
    """What a compensation removed, for the `<Step>Compensated` event."""

    detail: str
    removed: int = 0


class Step(ABC):
    service: str  # the process and consumer group name, e.g. "uploader"
    step: str  # the saga step it owns, one of events.STEPS, e.g. "Upload"
    reacts_to: frozenset[str]  # the events that start its forward work
    remembers: frozenset[str] = frozenset({DOCUMENT_SUBMITTED})  # inputs kept in its log
    observes: frozenset[str] = frozenset()  # inputs it only takes note of (e.g. the audit trail)

    def start(self, settings: Settings) -> None:  # noqa: B027 - optional hook
        """Open connections (called once, before consuming)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Close connections (idempotent)."""

    def observe(self, event: Event, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Take note of an event this step does not act on (must be idempotent)."""

    @abstractmethod
    def handle(self, event: Event, log: StepLog, ctx: Context) -> None:
        """Do the forward work for `event` and emit the next events into `log`.

        Must be idempotent: the log shows what an earlier (crashed) attempt already did.
        Raise PermanentError or TransientError (services.core.errors) on failure.
        """

    @abstractmethod
    def undo(self, log: StepLog, ctx: Context) -> Undone:
        """Remove everything this step wrote for the document (idempotent; may find nothing)."""

    @property
    def needs(self) -> frozenset[str]:
        """The inputs that must be in the log before the forward work runs: each producer has
        its own topic, so a trigger can arrive before an input it depends on (the runtime
        parks it until they are all there)."""
        return self.remembers - self.reacts_to

    # --- position in the saga ------------------------------------------------------------
    @property
    def index(self) -> int:
        return STEPS.index(self.step)

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def next_step(self) -> str | None:
        return STEPS[self.index + 1] if self.index + 1 < len(STEPS) else None
