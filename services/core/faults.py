"""Fault injection for tests, chaos runs and the demo; off unless UDS3_FAULTS is set.

UDS3_FAULTS is a comma-separated list of `service:kind[:times]@match`, where kind is
`permanent`, `transient` (fails `times` attempts, default 3) or `hang` (sleeps `times`
seconds) before the step does any work, `mid-permanent` or `mid-transient` at the step's
first checkpoint after it wrote part of its work (a chunk stored, a batch of vectors, the
graph's document node before its relations), `undo-permanent` or `undo-transient` in its
undo; `match` is a substring of the document's title or id (`*` matches every document).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.core.errors import PermanentError, TransientError


@dataclass(frozen=True)
class Fault:
    service: str
    kind: str
    times: int
    match: str


def parse(spec: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, match = item.partition("@")
        service, kind, *rest = target.split(":")
        times = int(rest[0]) if rest else 3
        faults.append(Fault(service, kind, times, match or "*"))
    return faults


class FaultInjector:
    def __init__(self, service: str, spec: str) -> None:
        self.faults = [f for f in parse(spec) if f.service == service]
        self.attempts: dict[tuple[str, str], int] = {}

    def maybe_fail(self, phase: str, document_id: str, title: str) -> None:
        """Raise the configured fault for this phase ("forward", "mid" or "undo"), if any."""
        for f in self.faults:
            if not _matches(f.match, document_id, title):
                continue
            at, _, kind = f.kind.rpartition("-")
            if (at or "forward") != phase:
                continue
            if kind == "permanent":
                raise PermanentError(f"injected permanent fault in {f.service} ({phase})")
            if kind == "transient":
                key = (document_id, f.kind)
                self.attempts[key] = self.attempts.get(key, 0) + 1
                if self.attempts[key] <= f.times:
                    raise TransientError(f"injected transient fault {self.attempts[key]}/{f.times}")
            if kind == "hang":
                time.sleep(f.times)


def _matches(match: str, document_id: str, title: str) -> bool:
    return match == "*" or match in document_id or match in (title or "")
